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
const state = { connected: false, ended: false, frames: 0, rfb: null };
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
    say('live · link expires ' + new Date(document.body.dataset.expires).toLocaleString());
    if (control) rfb.focus();
  });
  rfb.addEventListener('disconnect', () => {
    state.connected = false;
    // A dead link answers its page with 403: say so and stop. Anything else (the VM restarted
    // by a restore, a network blip) is tried again.
    fetch(page, { method: 'HEAD', cache: 'no-store' }).then((r) => {
      if (r.status === 403) {
        state.ended = true;
        say('This view has ended: the link expired or the session stopped.', true);
      } else {
        say('reconnecting…', true);
        setTimeout(connect, 1000);
      }
    }, () => { say('reconnecting…', true); setTimeout(connect, 2000); });
  });
  state.rfb = rfb;
}

connect();
