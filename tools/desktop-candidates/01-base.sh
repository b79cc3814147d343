#!/bin/sh
# Build the shared base rootfs (bookworm minbase + X + guest agent).
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${DESKVM_MEASURE_DIR:-/var/tmp/deskvm-desktops}; mkdir -p "$WORK"; cd "$WORK"
rm -rf base
nice -n 10 debootstrap --variant=minbase --cache-dir=/root/.cache/deskvm/apt-archives \
  --include=linux-image-amd64,systemd-sysv,udev,dbus,procps,xserver-xorg-core,xserver-xorg-video-fbdev,xserver-xorg-input-libinput,xinit,x11-xserver-utils,x11-utils,qemu-guest-agent,fonts-dejavu-core \
  bookworm base http://deb.debian.org/debian
