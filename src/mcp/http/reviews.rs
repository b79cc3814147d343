//! Exported review bundles, read-only, at `/reviews/<name>/…`, behind the same token: a person
//! opens `index.html` of a remote server's review in a browser. A browser cannot send a bearer
//! header on navigation, so `?token=…` once sets an HttpOnly cookie scoped to `/reviews`.

use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::query_token;
use crate::mcp::resources;

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
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(resources::mime(&rel)),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    // The middleware already accepted this token; keep it for the page's pictures.
    if let Some(t) =
        query_token(req.uri()).filter(|t| t.bytes().all(|b| b.is_ascii_graphic() && b != b';'))
    {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "deskvm_token={t}; HttpOnly; SameSite=Strict; Path=/reviews"
        )) {
            h.insert(header::SET_COOKIE, v);
        }
    }
    resp
}
