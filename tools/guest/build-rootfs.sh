#!/usr/bin/env bash
# Builds one deskvm guest image from a recipe directory (tools/guest/recipes/<name>/):
#   OUTDIR/base.qcow2             the root filesystem (ext4, no partition table, root=/dev/vda)
#   OUTDIR/vmlinuz, OUTDIR/initrd.img   for direct kernel boot
#
# usage: build-rootfs.sh RECIPE_DIR OUTDIR     (as root: debootstrap, chroot, file ownership)
#
# The recipe's recipe.toml is parsed by deskvm (Rust), never here: deskvm passes its fields in
# the environment.
#   DESKVM_SUITE         Debian suite, e.g. bookworm
#   DESKVM_PACKAGES      packages, space separated (installed without recommends)
#   DESKVM_DISK_SIZE     ext4 size, e.g. 4G
#   DESKVM_USER          "root" or the user the recipe's post-install.sh creates
#   DESKVM_SESSION       the X session program (a file of the overlay)
#   DESKVM_READY_WHEN    shell condition, true once the desktop is usable
#   DESKVM_APT_CACHE     optional: host directory keeping downloaded .debs between builds
#   DESKVM_DEBIAN_MIRROR optional: Debian mirror (default http://deb.debian.org/debian)
# Besides recipe.toml the recipe directory may hold overlay/ (copied over the rootfs after
# tools/guest/common/overlay/) and post-install.sh (run in the chroot as root, last).
set -euo pipefail

usage() { echo "usage: build-rootfs.sh RECIPE_DIR OUTDIR (recipe fields in DESKVM_* variables)" >&2; exit 2; }
[ $# -eq 2 ] || usage
RECIPE=$(cd "$1" && pwd)
OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
COMMON="$HERE/common"

for var in DESKVM_SUITE DESKVM_PACKAGES DESKVM_DISK_SIZE DESKVM_USER DESKVM_SESSION DESKVM_READY_WHEN; do
  if [ -z "${!var:-}" ]; then
    echo "build-rootfs.sh: $var is not set (deskvm sets it from recipe.toml)" >&2
    exit 2
  fi
done
MIRROR=${DESKVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${DESKVM_APT_CACHE:-}

if [ "$(id -u)" != 0 ]; then
  echo "build-rootfs.sh: must run as root (debootstrap, chroot and image file ownership need it)" >&2
  exit 1
fi
for tool in debootstrap mkfs.ext4 qemu-img mountpoint; do
  command -v "$tool" >/dev/null || { echo "build-rootfs.sh: $tool not found (apt-get install debootstrap e2fsprogs qemu-utils util-linux)" >&2; exit 1; }
done
[ -f "$RECIPE/recipe.toml" ] || { echo "build-rootfs.sh: $RECIPE has no recipe.toml" >&2; exit 2; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT="$OUT/rootfs"
LOG="$OUT/build.log"
STEPS=7

# Mounts inside the chroot, innermost last; unmounted in reverse by cleanup.
MOUNTS=()
mount_in_root() { # mount_in_root TARGET MOUNT-ARGS...
  local target="$ROOT$1"; shift
  mkdir -p "$target"
  mount "$@" "$target"
  MOUNTS+=("$target")
}
unmount_all() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    if mountpoint -q "${MOUNTS[i]}"; then
      umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}"
    fi
  done
  MOUNTS=()
}
# What package scripts and post-install.sh expect of a running system.
mount_chroot_fs() {
  mount_in_root /proc -t proc proc
  mount_in_root /sys -t sysfs sysfs
  mount_in_root /dev --bind /dev
  mount_in_root /dev/pts --bind /dev/pts
}
cleanup() {
  local rc=$?
  unmount_all
  # Never delete through a mount that is still there (it could be the host's /dev).
  if grep -q " $ROOT/" /proc/mounts; then
    echo "build-rootfs.sh: mounts under $ROOT remain; not deleting it" >&2
  else
    rm -rf --one-file-system "$ROOT"
  fi
  rm -f "$OUT/disk.raw"
  if [ "$rc" -ne 0 ] && [ -s "$LOG" ]; then
    echo "build-rootfs.sh: failed; last lines of the build log:" >&2
    tail -n 30 "$LOG" >&2
  fi
  rm -f "$LOG"
}
trap cleanup EXIT

# A clean, fixed environment for everything run in the chroot.
in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
    DESKVM_USER="$DESKVM_USER" DESKVM_SESSION="$DESKVM_SESSION" "$@"
}
# Shows every 40th progress line of a long tool output, and all warnings and errors;
# the whole output goes to the build log (shown on failure).
progress() {
  tee -a "$LOG" | awk -v re="$1" '
    /^(E:|W:|[Ee]rror|dpkg: error)/ { print; fflush(); next }
    $0 ~ re { if (n++ % 40 == 0) { print "  " $0; fflush() } }'
}
# Quotes a value for a POSIX shell (dash reads recipe.env): 'it'\''s'.
shquote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

rm -rf --one-file-system "$ROOT"
: > "$LOG"

read -r -d '' -a PACKAGES <<< "$DESKVM_PACKAGES" || true
echo "step 1/$STEPS: debootstrap $DESKVM_SUITE (minbase)"
CACHE_ARGS=()
if [ -n "$CACHE" ]; then
  mkdir -p "$CACHE/partial"
  CACHE_ARGS=(--cache-dir="$CACHE")
fi
nice -n 10 debootstrap --variant=minbase "${CACHE_ARGS[@]}" "$DESKVM_SUITE" "$ROOT" "$MIRROR" 2>&1 \
  | progress '^I: (Retrieving|Validating|Unpacking|Configuring|Base system)'

echo "step 2/$STEPS: install ${#PACKAGES[@]} packages (no recommends)"
# No daemon may start inside the chroot (postinst scripts ask invoke-rc.d, which asks this).
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount_chroot_fs
if [ -n "$CACHE" ]; then
  # debootstrap's own .debs are already in the cache; apt downloads into it directly.
  rm -f "$ROOT"/var/cache/apt/archives/*.deb
  mount_in_root /var/cache/apt/archives --bind "$CACHE"
fi
# The sandbox user cannot write into a bind-mounted host cache; root downloads.
APT=(apt-get -q -y -o APT::Sandbox::User=root -o Dpkg::Use-Pty=0 -o APT::Keep-Downloaded-Packages=true)
in_root "${APT[@]}" update 2>&1 | progress '^(Get|Hit):'
in_root nice -n 10 "${APT[@]}" install --no-install-recommends "${PACKAGES[@]}" 2>&1 \
  | progress '^(Get:|Unpacking|Setting up)'
unmount_all

echo "step 3/$STEPS: overlays and desktop configuration"
# Copies an overlay over the rootfs: files owned by root whoever checked the repo out, and
# symlinked directories of the image followed (e.g. /usr/lib/firefox-esr/distribution is a
# symlink in Debian), keeping existing directories' owners and modes.
copy_overlay() {
  tar -C "$1" -c --owner=0 --group=0 --numeric-owner . \
    | tar -C "$ROOT" -x --keep-directory-symlink --no-overwrite-dir
}
copy_overlay "$COMMON/overlay"
if [ -d "$RECIPE/overlay" ]; then
  copy_overlay "$RECIPE/overlay"
fi
chmod 0755 "$ROOT"/usr/local/bin/*
mkdir -p "$ROOT/etc/deskvm"
{
  echo "# The recipe this image was built from (read by deskvm-xsession and deskvm-as-user)."
  echo "DESKVM_USER=$(shquote "$DESKVM_USER")"
  echo "DESKVM_SESSION=$(shquote "$DESKVM_SESSION")"
  echo "DESKVM_READY_WHEN=$(shquote "$DESKVM_READY_WHEN")"
} > "$ROOT/etc/deskvm/recipe.env"
echo deskvm > "$ROOT/etc/hostname"
# host.deskvm.internal: the host services a session forwards; proxy.deskvm.internal: the
# allowlist proxy (both reach deskvm on the host, whatever the session's network mode).
printf '127.0.0.1 localhost\n127.0.1.1 deskvm\n10.0.2.100 host.deskvm.internal\n10.0.2.101 proxy.deskvm.internal\n' > "$ROOT/etc/hosts"
printf '/dev/vda / ext4 rw,relatime 0 1\n' > "$ROOT/etc/fstab"
# No root password prompt matters: nothing listens on a network, and the console is the agent's.
in_root passwd -d root >/dev/null

echo "step 4/$STEPS: post-install"
if [ -f "$RECIPE/post-install.sh" ]; then
  cp "$RECIPE/post-install.sh" "$ROOT/tmp/deskvm-post-install.sh"
  mount_chroot_fs
  in_root /bin/bash /tmp/deskvm-post-install.sh 2>&1 | tee -a "$LOG" | sed 's/^/  /'
  unmount_all
  rm -f "$ROOT/tmp/deskvm-post-install.sh"
fi
if [ "$DESKVM_USER" != root ] && ! in_root getent passwd "$DESKVM_USER" >/dev/null; then
  echo "build-rootfs.sh: user $DESKVM_USER does not exist after post-install.sh (the recipe must create it)" >&2
  exit 1
fi
[ -x "$ROOT$DESKVM_SESSION" ] || { echo "build-rootfs.sh: session program $DESKVM_SESSION is not an executable file in the image" >&2; exit 1; }

echo "step 5/$STEPS: services, kernel, cleanup"
in_root systemctl enable deskvm-desktop.service >/dev/null 2>&1
# The NIC's static address (overlay's 10-deskvm.network); nothing waits for "online".
in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
in_root systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
# Jobs that would wake up in a resumed guest and compete with the agent for a TCG CPU, and
# anything that would listen on a network (none of these should be installed; masking an
# absent unit is harmless and keeps a recipe's extra packages from starting them).
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
            man-db.timer serial-getty@ttyS0.service getty@tty1.service systemd-timesyncd.service \
            ssh.service ssh.socket cups.service cups.socket cups-browsed.service \
            avahi-daemon.service avahi-daemon.socket; do
  in_root systemctl mask "$unit" >/dev/null 2>&1 || true
done
cp -L "$ROOT"/boot/vmlinuz-* "$OUT/vmlinuz"
cp -L "$ROOT"/boot/initrd.img-* "$OUT/initrd.img"
rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/etc/resolv.conf"
# The .debs stay in DESKVM_APT_CACHE (unmounted above); the image keeps none of them.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* \
  "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/var/log/apt/* "$ROOT"/var/log/dpkg.log

echo "step 6/$STEPS: make the ext4 filesystem ($DESKVM_DISK_SIZE, $(du -sh --one-file-system "$ROOT" | cut -f1) used)"
# Fixed UUID and hash seed: the same rootfs gives the same filesystem layout.
nice -n 10 mkfs.ext4 -q -F -L deskvm-root -U 6d65736b-766d-4000-8000-726f6f746673 \
  -E hash_seed=6d65736b-766d-4000-8000-686173680000 -d "$ROOT" "$OUT/disk.raw" "$DESKVM_DISK_SIZE"

echo "step 7/$STEPS: convert to qcow2"
rm -f "$OUT/base.qcow2"
nice -n 10 qemu-img convert -q -O qcow2 "$OUT/disk.raw" "$OUT/base.qcow2"
chmod 0444 "$OUT/base.qcow2"
echo "guest built: $OUT/base.qcow2 ($(du -h "$OUT/base.qcow2" | cut -f1) on disk)"
