//! The live views' routes: `/view/<token>` (the page), `/view/<token>/ws` (the RFB WebSocket)
//! and `/view/assets/…` (deskvm's page script and the noVNC client). Mounted on the HTTP server
//! (behind its guard and tokens), or, when deskvm serves stdio, on a loopback listener of their
//! own ([`listen`]). The view room decides who may see a session (`Views::check`) and bridges
//! the socket; this file is the HTTP around it.

use std::net::SocketAddr;
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

use super::auth::{self, token_to_cookie, Guard, QueryToken};
use super::Tokens;
use super::{no_store, LOOPBACK_HOSTS};
use crate::mcp::Principal;
use crate::view::{bridge, novnc_dir, novnc_file, page, Denied, Views, MAX_VIEWERS};

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
    let loopback: Vec<String> = LOOPBACK_HOSTS.map(String::from).to_vec();
    let guard = Guard::new(
        Tokens::default(),
        vec![format!("http://{bound}")],
        Some(loopback),
        64,
    );
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

async fn page(
    State(views): State<Arc<Views>>,
    Path(token): Path<String>,
    req: Request,
) -> Response {
    if let Some(QueryToken(t)) = req.extensions().get::<QueryToken>() {
        return token_to_cookie(req.uri().path(), t, "/view");
    }
    let (session, grant) = match views.check(&token, principal(&req).as_deref()) {
        Ok(g) => g,
        Err(d) => return forbidden(d),
    };
    let mut r = page::html(&grant, session.id()).into_response();
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
            format!("this session already has {MAX_VIEWERS} viewers\n"),
        )
            .into_response();
    };
    ws.protocols(["binary"])
        .max_message_size(1 << 20)
        .on_upgrade(move |ws| bridge::run(ws, session, grant, viewer))
}

async fn script() -> Response {
    let mut r = page::SCRIPT.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript"),
    );
    no_store(r)
}

async fn novnc(Path(rel): Path<String>) -> Response {
    let Some(dir) = novnc_dir() else {
        return (
            StatusCode::NOT_FOUND,
            "noVNC is not installed on the deskvm host (apt-get install novnc, or `deskvm setup`)\n",
        )
            .into_response();
    };
    let Some(file) = novnc_file(&dir, &rel) else {
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
