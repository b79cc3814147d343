//! One viewer: its WebSocket joined to a new connection to the session's VNC socket. Bytes from
//! QEMU go to the browser as they come; bytes from the browser go through the RFB filter
//! (view-only drops input; control passes it on and notes it for the ledger).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::time::{timeout, Instant};

use super::human::Tracker;
use super::rfb::ClientFilter;
use super::{Grant, Viewer};
use crate::session::viewers::Viewers;
use crate::session::Session;
use crate::vm::link::{Conn, Socket};

/// Close codes (the application's range) with a reason, for the browser's console and logs.
pub const CLOSE_ENDED: u16 = 4001;
pub const CLOSE_EXPIRED: u16 = 4002;
pub const CLOSE_UNAVAILABLE: u16 = 4003;
pub const CLOSE_PROTOCOL: u16 = 4004;
pub const CLOSE_SILENT: u16 = 4005;

/// A still screen sends nothing: pings find a browser that went away without closing (a laptop
/// asleep, a dropped network), which would otherwise hold its viewer's place until the link
/// expires.
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENT_FOR: Duration = Duration::from_secs(60);
/// One send to a browser that stopped reading, or a VNC connection that does not come (a hung
/// exec on a remote engine), ends the viewer instead of holding it.
const SEND_LIMIT: Duration = Duration::from_secs(15);

fn close(code: u16, why: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: why.into(),
    }))
}

/// Why a viewer ended, for its close frame (`None`: the browser is gone, no frame to send).
type Ending = Option<(u16, String)>;

type ToBrowser = SplitSink<WebSocket, Message>;
type ToVm = WriteHalf<Conn>;

/// Sends `m` to the browser, within [`SEND_LIMIT`]; whether it went.
async fn send(to_browser: &mut ToBrowser, m: Message) -> bool {
    matches!(timeout(SEND_LIMIT, to_browser.send(m)).await, Ok(Ok(())))
}

fn gone() -> Ending {
    Some((CLOSE_ENDED, "the desktop closed the connection".to_string()))
}

pub async fn run(ws: WebSocket, session: Arc<Session>, grant: Grant, viewer: Viewer) {
    let (mut to_browser, mut from_browser) = ws.split();
    let view = session.view().clone();
    let Some(conn) = connect(&view, &grant, &mut to_browser).await else {
        return;
    };
    tracing::info!(session = %grant.session_id, viewer = viewer.id, mode = grant.mode(), "live view: viewer connected");
    let (mut from_vm, mut to_vm) = tokio::io::split(conn);
    let mut v = Viewing {
        filter: ClientFilter::new(grant.control),
        tracker: Tracker::default(),
        session,
        view,
        grant,
        viewer,
    };
    let mut buf = vec![0u8; 256 * 1024];
    let expiry = tokio::time::sleep_until(v.grant.expires.into());
    tokio::pin!(expiry);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut heard = Instant::now();
    let mut pinged = Instant::now();
    let ending = loop {
        tokio::select! {
            _ = v.view.closed().cancelled() => break Some((CLOSE_ENDED, "the session has ended".to_string())),
            _ = &mut expiry => break Some((CLOSE_EXPIRED, "this view link has expired".to_string())),
            n = from_vm.read(&mut buf) => match n {
                Ok(0) | Err(_) => break gone(),
                Ok(n) => {
                    let bytes = axum::body::Bytes::copy_from_slice(&buf[..n]);
                    if !send(&mut to_browser, Message::Binary(bytes)).await {
                        break None;
                    }
                }
            },
            m = from_browser.next() => {
                heard = Instant::now();
                match m {
                    Some(Ok(Message::Binary(b))) => {
                        if let Err(ending) = v.on_browser_bytes(&b, &mut to_vm).await {
                            break ending;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                    // Pongs (and pings, which axum answers) only show the browser is there; text
                    // is not RFB.
                    Some(Ok(_)) => {}
                }
            }
            _ = tick.tick() => {
                if let Err(ending) = v.tick(heard, &mut pinged, &mut to_browser).await {
                    break ending;
                }
            }
        }
    };
    v.leave(&mut to_vm).await;
    if let Some((code, why)) = ending {
        let _ = timeout(SEND_LIMIT, to_browser.send(close(code, &why))).await;
    }
    let _ = timeout(SEND_LIMIT, to_browser.close()).await;
    tracing::info!(session = %v.grant.session_id, viewer = v.viewer.id, "live view: viewer left");
}

/// A new connection to the VM's VNC socket, or the browser told why there is none.
async fn connect(view: &Viewers, grant: &Grant, to_browser: &mut ToBrowser) -> Option<Conn> {
    let link = view.link();
    let conn = tokio::select! {
        c = timeout(SEND_LIMIT, link.open(Socket::Vnc)) => c.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        _ = view.closed().cancelled() => {
            let _ = timeout(SEND_LIMIT, to_browser.send(close(CLOSE_ENDED, "the session has ended"))).await;
            return None;
        }
    };
    match conn {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(session = %grant.session_id, error = %e, "live view: no connection to the VM's VNC socket");
            let why = "the desktop's screen is not reachable";
            let _ = timeout(SEND_LIMIT, to_browser.send(close(CLOSE_UNAVAILABLE, why))).await;
            None
        }
    }
}

/// One viewer's side of the bridge: its session, its link's grant, and what it sent.
struct Viewing {
    session: Arc<Session>,
    view: Arc<Viewers>,
    grant: Grant,
    viewer: Viewer,
    filter: ClientFilter,
    tracker: Tracker,
}

impl Viewing {
    /// RFB bytes from the browser: through the filter to the VM, and a person's input noted
    /// for the session's ledger.
    async fn on_browser_bytes(&mut self, b: &[u8], to_vm: &mut ToVm) -> Result<(), Ending> {
        let (mut out, mut inputs) = (Vec::new(), Vec::new());
        if let Err(e) = self.filter.feed(b, &mut out, &mut inputs) {
            return Err(Some((CLOSE_PROTOCOL, e.to_string())));
        }
        // A session stopping takes no more input, on screen or on record.
        if self.view.closed().is_cancelled() {
            return Ok(());
        }
        if !inputs.is_empty() {
            self.tracker.feed(&self.view.human, self.viewer.id, &inputs);
            // A person using the desktop keeps it from the idle timeout.
            self.session.touch();
        }
        if !out.is_empty()
            && !matches!(timeout(SEND_LIMIT, to_vm.write_all(&out)).await, Ok(Ok(())))
        {
            return Err(gone());
        }
        Ok(())
    }

    /// Every half second: a browser silent too long is dropped, a quiet one pinged, and a
    /// burst of a person's input that has ended goes on record.
    async fn tick(
        &self,
        heard: Instant,
        pinged: &mut Instant,
        to_browser: &mut ToBrowser,
    ) -> Result<(), Ending> {
        if heard.elapsed() >= SILENT_FOR {
            return Err(Some((
                CLOSE_SILENT,
                "the browser stopped answering".to_string(),
            )));
        }
        if pinged.elapsed() >= PING_EVERY {
            *pinged = Instant::now();
            let ping = Message::Ping(axum::body::Bytes::from_static(b"deskvm"));
            if !send(to_browser, ping).await {
                return Err(None);
            }
        }
        if let Some(b) = self.view.human.take_if_quiet() {
            self.session.record_human(b);
        }
        Ok(())
    }

    /// A control viewer leaving releases what it holds (a key or button left down would stay
    /// down for the agent) and puts its last input on record.
    async fn leave(&mut self, to_vm: &mut ToVm) {
        if !self.grant.control || self.view.closed().is_cancelled() {
            return;
        }
        let release = self.tracker.release_all();
        if !release.is_empty() {
            let _ = timeout(SEND_LIMIT, to_vm.write_all(&release)).await;
        }
        if let Some(b) = self.view.human.take() {
            self.session.record_human(b);
        }
    }
}
