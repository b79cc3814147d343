//! Exported review bundles, read-only, at `/reviews/<name>/…`, behind the same token: a person
//! opens `index.html` of a remote server's review in a browser. A browser cannot send a bearer
//! header on navigation, so `?token=…` once sets an HttpOnly cookie scoped to `/reviews`.

use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::{token_to_cookie, QueryToken};
use crate::mcp::{resources, Principal};
use crate::session::Caller;

#[derive(Clone)]
pub struct Reviews {
    pub exports: PathBuf,
}

pub async fn file(State(r): State<Reviews>, req: Request) -> Response {
    let rel = req.uri().path().trim_start_matches("/reviews/").to_string();
    let rel = if rel.ends_with('/') || !rel.contains('/') {
        format!("{}/index.html", rel.trim_end_matches('/'))
    } else {
        rel
    };
    let uri = format!("{}{rel}", resources::SCHEME);
    let Ok(path) = resources::resolve(&r.exports, &uri) else {
        return (StatusCode::NOT_FOUND, "no such review file\n").into_response();
    };
    // A review of a session another token started is not there for this one.
    let principal = req.extensions().get::<Principal>().map(|p| p.0.clone());
    let name = rel.split('/').next().unwrap_or_default();
    if !Caller::new(principal, "http").sees_bundle(&r.exports, name) {
        return (StatusCode::NOT_FOUND, "no such review file\n").into_response();
    }
    // The token came in the URL: keep it in a cookie, and send the browser to the same page
    // without it, so the secret does not stay in the address bar or history.
    if let Some(QueryToken(t)) = req.extensions().get::<QueryToken>() {
        return token_to_cookie(req.uri().path(), t, "/reviews");
    }
    let exports = r.exports.clone();
    let read = tokio::task::spawn_blocking(move || {
        // Never follow a link out of the exports dir.
        let real = path.canonicalize()?;
        if !real.starts_with(exports.canonicalize()?) {
            return Err(std::io::Error::other("outside the exports dir"));
        }
        std::fs::read(real)
    })
    .await;
    let Ok(Ok(bytes)) = read else {
        return (StatusCode::NOT_FOUND, "no such review file\n").into_response();
    };
    let mut resp = bytes.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(resources::mime(&rel)),
    );
    super::no_store(resp)
}
