#!/bin/bash
# Usage: 02-desktop.sh xfce|lxqt|openbox  -> root-NAME/, NAME/disk.qcow2, NAME/vmlinuz, NAME/initrd.img
set -e
NAME=$1
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${DESKVM_MEASURE_DIR:-/var/tmp/deskvm-desktops}; mkdir -p "$WORK"; cd "$WORK"
CACHE=/root/.cache/deskvm/apt-archives
R=root-$NAME
case $NAME in
  xfce)    PKGS="xfce4-session xfwm4 xfce4-panel xfdesktop4 xfce4-settings thunar xfce4-terminal dbus-x11" ;;
  lxqt)    PKGS="lxqt-core openbox dbus-x11" ;;
  openbox) PKGS="openbox tint2 jgmenu menu xterm pcmanfm dbus-x11" ;;
esac
rm -rf $R; cp -a base $R
# --- common guest config ---
echo "/dev/vda / ext4 defaults 0 1" > $R/etc/fstab
echo "deskvm-$NAME" > $R/etc/hostname
printf '#!/bin/sh\nexit 101\n' > $R/usr/sbin/policy-rc.d; chmod +x $R/usr/sbin/policy-rc.d
# seed the chroot's archive dir from the shared cache (hard links, same fs)
cp -ln $CACHE/*.deb $R/var/cache/apt/archives/ 2>/dev/null || true
for m in proc sys dev/pts; do mount --bind /$m $R/$m; done
trap 'for m in dev/pts sys proc; do umount $R/$m 2>/dev/null || true; done' EXIT
cp /etc/resolv.conf $R/etc/resolv.conf
chroot $R /usr/bin/env DEBIAN_FRONTEND=noninteractive nice -n 10 apt-get -y -q install --no-install-recommends $PKGS
# only add to the shared cache
cp -n $R/var/cache/apt/archives/*.deb $CACHE/ 2>/dev/null || true
rm -f $R/var/cache/apt/archives/*.deb
for m in dev/pts sys proc; do umount $R/$m; done; trap - EXIT
rm -f $R/usr/sbin/policy-rc.d
for u in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer e2scrub_reap.service; do
  ln -sf /dev/null $R/etc/systemd/system/$u; done
# session script
case $NAME in
  xfce) cat > $R/usr/local/bin/session <<'S'
#!/bin/sh
xset s off -dpms
export XFCE_PANEL_MIGRATE_DEFAULT=1
exec startxfce4
S
    # disable xfwm4 compositing
    mkdir -p $R/root/.config/xfce4/xfconf/xfce-perchannel-xml
    cat > $R/root/.config/xfce4/xfconf/xfce-perchannel-xml/xfwm4.xml <<'S'
<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfwm4" version="1.0">
  <property name="general" type="empty">
    <property name="use_compositing" type="bool" value="false"/>
  </property>
</channel>
S
    ;;
  lxqt) cat > $R/usr/local/bin/session <<'S'
#!/bin/sh
xset s off -dpms
exec startlxqt
S
    mkdir -p $R/root/.config/lxqt
    printf '[General]\nwindow_manager=openbox\n' > $R/root/.config/lxqt/session.conf
    ;;
  openbox) cat > $R/usr/local/bin/session <<'S'
#!/bin/sh
xset s off -dpms
exec openbox-session
S
    mkdir -p $R/root/.config/openbox
    printf 'tint2 &\n' > $R/root/.config/openbox/autostart
    ;;
esac
chmod +x $R/usr/local/bin/session
cat > $R/etc/systemd/system/desktop.service <<'S'
[Unit]
Description=X desktop
After=systemd-user-sessions.service dbus.service
[Service]
Environment=HOME=/root
WorkingDirectory=/root
# bochs-drm arrives via udev; Xorg started before /dev/dri/card0 exists dies with 'no screens found'
ExecStartPre=/bin/sh -c 'for i in $(seq 150); do [ -e /dev/dri/card0 ] && exit 0; sleep 0.2; done; exit 0'
ExecStart=/usr/bin/xinit /usr/local/bin/session -- /usr/bin/Xorg :0 vt7 -nolisten tcp -novtswitch -s 0 -dpms
Restart=no
[Install]
WantedBy=multi-user.target
S
ln -sf /etc/systemd/system/desktop.service $R/etc/systemd/system/multi-user.target.wants/desktop.service
du -sm $R | cut -f1 > $NAME.rootfs-mb
mkdir -p $NAME
cp $R/boot/vmlinuz-* $NAME/vmlinuz; cp $R/boot/initrd.img-* $NAME/initrd.img
rm -f $NAME/disk.raw
nice -n 10 mkfs.ext4 -q -d $R $NAME/disk.raw 6G
nice -n 10 qemu-img convert -O qcow2 $NAME/disk.raw $NAME/disk.qcow2
rm -f $NAME/disk.raw
echo "done $NAME rootfs $(cat $NAME.rootfs-mb) MB"
