//! One viewer: its WebSocket joined to a new connection to the session's VNC socket. Bytes from
//! QEMU go to the browser as they come; bytes from the browser go through the RFB filter
//! (view-only drops input; control passes it on and notes it for the ledger).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::human::Tracker;
use super::rfb::ClientFilter;
use super::{Grant, Viewer};
use crate::session::Session;
use crate::vm::link::Socket;

/// Close codes the page reads (4000-4999 are the application's).
pub const CLOSE_ENDED: u16 = 4001;
pub const CLOSE_EXPIRED: u16 = 4002;
pub const CLOSE_UNAVAILABLE: u16 = 4003;
pub const CLOSE_PROTOCOL: u16 = 4004;

pub async fn run(ws: WebSocket, session: Arc<Session>, grant: Grant, viewer: Viewer) {
    let (mut to_browser, mut from_browser) = ws.split();
    let view = session.view().clone();
    let close = |code: u16, why: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: why.into(),
        }))
    };
    let link = view.link();
    let conn = tokio::select! {
        c = link.open(Socket::Vnc) => c,
        _ = view.closed().cancelled() => {
            let _ = to_browser.send(close(CLOSE_ENDED, "the session has ended")).await;
            return;
        }
    };
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(session = %grant.session_id, error = %e, "live view: no connection to the VM's VNC socket");
            let _ = to_browser
                .send(close(
                    CLOSE_UNAVAILABLE,
                    "the desktop's screen is not reachable",
                ))
                .await;
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
    let ending = loop {
        tokio::select! {
            _ = view.closed().cancelled() => break Some((CLOSE_ENDED, "the session has ended".to_string())),
            _ = &mut expiry => break Some((CLOSE_EXPIRED, "this view link has expired".to_string())),
            n = from_vm.read(&mut buf) => match n {
                Ok(0) | Err(_) => break Some((CLOSE_ENDED, "the desktop closed the connection".to_string())),
                Ok(n) => {
                    let bytes = axum::body::Bytes::copy_from_slice(&buf[..n]);
                    if to_browser.send(Message::Binary(bytes)).await.is_err() {
                        break None;
                    }
                }
            },
            m = from_browser.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    let (mut out, mut inputs) = (Vec::new(), Vec::new());
                    if let Err(e) = filter.feed(&b, &mut out, &mut inputs) {
                        break Some((CLOSE_PROTOCOL, e.to_string()));
                    }
                    view.human.add(viewer.id, &mut tracker, &inputs);
                    if !out.is_empty() && to_vm.write_all(&out).await.is_err() {
                        break Some((CLOSE_ENDED, "the desktop closed the connection".to_string()));
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                // Pings are answered by axum; text is not RFB.
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {
                if let Some(b) = view.human.take_if_quiet() {
                    session.record_human(b);
                }
            }
        }
    };
    if grant.control {
        let release = tracker.release_all();
        if !release.is_empty() {
            let _ = to_vm.write_all(&release).await;
        }
        if let Some(b) = view.human.take() {
            session.record_human(b);
        }
    }
    if let Some((code, why)) = ending {
        let _ = to_browser.send(close(code, &why)).await;
    }
    let _ = to_browser.close().await;
    tracing::info!(session = %grant.session_id, viewer = viewer.id, "live view: viewer left");
}
