//! The view's routes: `/view/<token>` (the page), `/view/<token>/ws` (the RFB WebSocket) and
//! `/view/assets/…` (deskvm's page script and the noVNC client). Mounted on the HTTP server
//! (behind its guard and tokens), or, when deskvm serves stdio, on a loopback listener of their
//! own ([`listen`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::{Denied, Views};
use crate::mcp::http::auth::{self, Guard, Principal, QueryToken, Tokens};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");

/// The view's routes over `views`.
pub fn routes(views: Arc<Views>) -> Router {
    Router::new()
        .route("/view/assets/deskvm-view.js", get(script))
        .route("/view/assets/novnc/{*path}", get(novnc))
        .route("/view/{token}", get(page))
        .route("/view/{token}/ws", get(socket))
        .with_state(views)
}

/// Serves the view alone on a loopback address (deskvm serving stdio), until `ct` is
/// cancelled; returns the address it got.
pub async fn listen(
    addr: SocketAddr,
    views: Arc<Views>,
    ct: CancellationToken,
) -> Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        bail!(
            "the live view listener serves only loopback addresses without a token ({addr} asked); \
             serve HTTP with tokens (deskvm serve --http ADDR --token-file F) to show desktops on a network"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the live view listener on {addr}"))?;
    let bound = listener.local_addr()?;
    let loopback: Vec<String> = crate::mcp::http::LOOPBACK_HOSTS.map(String::from).to_vec();
    let guard = Guard {
        tokens: Arc::new(Tokens::default()),
        origins: Arc::new(vec![format!("http://{bound}")]),
        hosts: Some(Arc::new(loopback)),
        max_streams: 64,
        in_flight: Arc::new(AtomicUsize::new(0)),
        mcp_sessions: Arc::default(),
    };
    views.set_base(format!("http://{bound}"));
    let app = routes(views).layer(axum::middleware::from_fn_with_state(
        guard,
        auth::middleware,
    ));
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(ct.cancelled_owned());
        if let Err(e) = served.await {
            tracing::error!(error = %e, "live view listener failed");
        }
    });
    Ok(bound)
}

fn principal(req: &Request) -> Option<String> {
    req.extensions().get::<Principal>().map(|p| p.0.clone())
}

fn forbidden(d: Denied) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>deskvm: no view</title>\
         <p>{d}. Ask the agent for a new one (session_view).</p>\n"
    );
    let mut r = (StatusCode::FORBIDDEN, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(r)
}

/// Headers of every page and file a browser gets from deskvm: never cached, never named in a
/// Referer, never sniffed.
pub(crate) fn no_store(mut r: Response) -> Response {
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

async fn page(
    State(views): State<Arc<Views>>,
    Path(token): Path<String>,
    req: Request,
) -> Response {
    if let Some(QueryToken(t)) = req.extensions().get::<QueryToken>() {
        return crate::mcp::http::reviews::token_to_cookie(req.uri().path(), t, "/view");
    }
    let (session, grant) = match views.check(&token, principal(&req).as_deref()) {
        Ok(g) => g,
        Err(d) => return forbidden(d),
    };
    let expires = humantime::format_rfc3339_seconds(grant.expires_at).to_string();
    let html = PAGE
        .replace("{{MODE}}", grant.mode())
        .replace("{{SESSION}}", session.id())
        .replace("{{EXPIRES}}", &expires);
    let mut r = html.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Scripts only from here (no inline code, no CDN); the WebSocket only to here.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'",
        ),
    );
    no_store(r)
}

async fn socket(
    State(views): State<Arc<Views>>,
    Path(token): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    req: Request,
) -> Response {
    // The link first: a wrong one gets 403 whatever else is wrong with the request.
    let (session, grant) = match views.check(&token, principal(&req).as_deref()) {
        Ok(g) => g,
        Err(d) => return forbidden(d),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let Some(viewer) = session.view().admit() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!("this session already has {} viewers\n", super::MAX_VIEWERS),
        )
            .into_response();
    };
    ws.protocols(["binary"])
        .max_message_size(1 << 20)
        .on_upgrade(move |ws| super::bridge::run(ws, session, grant, viewer))
}

async fn script() -> Response {
    let mut r = SCRIPT.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript"),
    );
    no_store(r)
}

async fn novnc(Path(rel): Path<String>) -> Response {
    let Some(dir) = super::novnc_dir() else {
        return (
            StatusCode::NOT_FOUND,
            "noVNC is not installed on the deskvm host (apt-get install novnc, or `deskvm setup`)\n",
        )
            .into_response();
    };
    let Some(file) = super::novnc_file(&dir, &rel) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let mut r = bytes.into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::mcp::resources::mime(&rel)),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            r
        }
        Err(_) => (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    }
}
