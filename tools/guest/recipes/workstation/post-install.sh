#!/bin/bash
# Post-install of the workstation guest; runs in the image's chroot as root after the
# packages and overlays are in place (DESKVM_USER is set by build-rootfs.sh).
set -euo pipefail

conf=/etc/xdg/xfce4/xfconf/xfce-perchannel-xml

# Panel: without an xfce4-panel channel the panel asks "use default config or one empty
# panel?" on first start. Installing its default layout as the system channel skips that.
# Plugins whose packages are not installed (pulseaudio, power manager, notifications) are
# dropped from it, so the panel does not complain about them.
mkdir -p "$conf"
python3 - /etc/xdg/xfce4/panel/default.xml "$conf/xfce4-panel.xml" <<'PY'
import os, sys, xml.etree.ElementTree as ET
src, dst = sys.argv[1], sys.argv[2]
tree = ET.parse(src)
root = tree.getroot()
plugins = root.find("./property[@name='plugins']")
dirs = ["/usr/share/xfce4/panel/plugins"]
internal = {"applicationsmenu", "actions", "clock", "directorymenu", "launcher", "pager",
            "separator", "showdesktop", "systray", "tasklist", "windowmenu"}
def available(name):
    if name in internal:
        return True
    return any(os.path.exists(os.path.join(d, name + ".desktop")) for d in dirs)
dropped = set()
for p in list(plugins):
    if not available(p.get("value")):
        plugins.remove(p)
        dropped.add(p.get("name").split("-")[1])
for panel in root.findall("./property[@name='panels']/property"):
    ids = panel.find("./property[@name='plugin-ids']")
    if ids is None:
        continue
    for v in list(ids):
        if v.get("value") in dropped:
            ids.remove(v)
tree.write(dst, encoding="UTF-8", xml_declaration=True)
print("panel: default layout installed" + (", without plugins " + ", ".join(sorted(dropped)) if dropped else ""))
PY

# No compositing (the overlay's xfwm4 channel says so; xfwm4 itself ships no channel file
# here, only /usr/share/xfwm4/defaults, which would turn it on).
grep -q 'name="use_compositing" type="bool" value="false"' "$conf/xfwm4.xml"

# LibreOffice's "what's new" bar compares ooSetupLastVersion with the running version.
lo=$(dpkg-query -W -f='${Version}' libreoffice-core | sed -E 's/^[0-9]+://; s/^([0-9]+\.[0-9]+).*/\1/')
sed -i "s/@LO_VERSION@/$lo/" /etc/skel/.config/libreoffice/4/user/registrymodifications.xcu

# Session autostart entries that would only cost CPU or show prompts in this guest.
for f in xscreensaver light-locker xfce4-power-manager polkit-gnome-authentication-agent-1 \
         xfce-polkit update-notifier blueman print-applet nm-applet; do
  if [ -f "/etc/xdg/autostart/$f.desktop" ]; then
    echo "Hidden=true" >> "/etc/xdg/autostart/$f.desktop"
  fi
done

# The desktop user: uid 1000, home from /etc/skel (Desktop, Documents, Downloads, the
# LibreOffice profile), sudo with password "password".
# (The directories are made here: git keeps no empty directories in the overlay.)
mkdir -p /etc/skel/Desktop /etc/skel/Documents /etc/skel/Downloads
useradd -m -u 1000 -s /bin/bash -G sudo "$DESKVM_USER"
echo "$DESKVM_USER:password" | chpasswd

# Nothing may listen on a network: fail the build if a listener slipped in as a dependency.
for pkg in openssh-server cups-daemon cups-browsed avahi-daemon exim4-daemon-light; do
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
    echo "post-install: $pkg is installed; it would listen on a network" >&2
    exit 1
  fi
done
echo "user $DESKVM_USER created (uid $(id -u "$DESKVM_USER")), LibreOffice $lo"
