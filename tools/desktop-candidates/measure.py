#!/usr/bin/env python3
"""Boot one candidate under TCG and measure it.
usage: measure.py NAME RUNDIR [--boot-secs N] [--windows K]
Writes RUNDIR/result.json, RUNDIR/shots/tNNN.ppm (1 per s), RUNDIR/state."""
import json, os, socket, subprocess, sys, time, base64, argparse

ap = argparse.ArgumentParser()
ap.add_argument('name'); ap.add_argument('rundir')
ap.add_argument('--boot-secs', type=int, default=150)   # screendump every second for this long
ap.add_argument('--windows', type=int, default=2)       # number of 60 s idle windows
ap.add_argument('--window-secs', type=int, default=60)
a = ap.parse_args()
BASE = os.path.join(os.environ.get('DESKVM_MEASURE_DIR', '/var/tmp/deskvm-desktops'), a.name)
D = os.path.abspath(a.rundir)
os.makedirs(D + '/shots', exist_ok=True)
for f in ('qmp.sock', 'qga.sock', 'state', 'overlay.qcow2'):
    try: os.unlink(f'{D}/{f}')
    except FileNotFoundError: pass
subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', f'{BASE}/disk.qcow2', '-F', 'qcow2', f'{D}/overlay.qcow2'], check=True)
cmd = ['qemu-system-x86_64', '-accel', 'tcg,thread=multi', '-machine', 'pc', '-smp', '2', '-m', '2048', '-nodefaults',
       '-device', 'VGA,xres=1280,yres=800,edid=on', '-device', 'virtio-tablet-pci', '-device', 'virtio-keyboard-pci',
       '-device', 'virtio-serial-pci', '-chardev', f'socket,id=qga0,path={D}/qga.sock,server=on,wait=off',
       '-device', 'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
       '-display', 'none', '-serial', f'file:{D}/serial.log', '-kernel', f'{BASE}/vmlinuz', '-initrd', f'{BASE}/initrd.img',
       '-append', 'root=/dev/vda rw console=ttyS0 quiet loglevel=3 systemd.show_status=0 mitigations=off init_on_free=1',
       '-drive', f'file={D}/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe',
       '-qmp', f'unix:{D}/qmp.sock,server=on,wait=off', '-nic', 'none']
json.dump(cmd, open(f'{D}/cmd.json', 'w'))
t0 = time.monotonic()
qemu = subprocess.Popen(cmd)
res = {'name': a.name, 'cmd': ' '.join(cmd)}

from qmpqga import QMP, QGA  # the QMP and guest-agent clients

qmp = QMP(f'{D}/qmp.sock')
pid = qemu.pid
def cpu_ticks():
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return int(f[11]) + int(f[12])   # utime + stime
HZ = os.sysconf('SC_CLK_TCK')

# ---- boot: one screendump per second; note when the guest agent first answers
agent = QGA(f'{D}/qga.sock'); agent_up = None
shot_times = []
next_t = 1.0
while True:
    el = time.monotonic() - t0
    if el >= a.boot_secs: break
    if el >= next_t:
        p = f'{D}/shots/t{int(round(next_t)):03d}.ppm'
        qmp.cmd('screendump', filename=p); shot_times.append(int(round(next_t))); next_t += 1.0
    if agent_up is None and el > 5 and int(el) % 3 == 0:
        try:
            agent.connect(0.5); agent_up = time.monotonic() - t0
        except Exception:
            agent.c = None
    time.sleep(0.05)
res['agent_up_s'] = agent_up
if agent.c is None: agent.connect(60)
out, _ = agent.sh('systemctl is-active desktop.service; ps -eo comm= | sort | uniq | tr "\\n" " "; echo; uptime')
res['guest_procs'] = out

def guest_stat():
    o, _ = agent.sh('head -1 /proc/stat')
    v = [int(x) for x in o.split()[1:]]
    return v
# ---- idle windows
wins = []
for w in range(a.windows):
    g0 = guest_stat(); c0 = cpu_ticks(); w0 = time.monotonic()
    time.sleep(a.window_secs)
    c1 = cpu_ticks(); w1 = time.monotonic(); g1 = guest_stat()
    host_pct = 100.0 * (c1 - c0) / HZ / (w1 - w0)
    d = [y - x for x, y in zip(g0, g1)]
    tot = sum(d[:8]); idle = d[3] + d[4]
    guest_pct = 100.0 * (tot - idle) / tot * 2  # % of one vCPU-core (2 vCPUs)
    wins.append({'host_pct_one_core': round(host_pct, 2), 'guest_busy_pct_one_core': round(guest_pct, 2)})
    print(a.name, 'window', w, wins[-1], flush=True)
res['idle_windows'] = wins
# who is busy while idle (second top sample covers 10 s)
out, _ = agent.sh('COLUMNS=200 top -b -w 200 -d 10 -n 2 | awk "/^top -/{n++} n==2" | head -20'); res['top'] = out
out, _ = agent.sh('ps -eo rss=,comm= --sort=-rss | head -15'); res['ps_rss'] = out
qmp.cmd('screendump', filename=f'{D}/settled.ppm')
out, _ = agent.sh('free -m'); res['free_m'] = out
res['guest_used_mib'] = int(out.splitlines()[1].split()[2])
sm = open(f'/proc/{pid}/smaps_rollup').read()
for line in sm.splitlines():
    k = line.split(':')[0]
    if k in ('Rss', 'Pss', 'Private_Dirty', 'Anonymous'):
        res[f'qemu_{k.lower()}_mib'] = round(int(line.split()[1]) / 1024, 1)
# ---- ready state
agent.sh('sync; echo 3 > /proc/sys/vm/drop_caches')
out, _ = agent.sh('free -m'); res['free_m_after_drop'] = out
res['guest_used_mib_after_drop'] = int(out.splitlines()[1].split()[2])
ts = time.monotonic()
qmp.cmd('stop')
qmp.cmd('migrate', uri=f'file:{D}/state')
while True:
    st = qmp.cmd('query-migrate')
    if st.get('status') in ('completed', 'failed'): break
    time.sleep(0.1)
res['migrate_status'] = st.get('status'); res['migrate_s'] = round(time.monotonic() - ts, 2)
res['state_bytes'] = os.path.getsize(f'{D}/state')
qmp.cmd('quit'); qemu.wait(timeout=30)
json.dump(res, open(f'{D}/result.json', 'w'), indent=1)
print(json.dumps(res, indent=1))
