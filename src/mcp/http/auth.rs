//! Who may talk to the HTTP server: bearer tokens (named, compared in constant time), the
//! `Origin` allow-list that stops DNS rebinding, and a cap on concurrent requests and streams.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

/// The name of the token a request came with: sessions belong to it.
#[derive(Debug, Clone)]
pub struct Principal(pub String);

/// Set when the request's credential was a `?token=` query (a browser opening a review page).
#[derive(Debug, Clone)]
pub struct QueryToken(pub String);

/// Which token opened each streamable-HTTP session (`Mcp-Session-Id`): another token's requests
/// on it are refused as if it did not exist.
#[derive(Default)]
pub struct McpSessions(Mutex<HashMap<String, (Option<String>, Instant)>>);

/// Sessions rmcp has forgotten (expired after an hour without traffic) are dropped from the
/// table once they are this old.
const MCP_SESSION_RECORD: Duration = Duration::from_secs(2 * 3600);

/// Configured tokens: names and the SHA-256 of each secret (the secrets are not kept).
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<(String, [u8; 32])>);

const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// `file`: one token per line, `name:secret` or just `secret` (named "default"); blank
    /// lines and `#` comments are skipped. `env`: one more secret, named "env".
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Self> {
        let mut tokens = Vec::new();
        if let Some(f) = file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, secret) = line.split_once(':').unwrap_or(("default", line));
                tokens.push((name.trim().to_string(), secret.trim().to_string(), n + 1));
            }
        }
        if let Some(secret) = env.filter(|s| !s.is_empty()) {
            tokens.push(("env".into(), secret.to_string(), 0));
        }
        let mut out = Vec::new();
        for (name, secret, line) in tokens {
            if secret.len() < MIN_TOKEN_LEN {
                bail!("token {name:?} (line {line}) is shorter than {MIN_TOKEN_LEN} characters; use e.g. `openssl rand -hex 32`");
            }
            if out.iter().any(|(n, _)| n == &name) {
                bail!("token name {name:?} appears twice in the token file");
            }
            out.push((name, Sha256::digest(secret.as_bytes()).into()));
        }
        Ok(Tokens(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The name of the token `secret` is, comparing against every token in constant time
    /// (digests of equal length, no early exit).
    pub fn check(&self, secret: &str) -> Option<String> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for (name, digest) in &self.0 {
            let diff = digest
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// What the middleware needs: tokens, allowed origins, and the stream cap.
#[derive(Clone)]
pub struct Guard {
    pub tokens: Arc<Tokens>,
    /// Exact origins (`scheme://host[:port]`) or a host with any port (`scheme://host:*`).
    pub origins: Arc<Vec<String>>,
    /// Host names requests may name (DNS rebinding guard on every route); None: any.
    pub hosts: Option<Arc<Vec<String>>>,
    pub max_streams: usize,
    pub in_flight: Arc<AtomicUsize>,
    pub mcp_sessions: Arc<McpSessions>,
}

/// Whether a `Host` header names an allowed host (any port; IPv6 in brackets).
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix(":*") {
        Some(prefix) => {
            origin == prefix
                || origin
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|port| {
                        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                    })
        }
        None => a == origin,
    })
}

/// The secret a request presents, and whether it came as a `?token=` query: an
/// `Authorization: Bearer` header, or for review pages (which a browser opens) the
/// `deskvm_token` cookie or a `token` query parameter.
fn presented(headers: &HeaderMap, uri: &axum::http::Uri) -> Option<(String, bool)> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v
            .strip_prefix("Bearer ")
            .map(|s| (s.trim().to_string(), false));
    }
    if !browser_path(uri.path()) {
        return None;
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("deskvm_token=").map(str::to_string));
    match cookie {
        Some(c) => Some((c, false)),
        None => query_token(uri).map(|q| (q, true)),
    }
}

/// Pages a person's browser opens (it cannot send a bearer header on navigation): exported
/// reviews and live views.
fn browser_path(path: &str) -> bool {
    path.starts_with("/reviews/") || path.starts_with("/view/")
}

/// A live view's page opening its own WebSocket: the request's `Origin` is the server it was
/// sent to. (The `Host` allow-list vets that name; where there is none, on a server bound to
/// every interface, the bearer token is required, and a rebinding page has no cookie of it.)
fn same_origin(headers: &HeaderMap, path: &str, origin: &str) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    path.starts_with("/view/")
        && (origin == format!("http://{host}") || origin == format!("https://{host}"))
}

pub fn query_token(uri: &axum::http::Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
}

fn refuse(status: StatusCode, why: &str, www: Option<&str>) -> Response {
    let mut r = (status, format!("{why}\n")).into_response();
    if let Some(w) = www {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_str(w).unwrap_or(HeaderValue::from_static("Bearer")),
        );
    }
    r
}

/// Origin, then the stream cap, then the token; the principal goes into the request's
/// extensions, where rmcp hands it to the tool handler with the rest of the request.
pub async fn middleware(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    if let Some(hosts) = &g.hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if !host.is_some_and(|h| host_allowed(hosts, h)) {
            return refuse(
                StatusCode::FORBIDDEN,
                "Host not allowed (see --allow-host)",
                None,
            );
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| {
            origin_allowed(&g.origins, o) || same_origin(req.headers(), req.uri().path(), o)
        });
        if !ok {
            return refuse(
                StatusCode::FORBIDDEN,
                "Origin not allowed (see --allow-origin)",
                None,
            );
        }
    }
    if !g.tokens.is_empty() {
        match presented(req.headers(), req.uri()) {
            None => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "a bearer token is required (Authorization: Bearer <token>)",
                    Some("Bearer realm=\"deskvm\""),
                )
            }
            Some((secret, from_query)) => match g.tokens.check(&secret) {
                Some(name) => {
                    req.extensions_mut().insert(Principal(name));
                    if from_query {
                        req.extensions_mut().insert(QueryToken(secret));
                    }
                }
                None => {
                    return refuse(
                        StatusCode::UNAUTHORIZED,
                        "invalid token",
                        Some("Bearer realm=\"deskvm\", error=\"invalid_token\""),
                    )
                }
            },
        }
    }
    // Counted until the response body ends: an SSE stream holds its place while it is open.
    let now = g.in_flight.fetch_add(1, Ordering::SeqCst);
    let slot = Slot(g.in_flight.clone());
    if now >= g.max_streams {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent requests and streams (see --max-streams)",
            None,
        );
    }
    let principal = req.extensions().get::<Principal>().map(|p| p.0.clone());
    let session = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(id) = &session {
        let table = g.mcp_sessions.0.lock().expect("session table poisoned");
        if table.get(id).is_some_and(|(owner, _)| owner != &principal) {
            return refuse(StatusCode::NOT_FOUND, "unknown session", None);
        }
    }
    let delete = req.method() == axum::http::Method::DELETE;
    let response = next.run(req).await;
    {
        let mut table = g.mcp_sessions.0.lock().expect("session table poisoned");
        match (&session, response.headers().get("mcp-session-id")) {
            (Some(id), _) if delete && response.status().is_success() => {
                table.remove(id);
            }
            (None, Some(new)) => {
                if let Ok(new) = new.to_str() {
                    table.retain(|_, (_, at)| at.elapsed() < MCP_SESSION_RECORD);
                    table.insert(new.to_string(), (principal, Instant::now()));
                }
            }
            _ => {}
        }
    }
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |f| {
        let _held = &slot;
        f
    });
    Response::from_parts(parts, axum::body::Body::new(body))
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_digest_and_are_named() {
        let dir = std::env::temp_dir().join(format!("deskvm-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(
            &f,
            "# team\nalice: aaaaaaaaaaaaaaaaaaaa\nbob:bbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        let t = Tokens::load(Some(&f), Some("cccccccccccccccccccc")).unwrap();
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaaa").as_deref(), Some("alice"));
        assert_eq!(t.check("cccccccccccccccccccc").as_deref(), Some("env"));
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaab"), None);
        std::fs::write(&f, "short").unwrap();
        assert!(Tokens::load(Some(&f), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn origins_match_exactly_or_by_any_port() {
        let allowed = vec![
            "http://localhost:*".to_string(),
            "https://app.example".to_string(),
        ];
        assert!(origin_allowed(&allowed, "http://localhost:3000"));
        assert!(origin_allowed(&allowed, "http://localhost"));
        assert!(origin_allowed(&allowed, "https://app.example"));
        assert!(!origin_allowed(&allowed, "http://localhost.evil.com"));
        assert!(!origin_allowed(&allowed, "http://localhost:3000.evil.com"));
        assert!(!origin_allowed(&allowed, "https://evil.example"));
    }
}
