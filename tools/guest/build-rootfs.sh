#!/usr/bin/env bash
# Builds the deskvm default guest from Debian packages only:
#   OUT/base.qcow2  the root filesystem (ext4, no partition table)
#   OUT/vmlinuz, OUT/initrd.img  for direct kernel boot
# Run by `deskvm image build`; needs root (debootstrap, file ownership in the image).
set -euo pipefail

OUT=${1:?usage: build-rootfs.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=bookworm
MIRROR=${DESKVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DISK_SIZE=${DESKVM_DISK_SIZE:-4G}

# Everything the desktop needs; kept in one list so the recipe hash covers it.
PACKAGES=$(grep -v '^#' "$HERE/packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')

if [ "$(id -u)" != 0 ]; then
  echo "build-rootfs.sh: must run as root (debootstrap and image file ownership need it)" >&2
  exit 1
fi
for tool in debootstrap mkfs.ext4 qemu-img; do
  command -v "$tool" >/dev/null || { echo "build-rootfs.sh: $tool not found (apt-get install debootstrap e2fsprogs qemu-utils)" >&2; exit 1; }
done

mkdir -p "$OUT"
ROOT="$OUT/rootfs"
rm -rf "$ROOT"
trap 'rm -rf "$ROOT" "$OUT/disk.raw"' EXIT

echo "step 1/4: debootstrap $SUITE with $(echo "$PACKAGES" | tr ',' ' ' | wc -w) packages (takes a few minutes)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" \
  | grep --line-buffered -E '^(I: (Retrieving|Validating|Unpacking|Configuring|Installing|Base system)|E:|W:)' \
  | awk '{ n++; if ($0 ~ /^I: (Retrieving|Validating|Unpacking|Configuring) / && n % 25) next; print; fflush() }'

echo "step 2/4: configure the desktop session"
cp -a "$HERE/overlay/." "$ROOT/"
chmod 0755 "$ROOT"/usr/local/bin/*
echo deskvm > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 deskvm\n' > "$ROOT/etc/hosts"
printf '/dev/vda / ext4 rw,relatime 0 1\n' > "$ROOT/etc/fstab"
# No root password prompt matters: nothing listens on a network, and the console is the agent's.
chroot "$ROOT" passwd -d root >/dev/null
chroot "$ROOT" systemctl enable deskvm-desktop.service >/dev/null 2>&1
# Jobs that would wake up in a resumed guest and compete with the agent for a TCG CPU.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
            man-db.timer serial-getty@ttyS0.service getty@tty1.service systemd-timesyncd.service; do
  chroot "$ROOT" systemctl mask "$unit" >/dev/null 2>&1 || true
done
cp -L "$ROOT"/boot/vmlinuz-* "$OUT/vmlinuz"
cp -L "$ROOT"/boot/initrd.img-* "$OUT/initrd.img"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*

echo "step 3/4: make the ext4 filesystem ($DISK_SIZE)"
# Fixed UUID and hash seed: the same rootfs gives the same filesystem layout.
mkfs.ext4 -q -F -L deskvm-root -U 6d65736b-766d-4000-8000-726f6f746673 -E hash_seed=6d65736b-766d-4000-8000-686173680000 \
  -d "$ROOT" "$OUT/disk.raw" "$DISK_SIZE"

echo "step 4/4: convert to qcow2"
qemu-img convert -q -O qcow2 "$OUT/disk.raw" "$OUT/base.qcow2"
chmod 0444 "$OUT/base.qcow2"
echo "guest built: $OUT/base.qcow2 ($(du -h "$OUT/base.qcow2" | cut -f1) on disk)"
