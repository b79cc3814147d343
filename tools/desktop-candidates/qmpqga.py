import json, os, socket, time, base64

class Chan:
    def __init__(self, path):
        while not os.path.exists(path): time.sleep(0.02)
        self.s = socket.socket(socket.AF_UNIX); self.s.connect(path); self.f = self.s.makefile('rwb')
    def send(self, obj):
        self.f.write(json.dumps(obj).encode() + b'\n'); self.f.flush()
    def line(self):
        return json.loads(self.f.readline())

class QMP(Chan):
    def __init__(self, path):
        super().__init__(path); self.line(); self.cmd('qmp_capabilities')
    def cmd(self, name, **args):
        self.send({'execute': name, 'arguments': args})
        while True:
            r = self.line()
            if 'event' in r: continue
            if 'error' in r: raise RuntimeError(r)
            return r['return']

class QGA:
    def __init__(self, path): self.path = path; self.c = None
    def connect(self, timeout):
        # guest-sync with a fresh id; the chardev accepts connections before the agent runs
        self.c = Chan(self.path); self.c.s.settimeout(timeout)
        sid = int(time.time() * 1000) % 100000000
        self.c.f.write(b'\xff'); self.c.send({'execute': 'guest-sync-delimited', 'arguments': {'id': sid}})
        while True:
            raw = self.c.f.readline()
            raw = raw.lstrip(b'\xff')
            if not raw.strip(): continue
            r = json.loads(raw)
            if r.get('return') == sid: break
        self.c.s.settimeout(30)
    def cmd(self, name, **args):
        self.c.send({'execute': name, 'arguments': args}); r = self.c.line()
        if 'error' in r: raise RuntimeError(r)
        return r['return']
    def sh(self, script):
        pid = self.cmd('guest-exec', path='/bin/sh', arg=['-c', script], **{'capture-output': True})['pid']
        while True:
            st = self.cmd('guest-exec-status', pid=pid)
            if st['exited']:
                return base64.b64decode(st.get('out-data', '')).decode(), st.get('exitcode')
            time.sleep(0.05)

