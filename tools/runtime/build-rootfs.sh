#!/usr/bin/env bash
# Builds the root filesystem of the deskvm runtime image (what each session's container runs):
# minimal Debian bookworm plus QEMU from bookworm-backports, the same QEMU build the host uses, so
# ready states made by one load in the other. Writes a tarball for `docker import`; run by
# `deskvm image build --runtime` (root: debootstrap). On engines that share no filesystem with
# deskvm, socat bridges QMP and the guest agent to an exec session's stdin/stdout, and lz4
# shrinks each 3 MB screendump on its way back (to ~1-5 %, in ~4 ms).
set -euo pipefail

OUT=${1:?usage: build-rootfs.sh OUT.tar}
MIRROR=${DESKVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" != 0 ]; then
  echo "build-rootfs.sh: must run as root (debootstrap)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "build-rootfs.sh: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }

ROOT=$(mktemp -d /var/tmp/deskvm-runtime.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT

echo "step 1/3: debootstrap bookworm (minbase)"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" | grep --line-buffered -E '^(E:|W:|I: Base system)' || true
[ -x "$ROOT/usr/bin/apt-get" ] || { echo "build-rootfs.sh: debootstrap failed" >&2; exit 1; }

echo "step 2/3: QEMU from bookworm-backports"
echo "deb $MIRROR bookworm-backports main" > "$ROOT/etc/apt/sources.list.d/backports.list"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" apt-get update -q >/dev/null
chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  -t bookworm-backports qemu-system-x86 qemu-utils ipxe-qemu ovmf socat lz4 >/dev/null
chroot "$ROOT" qemu-system-x86_64 --version | head -1
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT/etc/resolv.conf"

echo "step 3/3: pack the root filesystem"
tar --numeric-owner -C "$ROOT" -cf "$OUT" .
echo "runtime rootfs: $OUT ($(du -h "$OUT" | cut -f1))"
