// The live view page: noVNC's RFB client on the WebSocket deskvm bridges to the session's VNC
// server. View-only links are enforced by deskvm (input never reaches QEMU); `viewOnly` here
// only keeps the browser from sending it.
import RFB from './novnc/core/rfb.js';

const control = document.body.dataset.mode === 'control';
const screen = document.getElementById('screen');
const status = document.getElementById('status');
const page = location.pathname.replace(/\/$/, '');
const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + page + '/ws';

document.getElementById('mode').textContent = control
  ? 'Control: your mouse and keyboard reach the desktop'
  : 'View only';

// What tests and an embedding app read: whether the screen is live, and its canvas.
const state = { connected: false, ended: false, rfb: null };
let failures = 0;
window.deskvmView = state;
state.canvas = () => screen.querySelector('canvas');

function say(text, bad) {
  status.textContent = text;
  status.className = bad ? 'status bad' : 'status';
}

function connect() {
  const rfb = new RFB(screen, wsUrl, { shared: true, wsProtocols: ['binary'] });
  rfb.viewOnly = !control;
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = control;
  rfb.addEventListener('connect', () => {
    state.connected = true;
    failures = 0;
    say('live · link expires ' + new Date(document.body.dataset.expires).toLocaleString());
    if (control) rfb.focus();
  });
  rfb.addEventListener('disconnect', () => {
    state.connected = false;
    // A dead link answers its page with 403: say so and stop. Anything else (the VM restarted
    // by a restore, a network blip, too many viewers) is tried again, less and less often.
    failures += 1;
    const retry = () => {
      if (failures > 20) {
        say('Could not reconnect (too many viewers, or the desktop is unreachable): reload to try again.', true);
        return;
      }
      say('reconnecting…', true);
      setTimeout(connect, Math.min(1000 * 2 ** (failures - 1), 15000));
    };
    fetch(page, { method: 'HEAD', cache: 'no-store' }).then((r) => {
      if (r.status === 403) {
        state.ended = true;
        say('This view has ended: the link expired or the session stopped.', true);
      } else {
        retry();
      }
    }, retry);
  });
  state.rfb = rfb;
}

connect();
