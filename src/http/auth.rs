//! Who may talk to the HTTP server: bearer tokens (named, compared in constant time), the
//! `Host` and `Origin` allow-lists that stop DNS rebinding, and a cap on concurrent requests and
//! streams. A browser, which cannot send a bearer header on navigation, presents the token once
//! as `?token=` and then as an HttpOnly cookie; both are parsed (and percent-decoded) by axum's
//! `Query` and the `cookie` crate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::tokens::Tokens;
use crate::mcp::Principal;

/// The cookie a browser keeps the token in, once it came as `?token=`.
const TOKEN_COOKIE: &str = "deskvm_token";

/// Set when the request's credential was a `?token=` query (a browser opening a review page).
#[derive(Debug, Clone)]
pub struct QueryToken(pub String);

/// Which token opened each streamable-HTTP session (`Mcp-Session-Id`): another token's requests
/// on it are refused as if it did not exist.
#[derive(Default)]
struct McpSessions(Mutex<HashMap<String, (Option<String>, Instant)>>);

/// Sessions rmcp has forgotten (expired after an hour without traffic) are dropped from the
/// table once they are this old.
const MCP_SESSION_RECORD: Duration = Duration::from_secs(2 * 3600);

/// What the middleware needs: tokens, allowed origins, and the stream cap. Made only by
/// [`Guard::new`]: the in-flight count and the session table start empty.
#[derive(Clone)]
pub struct Guard {
    tokens: Arc<Tokens>,
    /// Exact origins (`scheme://host[:port]`) or a host with any port (`scheme://host:*`).
    origins: Arc<Vec<String>>,
    /// Host names requests may name (DNS rebinding guard on every route); None: any.
    hosts: Option<Arc<Vec<String>>>,
    max_streams: usize,
    in_flight: Arc<AtomicUsize>,
    mcp_sessions: Arc<McpSessions>,
}

impl Guard {
    /// `hosts`: None accepts any `Host` (a server bound to every interface, where the token,
    /// required there, is the guard).
    pub fn new(
        tokens: Tokens,
        origins: Vec<String>,
        hosts: Option<Vec<String>>,
        max_streams: usize,
    ) -> Self {
        Guard {
            tokens: Arc::new(tokens),
            origins: Arc::new(origins),
            hosts: hosts.map(Arc::new),
            max_streams,
            in_flight: Arc::new(AtomicUsize::new(0)),
            mcp_sessions: Arc::default(),
        }
    }
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
fn presented(headers: &HeaderMap, uri: &Uri) -> Option<(String, bool)> {
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
    match cookie_token(headers) {
        Some(c) => Some((c, false)),
        None => query_token(uri).map(|q| (q, true)),
    }
}

/// The token cookie's value, percent-decoded, from any `Cookie` header.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse_encoded)
        .filter_map(Result::ok)
        .find(|c| c.name() == TOKEN_COOKIE)
        .map(|c| c.value().to_string())
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

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The `token` query parameter, percent-decoded; a query that does not parse has none.
fn query_token(uri: &Uri) -> Option<String> {
    Query::<TokenQuery>::try_from_uri(uri).ok()?.0.token
}

/// The bearer token came in the URL: keep it in an HttpOnly cookie scoped to `scope`, and send
/// the browser to the same page without it, so the secret does not stay in the address bar or
/// history.
pub fn token_to_cookie(path: &str, token: &str, scope: &str) -> Response {
    let cookie = Cookie::build((TOKEN_COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path(scope)
        .build();
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let (Ok(c), Ok(l)) = (
        HeaderValue::from_str(&cookie.encoded().to_string()),
        HeaderValue::from_str(path),
    ) {
        h.insert(header::SET_COOKIE, c);
        h.insert(header::LOCATION, l);
    }
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
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

/// Host and Origin, then the token, then the stream cap; the principal goes into the request's
/// extensions, where rmcp hands it to the tool handler with the rest of the request.
pub async fn middleware(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    if let Err(Refusal(status, why, www)) = check_names(&g, &req) {
        return refuse(status, why, www);
    }
    if let Err(Refusal(status, why, www)) = authenticate(&g, &mut req) {
        return refuse(status, why, www);
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

/// Why a request is turned away before any handler sees it: its status, the message, and the
/// `WWW-Authenticate` challenge when a token is what it lacks.
struct Refusal(StatusCode, &'static str, Option<&'static str>);

/// The DNS-rebinding guard: the `Host` a request names and the `Origin` a browser sends.
fn check_names(g: &Guard, req: &Request) -> Result<(), Refusal> {
    if let Some(hosts) = &g.hosts {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if !host.is_some_and(|h| host_allowed(hosts, h)) {
            let why = "Host not allowed (see --allow-host)";
            return Err(Refusal(StatusCode::FORBIDDEN, why, None));
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| {
            origin_allowed(&g.origins, o) || same_origin(req.headers(), req.uri().path(), o)
        });
        if !ok {
            let why = "Origin not allowed (see --allow-origin)";
            return Err(Refusal(StatusCode::FORBIDDEN, why, None));
        }
    }
    Ok(())
}

/// With tokens configured, a request must present one; its name becomes the [`Principal`].
fn authenticate(g: &Guard, req: &mut Request) -> Result<(), Refusal> {
    if g.tokens.is_empty() {
        return Ok(());
    }
    let Some((secret, from_query)) = presented(req.headers(), req.uri()) else {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer <token>)",
            Some("Bearer realm=\"deskvm\""),
        ));
    };
    let Some(name) = g.tokens.check(&secret) else {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "invalid token",
            Some("Bearer realm=\"deskvm\", error=\"invalid_token\""),
        ));
    };
    req.extensions_mut().insert(Principal(name));
    if from_query {
        req.extensions_mut().insert(QueryToken(secret));
    }
    Ok(())
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
    fn tokens_in_queries_and_cookies_are_percent_decoded() {
        let uri: Uri = "/reviews/a/index.html?x=1&token=ab%2Bcd%20ef"
            .parse()
            .unwrap();
        assert_eq!(query_token(&uri).as_deref(), Some("ab+cd ef"));
        let none: Uri = "/reviews/a/?tokens=x".parse().unwrap();
        assert_eq!(query_token(&none), None);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; deskvm_token=ab%3Bcd"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("ab;cd"));
        // What `token_to_cookie` sets is what the next request presents.
        let set = token_to_cookie("/view/x", "s3cret;= +", "/view");
        let set = set.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            set.contains("HttpOnly")
                && set.contains("SameSite=Strict")
                && set.contains("Path=/view")
        );
        let sent = set.split(';').next().unwrap().to_string();
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_str(&sent).unwrap());
        assert_eq!(cookie_token(&h).as_deref(), Some("s3cret;= +"));
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
