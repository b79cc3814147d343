#!/usr/bin/env bash
# Makes a small BIOS-bootable, partitioned Debian disk for `deskvm image import`'s end-to-end test:
#   make-test-disk.sh OUT.raw
# built outside deskvm's recipe path, from Debian packages only (deb.debian.org), without loop
# devices and without mounting the disk image:
#   MBR  syslinux mbr.bin (first 440 bytes) + a DOS partition table (sfdisk on a plain file)
#   p1   FAT32, active: syslinux (installed into the image file through mtools), vmlinuz, initrd.img
#   p2   ext4 made with `mkfs.ext4 -d` from a debootstrap minbase tree (kernel, systemd, udev)
# The guest boots through SeaBIOS with no kernel from deskvm, finds its root by UUID (so SATA/AHCI
# and virtio-blk both work), and shows a `login:` prompt on the VGA text console (getty@tty1) and
# on ttyS0. root has no password. No qemu-guest-agent and no network services are installed.
#
# Run as root. Environment:
#   DESKVM_APT_CACHE       a directory: the downloaded packages are kept there as one debootstrap
#                          tarball per package set, and a later run downloads nothing (it also pins
#                          the package versions; delete the tarball to pick up Debian updates)
#   DESKVM_DEBIAN_MIRROR   default http://deb.debian.org/debian
#   DESKVM_TEST_DISK_ROOT_MB  size of the root partition, default 768 (the tree is about 320 MiB)
#   SOURCE_DATE_EPOCH      timestamps written into the filesystems, default 1700000000
# Host packages: debootstrap e2fsprogs dosfstools mtools syslinux syslinux-common fdisk
# (installed with apt-get when missing).
set -euo pipefail

OUT=${1:?usage: make-test-disk.sh OUT.raw}
SUITE=bookworm
MIRROR=${DESKVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=linux-image-amd64,systemd-sysv,udev
BOOT_MB=128
ROOT_MB=${DESKVM_TEST_DISK_ROOT_MB:-768}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
# Fixed identifiers: the same packages give the same layout, and root=UUID= is known in advance.
ROOT_UUID=6d65736b-766d-4000-8000-74657374726f   # "deskvm" ... "testro"
HASH_SEED=6d65736b-766d-4000-8000-746573746873
BOOT_VOLID=6d657374                              # FAT volume serial
DISK_ID=0x6d657374                               # MBR disk signature
MACHINE_ID=6d65736b766d40008000746573746d69
# Kernel and systemd messages go to the serial port only, so nothing is printed over the login
# prompt on tty1; nomodeset keeps the VGA in 80x25 text mode (720x400) from SeaBIOS to the prompt
# (otherwise bochs-drm, loaded late from the root fs, switches to 1280x800 around when getty starts).
CMDLINE="root=UUID=$ROOT_UUID ro console=ttyS0,115200 nomodeset"

die() { echo "make-test-disk.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, file ownership in the image)"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

T0=$(date +%s.%N); TS=$T0; STEP=""
step() {  # step "name": closes the previous step (prints its time) and opens the next
  local now; now=$(date +%s.%N)
  [ -z "$STEP" ] || printf '  %-28s %6.1f s\n' "$STEP" "$(awk -v a="$now" -v b="$TS" 'BEGIN { print a - b }')"
  TS=$now; STEP=$1
  [ -z "$1" ] || echo "== $1"
}

step "host tools"
need=()
for pair in debootstrap:debootstrap mkfs.ext4:e2fsprogs mkfs.fat:dosfstools mcopy:mtools \
            syslinux:syslinux sfdisk:fdisk; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$MBR_BIN" ] || need+=(syslinux-common)
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need+=(syslinux-common)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing host packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
    || die "could not install host packages: ${need[*]} (apt-get install ${need[*]})"
fi

WORK=$(mktemp -d "$(dirname "$OUT")/.make-test-disk.XXXXXX")
ROOT=$WORK/root
cleanup() {
  # debootstrap mounts /proc and /sys in the tree; never rm -rf through a mount.
  if [ -d "$ROOT" ]; then
    awk -v r="$ROOT" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
      umount -l "$m" || true
    done
  fi
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

step "debootstrap"
DB_ARGS=(--variant=minbase --include="$PACKAGES" --components=main)
if [ -n "${DESKVM_APT_CACHE:-}" ]; then
  mkdir -p "$DESKVM_APT_CACHE"
  CACHE=$(cd "$DESKVM_APT_CACHE" && pwd)
  key=$(printf '%s\n' "$SUITE" "$MIRROR" "${DB_ARGS[@]}" "$(dpkg --print-architecture)" | sha256sum | cut -c1-16)
  TARBALL=$CACHE/make-test-disk-$SUITE-$key.tgz
  if [ ! -f "$TARBALL" ]; then
    echo "downloading packages into $TARBALL"
    mkdir "$WORK/dl"
    debootstrap "${DB_ARGS[@]}" --make-tarball="$TARBALL.part" "$SUITE" "$WORK/dl" "$MIRROR" >"$WORK/dl.log" 2>&1 \
      || { tail -20 "$WORK/dl.log" >&2; die "debootstrap --make-tarball failed"; }
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$WORK/dl"
  else
    echo "using cached packages $TARBALL (nothing downloaded)"
  fi
  DB_ARGS+=(--unpack-tarball="$TARBALL")
fi
debootstrap "${DB_ARGS[@]}" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }

step "configure rootfs"
echo deskvm-import-test > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 deskvm-import-test\n' > "$ROOT/etc/hosts"
printf 'UUID=%s / ext4 rw,relatime,errors=remount-ro 0 1\n' "$ROOT_UUID" > "$ROOT/etc/fstab"
echo "$MACHINE_ID" > "$ROOT/etc/machine-id"
chroot "$ROOT" passwd -d root >/dev/null
# A test disk only: no timers waking the guest up during the test.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  chroot "$ROOT" systemctl mask "$unit" >/dev/null 2>&1 || true
done
# getty@tty1 is enabled by Debian's systemd; make sure of it (the test types at its login prompt).
[ -e "$ROOT/etc/systemd/system/getty.target.wants/getty@tty1.service" ] \
  || chroot "$ROOT" systemctl enable getty@tty1.service >/dev/null 2>&1
mkdir -p "$WORK/boot"
kernels=("$ROOT"/boot/vmlinuz-*)
[ ${#kernels[@]} = 1 ] && [ -f "${kernels[0]}" ] || die "expected exactly one kernel in /boot, found: ${kernels[*]}"
KVER=${kernels[0]##*/vmlinuz-}
[ -f "$ROOT/boot/initrd.img-$KVER" ] || die "no initrd.img-$KVER in the rootfs (initramfs-tools did not run?)"
# The kernel and initrd live on the FAT partition only (the root fs does not need a second copy).
mv "$ROOT/boot/vmlinuz-$KVER" "$WORK/boot/vmlinuz"
mv "$ROOT/boot/initrd.img-$KVER" "$WORK/boot/initrd.img"
rm -f "$ROOT"/vmlinuz* "$ROOT"/initrd.img* "$ROOT"/boot/System.map-* "$ROOT"/boot/config-*
# Drivers a QEMU test guest never needs (the initrd, built before this, keeps its own set).
for d in net/wireless net/ethernet media infiniband gpu/drm/amd gpu/drm/nouveau gpu/drm/radeon \
         gpu/drm/i915 staging bluetooth isdn iio; do
  rm -rf "$ROOT/lib/modules/$KVER/kernel/drivers/$d"
done
rm -rf "$ROOT/lib/modules/$KVER/kernel/sound" "$ROOT/lib/modules/$KVER/kernel/net/wireless" \
       "$ROOT/lib/modules/$KVER/kernel/net/mac80211" "$ROOT/lib/modules/$KVER/kernel/net/bluetooth"
chroot "$ROOT" depmod -a "$KVER"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/* \
       "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old "$ROOT"/debootstrap \
       "$ROOT"/var/cache/ldconfig/aux-cache
find "$ROOT/var/log" -type f -delete
# Same timestamps on every run (mkfs.ext4 -d copies them).
find "$ROOT" -xdev -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} + 2>/dev/null || true
used_mb=$(du -sxm "$ROOT" | cut -f1)
echo "rootfs: ${used_mb} MiB in a ${ROOT_MB} MiB partition; kernel $KVER"
[ $((used_mb * 100 / ROOT_MB)) -lt 85 ] || die "rootfs (${used_mb} MiB) does not fit DESKVM_TEST_DISK_ROOT_MB=$ROOT_MB with room to boot"

step "root partition (ext4)"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L import-root -U "$ROOT_UUID" \
  -E hash_seed="$HASH_SEED",root_owner=0:0 -d "$ROOT" "$WORK/p2.img" "${ROOT_MB}M" >/dev/null
# mkfs.ext4 -d copies each file's ctime (the time this run made it) and atime (directories read
# since): set both to SOURCE_DATE_EPOCH so two runs give the same bytes, and the superblock's last
# write time too. Paths are double-quoted for debugfs (a backslash inside quotes is literal, as in
# systemd's "\x2d" unit names); Debian's minbase has no name with a double quote or a newline.
! (cd "$ROOT" && find . -xdev -name '*"*' | grep -q .) || die "a file name in the rootfs has a double quote"
(cd "$ROOT" && find . -xdev -printf '%P\n') \
  | awk -v t="@$SOURCE_DATE_EPOCH" '{ for (f = 1; f <= 2; f++) print "set_inode_field \"/" $0 "\" " (f == 1 ? "ctime " : "atime ") t }
                                    END { print "ssv wtime " t }' > "$WORK/ctime.debugfs"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$WORK/ctime.debugfs" "$WORK/p2.img" >/dev/null 2>"$WORK/debugfs.err" \
  || { tail -5 "$WORK/debugfs.err" >&2; die "debugfs could not set the ctimes"; }
! grep -v '^debugfs ' "$WORK/debugfs.err" | grep -q . || { head -5 "$WORK/debugfs.err" >&2; die "debugfs reported errors"; }

step "boot partition (FAT+syslinux)"
BOOT_START=2048                                  # sectors: 1 MiB alignment
BOOT_SECTORS=$((BOOT_MB * 2048))
ROOT_START=$((BOOT_START + BOOT_SECTORS))
ROOT_SECTORS=$((ROOT_MB * 2048))
cat > "$WORK/boot/syslinux.cfg" <<EOF
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $CMDLINE
EOF
touch -d "@$SOURCE_DATE_EPOCH" "$WORK/boot"/*
# -h: hidden sectors = the partition's start, which the syslinux boot sector adds to its LBAs.
mkfs.fat --invariant -F 32 -n DESKVMBOOT -i "$BOOT_VOLID" -h "$BOOT_START" -C "$WORK/p1.img" $((BOOT_MB * 1024)) >/dev/null
syslinux --install "$WORK/p1.img"                # writes ldlinux.sys/ldlinux.c32 through mtools
MTOOLS_SKIP_CHECK=1 mcopy -m -i "$WORK/p1.img" "$WORK/boot/syslinux.cfg" "$WORK/boot/vmlinuz" "$WORK/boot/initrd.img" ::/

step "assemble disk"
DISK=$WORK/disk.raw
truncate -s $(((ROOT_START + ROOT_SECTORS) * 512)) "$DISK"
sfdisk --quiet --no-reread --no-tell-kernel "$DISK" <<EOF
label: dos
label-id: $DISK_ID
unit: sectors

start=$BOOT_START, size=$BOOT_SECTORS, type=c, bootable
start=$ROOT_START, size=$ROOT_SECTORS, type=83
EOF
dd if="$MBR_BIN" of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/p1.img" of="$DISK" bs=1M seek=$((BOOT_START / 2048)) conv=notrunc,sparse status=none
dd if="$WORK/p2.img" of="$DISK" bs=1M seek=$((ROOT_START / 2048)) conv=notrunc,sparse status=none
mv -f "$DISK" "$OUT"

step "clean up"
cleanup
step ""
printf 'made %s: %s apparent, %s on disk, in %.1f s\n' "$OUT" \
  "$(du -h --apparent-size "$OUT" | cut -f1)" "$(du -h "$OUT" | cut -f1)" "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN { print a - b }')"
echo "kernel command line: $CMDLINE"
