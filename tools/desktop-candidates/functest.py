#!/usr/bin/env python3
"""functest.py NAME RUNDIR: resume RUNDIR/state, open two terminals, press Alt+Tab via QMP and
check _NET_ACTIVE_WINDOW changes; open the application menu with a click; save screendumps."""
import json, os, subprocess, sys, time, shutil
sys.argv = [sys.argv[0]] + sys.argv[1:]
NAME, D = sys.argv[1], os.path.abspath(sys.argv[2])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmpqga import QMP, QGA
F = D + '/func' + os.environ.get('FUNC_SUFFIX', ''); os.makedirs(F, exist_ok=True)
for f in ('qmp.sock', 'qga.sock'):
    try: os.unlink(f'{F}/{f}')
    except FileNotFoundError: pass
shutil.copy(f'{D}/overlay.qcow2', f'{F}/overlay.qcow2')
cmd = [c.replace(f'{D}/overlay.qcow2', f'{F}/overlay.qcow2').replace(f'{D}/qmp.sock', f'{F}/qmp.sock')
        .replace(f'{D}/qga.sock', f'{F}/qga.sock').replace(f'{D}/serial.log', f'{F}/serial.log')
       for c in json.load(open(f'{D}/cmd.json'))] + ['-incoming', f'file:{D}/state']
t0 = time.monotonic(); q = subprocess.Popen(cmd)
qmp = QMP(f'{F}/qmp.sock')
while qmp.cmd('query-status')['status'] == 'inmigrate': time.sleep(0.05)
qmp.cmd('cont'); print('resumed in', round(time.monotonic() - t0, 2), 's')
ag = QGA(f'{F}/qga.sock'); ag.connect(20)
term = {'xfce': 'xfce4-terminal', 'lxqt': 'qterminal', 'openbox': 'xterm'}[NAME]
for i in range(2):
    ag.sh(f'cd /root; DISPLAY=:0 HOME=/root setsid {term} >/dev/null 2>&1 < /dev/null &'); time.sleep(8)
time.sleep(7)
def active():
    o, _ = ag.sh('DISPLAY=:0 xprop -root _NET_ACTIVE_WINDOW; DISPLAY=:0 xprop -root _NET_CLIENT_LIST'); return o.strip()
qmp.cmd('screendump', filename=f'{F}/1-two-terms.ppm')
a0 = active()
if os.environ.get('ALT_MODE') == 'events':  # separate key events with pauses (alt down, tab down/up, alt up)
    def key(k, down):
        qmp.cmd('input-send-event', events=[{'type': 'key', 'data': {'down': down, 'key': {'type': 'qcode', 'data': k}}}])
    key('alt', True); time.sleep(0.5); key('tab', True); time.sleep(0.2); key('tab', False); time.sleep(1.0); key('alt', False)
else:
    qmp.cmd('send-key', keys=[{'type': 'qcode', 'data': 'alt'}, {'type': 'qcode', 'data': 'tab'}], **{'hold-time': int(os.environ.get('ALT_HOLD_MS', '200'))})
time.sleep(3)
a1 = active()
qmp.cmd('screendump', filename=f'{F}/2-after-alt-tab.ppm')
print('before:', a0); print('after :', a1); print('alt-tab changed active window:', a0.splitlines()[0] != a1.splitlines()[0])
# application menu
def click(x, y, btn='left'):
    ev = [{'type': 'abs', 'data': {'axis': 'x', 'value': x * 32767 // 1279}},
          {'type': 'abs', 'data': {'axis': 'y', 'value': y * 32767 // 799}}]
    qmp.cmd('input-send-event', events=ev); time.sleep(0.3)
    qmp.cmd('input-send-event', events=[{'type': 'btn', 'data': {'down': True, 'button': btn}}]); time.sleep(0.15)
    qmp.cmd('input-send-event', events=[{'type': 'btn', 'data': {'down': False, 'button': btn}}])
if NAME == 'xfce': click(50, 12)
elif NAME == 'lxqt': click(10, 788)
else: click(1200, 700, 'right')  # openbox root menu on the desktop
time.sleep(5)
qmp.cmd('screendump', filename=f'{F}/3-menu.ppm')
qmp.cmd('quit'); q.wait(timeout=20)
for p in ('1-two-terms', '2-after-alt-tab', '3-menu'):
    subprocess.run(['convert', f'{F}/{p}.ppm', f'{F}/{p}.png'])
