//! The HTTP forward proxy at `proxy.deskvm.internal:3128` in mode `allow`. QEMU hands each
//! guest TCP connection to it as a unix-socket connection; it reads one request head and either
//! relays one plain HTTP request (sent on with `Connection: close`, so every request on the
//! wire passed the policy) or opens one `CONNECT` tunnel.
//!
//! The policy is checked before any connection to the target is made, so a denied target never
//! sees the guest at all. A tunnel's first bytes are read before it is joined: a TLS ClientHello
//! must ask for the tunnel's own name (and an allowed one), or the tunnel is closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;

use super::gate::{self, Verdict};
use super::head::{self, Bad, Dest, Head, ReadError, Target};
use super::pipe::{self, Record, Until};
use super::policy::{normalize_name, Policy};
use super::tls::{self, Hello};
use super::Sink;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub policy: Policy,
    /// The operator's name map (deskvm serve --resolve NAME=IP), consulted before DNS.
    pub resolve: HashMap<String, IpAddr>,
    pub connect_timeout: Duration,
}

/// A client that sends no complete head in this long is let go: a guest that opens
/// connections and says nothing does not keep tasks here.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tunnel's first bytes are waited for. A client that stays silent may speak a
/// protocol where the server talks first (SSH, SMTP): it is let through without a check.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";
/// The most of the allowlist a 403 lists.
const LIST_CHARS: usize = 1024;

/// Accepts connections until the listener is dropped with the task (the caller aborts the
/// task). Open connections end with it, each recording its decision.
pub async fn serve(listener: UnixListener, cfg: Arc<ProxyConfig>, sink: Sink) {
    pipe::accept_loop(listener, move |stream| {
        let (cfg, sink) = (cfg.clone(), sink.clone());
        async move { handle(stream, &cfg, &sink).await }
    })
    .await
}

/// One client connection (generic so unit tests drive it with `tokio::io::duplex`). Hands
/// exactly one decision to `sink`, when the connection ends.
pub async fn handle<S>(client: S, cfg: &ProxyConfig, sink: &Sink)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut client = client;
    let mut rec = Record::new(sink.clone(), "http");
    let (raw, rest) = match tokio::time::timeout(HEAD_TIMEOUT, head::read_head(&mut client)).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return head_failed(&mut client, &mut rec, e).await,
        Err(_) => {
            rec.deny(format!(
                "no request head within {} s",
                HEAD_TIMEOUT.as_secs()
            ));
            return respond(&mut client, "408 Request Timeout", "no request head\n").await;
        }
    };
    rec.start();
    let req = match head::parse(&raw) {
        Ok(req) => req,
        Err(why) => return malformed(&mut client, &mut rec, why).await,
    };
    if req.method == "CONNECT" {
        rec.d.via = "connect";
    }
    match head::target(&req) {
        Ok(Target::Tunnel(dest)) => tunnel(&mut client, cfg, &mut rec, dest, rest).await,
        Ok(Target::Plain(dest, path)) => {
            plain(&mut client, cfg, &mut rec, &req, dest, &path, rest).await
        }
        Err(Bad::Malformed(why)) => malformed(&mut client, &mut rec, why).await,
        Err(Bad::Mismatch(dest)) => {
            rec.target(&dest.host, dest.port);
            let why = "Host header does not match the request target".to_string();
            refuse(&mut client, cfg, &mut rec, why).await
        }
    }
}

/// A `CONNECT`: the policy, `200`, the first bytes (a ClientHello's name checked), then the
/// target, joined both ways.
async fn tunnel<S>(client: &mut S, cfg: &ProxyConfig, rec: &mut Record, dest: Dest, first: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    rec.target(&dest.host, dest.port);
    let Some(addrs) = authorized(client, cfg, rec, &dest).await else {
        return;
    };
    if client.write_all(ESTABLISHED).await.is_err() {
        return rec.note("the client went away");
    }
    let mut first = first;
    match first_bytes(client, &mut first).await {
        First::Tls(Some(sni)) => {
            let verdict = check_sni(cfg, &dest, &sni).await;
            rec.d.sni = Some(normalize_name(&sni).unwrap_or(sni));
            if let Err(why) = verdict {
                return rec.deny(why);
            }
        }
        // No name to check: the tunnel still goes only to the allowed target.
        First::Tls(None) => {}
        // Plain bytes (a Host header of their own) or a silent client (a protocol whose
        // server speaks first) would pass with no name checked: only TLS goes through.
        First::Other => {
            return rec.deny("only TLS passes through CONNECT (send plain HTTP as a proxy request)")
        }
        First::Closed => return rec.note("the client closed the tunnel before sending anything"),
        First::Bad(why) => return rec.deny(why),
    }
    let mut target = match gate::connect(&addrs, cfg.connect_timeout).await {
        Ok(t) => t,
        Err(e) => return rec.note(format!("connect failed: {e}")),
    };
    if let Err(e) = target.write_all(&first).await {
        return rec.note(format!("the target closed: {e}"));
    }
    rec.d.bytes_up += first.len() as u64;
    let d = &mut rec.d;
    pipe::join(
        client,
        &mut target,
        Until::BothClose,
        &mut d.bytes_up,
        &mut d.bytes_down,
    )
    .await;
}

/// A plain request: the policy, then the target gets the rewritten head, the body bytes
/// already read, and the rest until it closes.
async fn plain<S>(
    client: &mut S,
    cfg: &ProxyConfig,
    rec: &mut Record,
    req: &Head,
    dest: Dest,
    path: &str,
    body: Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    rec.target(&dest.host, dest.port);
    let body_len = match body_length(req) {
        Ok(n) => n,
        Err(why) => {
            rec.deny(why.clone());
            return respond(client, "411 Length Required", &format!("{why}\n")).await;
        }
    };
    let Some(addrs) = authorized(client, cfg, rec, &dest).await else {
        return;
    };
    // Only this request's body goes on: bytes after it would be a second request, unchecked.
    let mut body = body;
    body.truncate(usize::try_from(body_len).unwrap_or(usize::MAX));
    let rest = body_len - body.len() as u64;
    let mut target = match gate::connect(&addrs, cfg.connect_timeout).await {
        Ok(t) => t,
        Err(e) => return bad_gateway(client, rec, format!("connect failed: {e}")).await,
    };
    let mut out = head::origin_head(req, &dest, path);
    out.extend_from_slice(&body);
    if let Err(e) = target.write_all(&out).await {
        return rec.note(format!("the target closed: {e}"));
    }
    rec.d.bytes_up += out.len() as u64;
    let d = &mut rec.d;
    pipe::join(
        client,
        &mut target,
        Until::TargetCloses { body: rest },
        &mut d.bytes_up,
        &mut d.bytes_down,
    )
    .await;
}

/// The policy's answer for `dest`: the addresses to connect to, recorded as allowed; or the
/// refusal (403) or the failed lookup of an allowed name (502) already answered and recorded.
async fn authorized<S>(
    client: &mut S,
    cfg: &ProxyConfig,
    rec: &mut Record,
    dest: &Dest,
) -> Option<Vec<std::net::SocketAddr>>
where
    S: AsyncWrite + Unpin,
{
    match gate::authorize(cfg, dest).await {
        Verdict::Allow(addrs) => {
            rec.allow();
            Some(addrs)
        }
        Verdict::Deny(why) => {
            refuse(client, cfg, rec, why).await;
            None
        }
        Verdict::Unresolved(why) => {
            rec.allow();
            bad_gateway(client, rec, format!("connect failed: {why}")).await;
            None
        }
    }
}

/// The length of a plain request's body: its one `Content-Length`, or none. A chunked body
/// is refused: where it ends is what a second, unchecked request would hide behind.
fn body_length(req: &Head) -> Result<u64, String> {
    if !req.values("Transfer-Encoding").is_empty() {
        return Err(
            "chunked request bodies do not pass deskvm's proxy; send Content-Length".into(),
        );
    }
    let lengths = req.values("Content-Length");
    match lengths.as_slice() {
        [] => Ok(0),
        [one] => one
            .trim()
            .parse()
            .map_err(|_| format!("Content-Length {one:?} is not a number")),
        _ => Err("more than one Content-Length".into()),
    }
}

/// What a tunnel's client sent first.
enum First {
    Tls(Option<String>),
    Other,
    Closed,
    Bad(String),
}

/// Reads (into `buf`, which may already hold some) until the bytes are a whole ClientHello or
/// clearly not TLS, for at most [`HELLO_TIMEOUT`] and [`tls::MAX_HELLO`] bytes.
async fn first_bytes<S: AsyncRead + Unpin>(client: &mut S, buf: &mut Vec<u8>) -> First {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut chunk = [0u8; 4096];
    loop {
        match tls::client_hello_sni(buf) {
            Hello::NotTls => return First::Other,
            Hello::Sni(name) => return First::Tls(name),
            Hello::Malformed(why) => return First::Bad(why.into()),
            Hello::Partial if buf.len() >= tls::MAX_HELLO => {
                return First::Bad("TLS ClientHello over 16 KiB".into())
            }
            Hello::Partial => {}
        }
        match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) if buf.is_empty() => return First::Closed,
            Ok(_) => return First::Bad("the client closed inside its TLS ClientHello".into()),
            Err(_) if buf.is_empty() => return First::Other,
            Err(_) => return First::Bad("incomplete TLS ClientHello after 10 s".into()),
        }
    }
}

/// The name a tunnel's TLS asks for. For a tunnel to a name it must be that name, or the
/// tunnel would carry a request for another site through an allowed front end; for a tunnel
/// to an address it must be allowed on its own.
async fn check_sni(cfg: &ProxyConfig, dest: &Dest, sni: &str) -> Result<(), String> {
    let Some(name) = normalize_name(sni) else {
        return Err(format!("sni {sni:?} not allowed: not a host name"));
    };
    if dest.host.parse::<IpAddr>().is_err() {
        if name == dest.host {
            return Ok(());
        }
        return Err(if cfg.policy.allows_name(&name, dest.port) {
            format!(
                "sni does not match the CONNECT host ({name} in a tunnel to {})",
                dest.host
            )
        } else {
            format!("sni {name} not allowed")
        });
    }
    let named = Dest {
        host: name.clone(),
        port: dest.port,
    };
    match gate::authorize(cfg, &named).await {
        Verdict::Allow(_) => Ok(()),
        _ => Err(format!("sni {name} not allowed")),
    }
}

async fn head_failed<S>(client: &mut S, rec: &mut Record, e: ReadError)
where
    S: AsyncWrite + Unpin,
{
    match e {
        ReadError::TooLong => {
            rec.deny(format!("request head over {} KiB", head::MAX_HEAD / 1024));
            let status = "431 Request Header Fields Too Large";
            respond(client, status, "request head too long\n").await;
        }
        ReadError::Closed => rec.deny("the client closed before a complete request head"),
        ReadError::Io(e) => rec.deny(format!("reading the request head failed: {e}")),
    }
}

async fn malformed<S: AsyncWrite + Unpin>(client: &mut S, rec: &mut Record, why: &str) {
    rec.deny(why);
    respond(client, "400 Bad Request", &format!("{why}\n")).await;
}

/// 403, naming the target, the reason and the allowlist (its start, if long).
async fn refuse<S>(client: &mut S, cfg: &ProxyConfig, rec: &mut Record, why: String)
where
    S: AsyncWrite + Unpin,
{
    let mut list = String::new();
    let entries = cfg.policy.entries();
    for (i, e) in entries.iter().enumerate() {
        if list.len() + e.len() > LIST_CHARS {
            list.push_str(&format!("... and {} more", entries.len() - i));
            break;
        }
        if i > 0 {
            list.push_str(", ");
        }
        list.push_str(e);
    }
    if entries.is_empty() {
        list.push_str("nothing");
    }
    let target = Dest {
        host: rec.d.host.clone(),
        port: rec.d.port,
    };
    let body = format!("deskvm egress: {target} denied: {why}\nallowed: {list}\n");
    rec.deny(why);
    respond(client, "403 Forbidden", &body).await;
}

/// 502: the policy allowed the target; the network did not reach it.
async fn bad_gateway<S: AsyncWrite + Unpin>(client: &mut S, rec: &mut Record, why: String) {
    let body = format!("deskvm egress: {why}\n");
    rec.note(why);
    respond(client, "502 Bad Gateway", &body).await;
}

/// A short response, then the end of the connection; errors mean the client is gone already.
async fn respond<S: AsyncWrite + Unpin>(client: &mut S, status: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(msg.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
