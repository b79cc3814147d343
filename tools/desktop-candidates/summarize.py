#!/usr/bin/env python3
import json, glob, subprocess, os
os.chdir(os.environ.get('DESKVM_MEASURE_DIR', '/var/tmp/deskvm-desktops'))
HERE = os.path.dirname(os.path.abspath(__file__))
for n in ('xfce', 'lxqt', 'openbox'):
    runs = sorted(glob.glob(f'runs/{n}-*/result.json'))
    print(f'## {n}  rootfs {open(n + ".rootfs-mb").read().strip()} MB (base 1141)')
    for r in runs:
        d = os.path.dirname(r); j = json.load(open(r))
        dr = subprocess.run([os.path.join(HERE, 'drawn.py'), d], capture_output=True, text=True).stdout.strip()
        w = ' / '.join(f"{x['host_pct_one_core']:.1f}" for x in j['idle_windows'])
        g = ' / '.join(f"{x['guest_busy_pct_one_core']:.1f}" for x in j['idle_windows'])
        print(f"{d}: {dr} | agent {j['agent_up_s']:.0f}s | host% {w} | guest% {g} | used {j['guest_used_mib']} "
              f"(after drop {j['guest_used_mib_after_drop']}) | RSS {j['qemu_rss_mib']} PSS {j['qemu_pss_mib']} | "
              f"state {j['state_bytes']/1e6:.0f} MB in {j['migrate_s']}s")
