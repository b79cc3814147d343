//! The legacy HTTP+SSE transport (MCP 2024-11-05) for older clients: `GET /sse` opens a stream
//! whose first event names the message endpoint; `POST /messages?sessionId=…` carries each
//! client message, answered on that stream. A thin transport over the same `DeskvmServer` the
//! other transports serve: rmcp runs it over a pair of channels.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::mcp::{Connection, DeskvmServer, Principal};

struct Open {
    tx: mpsc::Sender<ClientJsonRpcMessage>,
    principal: Option<String>,
}

#[derive(Clone)]
pub struct Legacy {
    server: DeskvmServer,
    open: Arc<Mutex<HashMap<String, Open>>>,
    max_body: usize,
    /// Server shutdown: ends every stream (and its rmcp service) so a graceful shutdown does
    /// not wait for clients to hang up.
    ct: CancellationToken,
}

/// Removes a stream's session when the client goes away: its channel closes, rmcp's serve loop
/// ends and cancels the calls still running (the spec counts a closed stream as a cancel).
struct Closer {
    open: Arc<Mutex<HashMap<String, Open>>>,
    id: String,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.open
            .lock()
            .expect("sse sessions poisoned")
            .remove(&self.id);
        tracing::debug!(session = %self.id, "legacy SSE stream closed");
    }
}

impl Legacy {
    pub fn new(server: DeskvmServer, max_body: usize, ct: CancellationToken) -> Self {
        Legacy {
            server,
            open: Arc::new(Mutex::new(HashMap::new())),
            max_body,
            ct,
        }
    }
}

pub async fn stream(
    State(l): State<Legacy>,
    req: Request,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let id = format!("{:032x}", rand::random::<u128>());
    let principal = req.extensions().get::<Principal>().map(|p| p.0.clone());
    let (c2s_tx, c2s_rx) = mpsc::channel::<ClientJsonRpcMessage>(32);
    let (s2c_tx, s2c_rx) = mpsc::channel::<ServerJsonRpcMessage>(32);
    l.open.lock().expect("sse sessions poisoned").insert(
        id.clone(),
        Open {
            tx: c2s_tx,
            principal,
        },
    );
    let server = l.server.clone();
    let sid = id.clone();
    let ct = l.ct.child_token();
    tokio::spawn(async move {
        match server.serve_with_ct((s2c_tx, c2s_rx), ct).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => {
                tracing::info!(session = %sid, error = %e, "legacy SSE session ended before initialize")
            }
        }
    });
    let closer = Closer {
        open: l.open.clone(),
        id: id.clone(),
    };
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("/messages?sessionId={id}"));
    let messages = s2c_rx.map(move |m| {
        let _held = &closer;
        let data = serde_json::to_string(&m).unwrap_or_default();
        Ok(Event::default().event("message").data(data))
    });
    let stream = futures::stream::once(async { Ok(endpoint) })
        .chain(messages)
        .take_until(l.ct.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(serde::Deserialize)]
pub struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: String,
}

pub async fn message(
    State(l): State<Legacy>,
    Query(q): Query<SessionQuery>,
    req: Request,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let principal = parts.extensions.get::<Principal>().map(|p| p.0.clone());
    let tx = {
        let open = l.open.lock().expect("sse sessions poisoned");
        // Another token's stream is as unknown as a closed one.
        match open.get(&q.session_id).filter(|o| o.principal == principal) {
            Some(o) => o.tx.clone(),
            None => {
                return (StatusCode::NOT_FOUND, "unknown or closed SSE session\n").into_response()
            }
        }
    };
    let bytes = match axum::body::to_bytes(body, l.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {} bytes\n", l.max_body),
            )
                .into_response()
        }
    };
    let mut msg: ClientJsonRpcMessage = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a JSON-RPC message: {e}\n"),
            )
                .into_response()
        }
    };
    parts
        .extensions
        .insert(Connection(format!("sse:{}", &q.session_id[..8])));
    msg.insert_extension(parts);
    let mut tx = tx;
    match tx.send(msg).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "SSE session closed\n").into_response(),
    }
}
