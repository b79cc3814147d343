#!/usr/bin/env bash
# Installs what deskvm needs on a Debian host (run as root; `deskvm setup` runs it when something
# is missing): QEMU, debootstrap, e2fsprogs, the Docker engine, noVNC (the live view's web client),
# Chromium (headless, for the tests that render review viewers), what tools/test-engine.sh needs,
# and the peers' stack `deskvm bench` measures beside deskvm (Xvfb, xdotool, ImageMagick, xterm,
# openbox). On bookworm QEMU comes from bookworm-backports: QEMU 7.2 had screendump bugs, and
# ready states must be made and resumed by one QEMU build.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "host-setup.sh: run as root (apt-get install)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
QEMU_SUITE=()
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/deskvm-backports.list
  fi
  QEMU_SUITE=(-t bookworm-backports)
fi
# A third-party source that cannot be reached must not stop the Debian packages.
apt-get update -q || echo "host-setup.sh: apt-get update reported errors; continuing with the lists it got" >&2
apt-get install -y -q "${QEMU_SUITE[@]}" qemu-system-x86 qemu-utils
apt-get install -y -q debootstrap e2fsprogs docker.io socat
# UEFI firmware for imported disks that boot through it (SeaBIOS comes with QEMU).
apt-get install -y -q --no-install-recommends ovmf
# The import test makes a BIOS-bootable disk without loop devices: a partition table on a
# file (fdisk), a FAT boot partition (dosfstools, mtools) and SYSLINUX.
apt-get install -y -q --no-install-recommends fdisk dosfstools mtools syslinux syslinux-common
# The live view's web client (session_view serves noVNC's files; nothing from a CDN).
apt-get install -y -q --no-install-recommends novnc
# Only the tests need it (they open exported review viewers in headless Chromium).
apt-get install -y -q --no-install-recommends chromium fonts-liberation
# tools/test-engine.sh's second Docker engine (TLS certificates, a network namespace).
apt-get install -y -q --no-install-recommends openssl iproute2 util-linux
# The peers' stack the bench measures beside deskvm: an X server on the host, xdotool for input
# and ImageMagick's `import` for screenshots, with a terminal and a window manager in it.
apt-get install -y -q --no-install-recommends xvfb xdotool imagemagick xterm openbox
