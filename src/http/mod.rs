//! The front door: every way in to deskvm's one MCP handler and its live views. Over HTTP, the
//! current streamable transport at `/mcp` (rmcp's service), the legacy HTTP+SSE transport at
//! `/sse` + `/messages`, exported reviews at `/reviews/` and live views at `/view/`, all behind
//! one guard (Host and Origin allow-lists, bearer tokens, a stream cap); over stdio, the handler
//! on stdin/stdout and the views on a loopback listener of their own ([`transport`]).
//!
//! This room sits above `mcp` and `view`: they provide handlers and know nothing of tokens,
//! cookies or origins. Who called reaches the MCP handler as [`Principal`] in the request's
//! extensions, and a view's check as a plain token name.

pub mod auth;
mod reviews;
mod sse;
mod tokens;
mod transport;
mod view;

pub use tokens::Tokens;
pub use transport::{serve, Transport};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::mcp::DeskvmServer;
use auth::Guard;

#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    pub tokens: Tokens,
    /// Origins allowed besides the loopback ones (`scheme://host[:port]`, `:*` for any port).
    pub allow_origins: Vec<String>,
    /// Host names clients may use besides the loopback ones and the bound address.
    pub allow_hosts: Vec<String>,
    pub max_body_bytes: usize,
    pub max_streams: usize,
}

/// Host names that always mean this machine (the DNS-rebinding guard accepts them).
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

impl HttpOptions {
    /// Refuses what would expose desktops: a non-loopback address without a token.
    pub fn check(&self) -> Result<()> {
        if !self.addr.ip().is_loopback() && self.tokens.is_empty() {
            bail!(
                "refusing to serve on {} without a token: anyone who reaches that address would get a desktop. \
                 Give tokens with --token-file FILE (lines of name:secret) or DESKVM_TOKEN=<secret>, \
                 or bind a loopback address (the default, 127.0.0.1:8765)",
                self.addr
            );
        }
        Ok(())
    }

    pub fn origins(&self) -> Vec<String> {
        let mut v: Vec<String> = LOOPBACK_ORIGINS.iter().map(|s| s.to_string()).collect();
        v.extend(self.allow_origins.iter().cloned());
        v
    }

    /// Host names rmcp accepts (DNS rebinding guard). Bound to every interface, any host name
    /// may be right, and the token (required there) is the guard.
    fn hosts(&self) -> Option<Vec<String>> {
        if self.addr.ip().is_unspecified() {
            return None;
        }
        let mut v: Vec<String> = LOOPBACK_HOSTS.map(String::from).to_vec();
        v.push(self.addr.ip().to_string());
        v.extend(self.allow_hosts.iter().cloned());
        Some(v)
    }

    /// What this server exposes, for logs, `doctor` and the instance record (no secrets).
    pub fn describe(&self, bound: SocketAddr) -> String {
        format!(
            "http://{bound}/mcp (+ legacy /sse, /reviews/, live views at /view/); {}; origins: loopback{}",
            if self.tokens.is_empty() {
                "no token (loopback only)".to_string()
            } else {
                format!("{} bearer token(s)", self.tokens.len())
            },
            if self.allow_origins.is_empty() {
                String::new()
            } else {
                format!(" + {}", self.allow_origins.join(", "))
            }
        )
    }
}

/// Serves HTTP until `ct` is cancelled. `bound` is told the address (port 0 picks one).
async fn serve_http(
    server: DeskvmServer,
    o: HttpOptions,
    ct: CancellationToken,
    bound: impl FnOnce(SocketAddr, String),
) -> Result<()> {
    o.check()?;
    let listener = tokio::net::TcpListener::bind(o.addr)
        .await
        .with_context(|| format!("binding {}", o.addr))?;
    let addr = listener.local_addr()?;
    let server = server.with_review_base(format!("http://{addr}/reviews"));
    let mut config = StreamableHttpServerConfig::default()
        .with_allowed_origins(o.origins())
        .with_max_request_body_bytes(o.max_body_bytes)
        .with_cancellation_token(ct.child_token());
    config = match o.hosts() {
        Some(h) => config.with_allowed_hosts(h),
        None => config.disable_allowed_hosts(),
    };
    let mut sessions = LocalSessionManager::default();
    // A tool call may run silently for minutes (exec up to 300 s): keep the session longer.
    sessions.session_config.keep_alive = Some(Duration::from_secs(3600));
    let mcp_server = server.clone();
    let mcp =
        StreamableHttpService::new(move || Ok(mcp_server.clone()), Arc::new(sessions), config);
    let guard = Guard::new(o.tokens.clone(), o.origins(), o.hosts(), o.max_streams);
    let legacy = sse::Legacy::new(server.clone(), o.max_body_bytes, ct.clone());
    let reviews = reviews::Reviews {
        exports: server.exports_dir(),
    };
    let views = server.views();
    views.set_base(format!("http://{addr}"));
    let app = Router::new()
        .route_service("/mcp", mcp)
        .route("/sse", get(sse::stream).with_state(legacy.clone()))
        .route("/messages", post(sse::message).with_state(legacy))
        .route("/reviews/{*path}", get(reviews::file).with_state(reviews))
        .merge(view::routes(views))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            auth::middleware,
        ));
    bound(addr, o.describe(addr));
    let stopping = ct.clone();
    let served = axum::serve(listener, app).with_graceful_shutdown(ct.cancelled_owned());
    // Streams end on cancellation; a client that holds a request open gets 5 s, then the
    // server stops anyway (its sessions must be stopped either way).
    tokio::select! {
        r = served => r.context("serving HTTP"),
        _ = async { stopping.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => Ok(()),
    }
}

/// Headers of every page and file a browser gets from deskvm: never cached, never named in a
/// Referer, never sniffed.
fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
