//! One viewer: its WebSocket joined to a new connection to the session's VNC socket. Bytes from
//! QEMU go to the browser as they come; bytes from the browser go through the RFB filter
//! (view-only drops input; control passes it on and notes it for the ledger).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use super::human::Tracker;
use super::rfb::ClientFilter;
use super::{Grant, Viewer};
use crate::session::Session;
use crate::vm::link::Socket;

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

pub async fn run(ws: WebSocket, session: Arc<Session>, grant: Grant, viewer: Viewer) {
    let (mut to_browser, mut from_browser) = ws.split();
    let view = session.view().clone();
    let link = view.link();
    let conn = tokio::select! {
        c = timeout(SEND_LIMIT, link.open(Socket::Vnc)) => c.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        _ = view.closed().cancelled() => {
            let _ = timeout(SEND_LIMIT, to_browser.send(close(CLOSE_ENDED, "the session has ended"))).await;
            return;
        }
    };
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(session = %grant.session_id, error = %e, "live view: no connection to the VM's VNC socket");
            let why = "the desktop's screen is not reachable";
            let _ = timeout(SEND_LIMIT, to_browser.send(close(CLOSE_UNAVAILABLE, why))).await;
            return;
        }
    };
    tracing::info!(session = %grant.session_id, viewer = viewer.id, mode = grant.mode(), "live view: viewer connected");
    let (mut from_vm, mut to_vm) = tokio::io::split(conn);
    let mut filter = ClientFilter::new(grant.control);
    let mut tracker = Tracker::default();
    let mut buf = vec![0u8; 256 * 1024];
    let expiry = tokio::time::sleep_until(grant.expires.into());
    tokio::pin!(expiry);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut heard = Instant::now();
    let mut pinged = Instant::now();
    let gone = || Some((CLOSE_ENDED, "the desktop closed the connection".to_string()));
    let ending = loop {
        tokio::select! {
            _ = view.closed().cancelled() => break Some((CLOSE_ENDED, "the session has ended".to_string())),
            _ = &mut expiry => break Some((CLOSE_EXPIRED, "this view link has expired".to_string())),
            n = from_vm.read(&mut buf) => match n {
                Ok(0) | Err(_) => break gone(),
                Ok(n) => {
                    let bytes = axum::body::Bytes::copy_from_slice(&buf[..n]);
                    if !matches!(timeout(SEND_LIMIT, to_browser.send(Message::Binary(bytes))).await, Ok(Ok(()))) {
                        break None;
                    }
                }
            },
            m = from_browser.next() => {
                heard = Instant::now();
                match m {
                    Some(Ok(Message::Binary(b))) => {
                        let (mut out, mut inputs) = (Vec::new(), Vec::new());
                        if let Err(e) = filter.feed(&b, &mut out, &mut inputs) {
                            break Some((CLOSE_PROTOCOL, e.to_string()));
                        }
                        // A session stopping takes no more input, on screen or on record.
                        if view.closed().is_cancelled() {
                            continue;
                        }
                        if !inputs.is_empty() {
                            tracker.feed(&view.human, viewer.id, &inputs);
                            // A person using the desktop keeps it from the idle timeout.
                            session.touch();
                        }
                        if !out.is_empty() && !matches!(timeout(SEND_LIMIT, to_vm.write_all(&out)).await, Ok(Ok(()))) {
                            break gone();
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                    // Pongs (and pings, which axum answers) only show the browser is there; text
                    // is not RFB.
                    Some(Ok(_)) => {}
                }
            }
            _ = tick.tick() => {
                if heard.elapsed() >= SILENT_FOR {
                    break Some((CLOSE_SILENT, "the browser stopped answering".to_string()));
                }
                if pinged.elapsed() >= PING_EVERY {
                    pinged = Instant::now();
                    let ping = Message::Ping(axum::body::Bytes::from_static(b"deskvm"));
                    if !matches!(timeout(SEND_LIMIT, to_browser.send(ping)).await, Ok(Ok(()))) {
                        break None;
                    }
                }
                if let Some(b) = view.human.take_if_quiet() {
                    session.record_human(b);
                }
            }
        }
    };
    if grant.control && !view.closed().is_cancelled() {
        let release = tracker.release_all();
        if !release.is_empty() {
            let _ = timeout(SEND_LIMIT, to_vm.write_all(&release)).await;
        }
        if let Some(b) = view.human.take() {
            session.record_human(b);
        }
    }
    if let Some((code, why)) = ending {
        let _ = timeout(SEND_LIMIT, to_browser.send(close(code, &why))).await;
    }
    let _ = timeout(SEND_LIMIT, to_browser.close()).await;
    tracing::info!(session = %grant.session_id, viewer = viewer.id, "live view: viewer left");
}
