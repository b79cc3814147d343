//! The proxy driven as a guest program would: the client side through `tokio::io::duplex`
//! (or a real unix socket), targets as real TCP servers on 127.0.0.1.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinHandle;

use super::*;
use crate::egress::pipe::testing::{collector, decisions, scratch_dir};
use crate::egress::tls::build::client_hello;
use crate::egress::Decision;

/// `allowed.test` and `denied.test` map to 127.0.0.1, as `--resolve` does in the e2e tests.
fn config(entries: &[&str]) -> ProxyConfig {
    let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    let resolve = [("allowed.test", "127.0.0.1"), ("denied.test", "127.0.0.1")]
        .into_iter()
        .map(|(name, ip)| (name.to_string(), ip.parse().unwrap()))
        .collect();
    ProxyConfig {
        policy: Policy::parse(&entries).unwrap(),
        resolve,
        connect_timeout: Duration::from_secs(2),
    }
}

async fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A target that answers one request with `hi` and returns the head it was sent.
async fn http_target() -> (u16, JoinHandle<String>) {
    let (l, port) = listener().await;
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&b[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
        String::from_utf8(head).unwrap()
    });
    (port, task)
}

/// A target that echoes one connection until its client half-closes; returns what it got.
async fn echo_target() -> (u16, JoinHandle<Vec<u8>>) {
    let (l, port) = listener().await;
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1024];
        loop {
            let n = s.read(&mut b).await.unwrap();
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&b[..n]);
            s.write_all(&b[..n]).await.unwrap();
        }
    });
    (port, task)
}

async fn no_connection(l: &TcpListener) {
    let accepted = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
    assert!(accepted.is_err(), "the target saw a connection");
}

/// One connection: `drive` plays the client; returns what it returned and the one decision.
async fn run<F, Fut, T>(cfg: &ProxyConfig, drive: F) -> (T, Decision)
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (sink, seen) = collector();
    let (client, server) = tokio::io::duplex(1 << 16);
    let ((), out) = tokio::join!(handle(server, cfg, &sink), drive(client));
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one decision per connection: {got:?}");
    (out, got[0].clone())
}

/// Sends `request` and reads everything back.
async fn ask(cfg: &ProxyConfig, request: String) -> (String, Decision) {
    run(cfg, |mut c| async move {
        c.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// Opens a tunnel to `authority` and expects the 200.
async fn open_tunnel(c: &mut DuplexStream, authority: &str) {
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let mut reply = vec![0u8; ESTABLISHED.len()];
    c.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, ESTABLISHED);
}

#[tokio::test]
async fn an_allowed_get_reaches_the_target_and_comes_back() {
    let (port, target) = http_target().await;
    let entry = format!("allowed.test:{port}");
    let cfg = config(&[entry.as_str()]);
    let req = format!(
        "GET http://allowed.test:{port}/hello?x=1 HTTP/1.1\r\nHost: allowed.test:{port}\r\n\
         Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n\
         Connection: keep-alive\r\nAccept: */*\r\n\r\n"
    );
    let (out, d) = ask(&cfg, req).await;
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
    let got = target.await.unwrap();
    assert!(got.starts_with("GET /hello?x=1 HTTP/1.1\r\n"), "{got}");
    assert!(got.contains("\r\nAccept: */*\r\n"), "{got}");
    assert!(got.ends_with("\r\nConnection: close\r\n\r\n"), "{got}");
    let lower = got.to_ascii_lowercase();
    assert!(
        !lower.contains("proxy-") && !lower.contains("keep-alive"),
        "{got}"
    );
    assert_eq!(
        (d.decision, d.via, d.host.as_str(), d.port),
        ("allowed", "http", "allowed.test", port)
    );
    assert_eq!(d.reason, None);
    assert_eq!(d.bytes_up, got.len() as u64);
    assert_eq!(d.bytes_down, out.len() as u64);
}

#[tokio::test]
async fn a_name_from_the_resolve_map_may_be_loopback() {
    let (port, target) = http_target().await;
    let cfg = config(&["allowed.test:*"]);
    let req =
        format!("GET http://Allowed.Test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n");
    let (out, d) = ask(&cfg, req).await;
    assert!(out.ends_with("hi"), "{out}");
    assert!(target
        .await
        .unwrap()
        .starts_with("GET / HTTP/1.1\r\nHost: allowed.test:"));
    assert_eq!((d.decision, d.host.as_str()), ("allowed", "allowed.test"));
}

#[tokio::test]
async fn denied_targets_get_403_and_no_connection() {
    let (l, port) = listener().await;
    let cfg = config(&["allowed.test:*", "example.com"]);
    for host in ["127.0.0.1", "denied.test"] {
        let req = format!("GET http://{host}:{port}/ HTTP/1.1\r\n\r\n");
        let (out, d) = ask(&cfg, req).await;
        assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out}");
        // An address of the host itself is refused whatever the list says.
        let why = if host == "127.0.0.1" {
            "host's own"
        } else {
            "no rule allows"
        };
        assert!(out.contains(why), "{out}");
        assert!(
            out.contains("allowed: allowed.test:*, example.com"),
            "{out}"
        );
        assert_eq!(
            (d.decision, d.via, d.host.as_str(), d.port),
            ("denied", "http", host, port)
        );
        assert!(d.reason.unwrap().contains(why));
    }
    no_connection(&l).await;
}

#[tokio::test]
async fn a_host_header_naming_another_target_is_denied() {
    let (l, port) = listener().await;
    let cfg = config(&["allowed.test:*"]);
    let req =
        format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: denied.test:{port}\r\n\r\n");
    let (out, d) = ask(&cfg, req).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(d.decision, "denied");
    assert_eq!(
        d.reason.as_deref(),
        Some("Host header does not match the request target")
    );
    no_connection(&l).await;
}

#[tokio::test]
async fn a_tunnel_of_plain_bytes_is_closed_unconnected() {
    let (l, port) = listener().await;
    let cfg = config(&["allowed.test:*"]);
    let (rest, d) = run(&cfg, |mut c| async move {
        open_tunnel(&mut c, &format!("allowed.test:{port}")).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        rest
    })
    .await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!((d.decision, d.via), ("denied", "connect"));
    assert!(d.reason.unwrap().contains("only TLS"));
    no_connection(&l).await;
}

#[tokio::test]
async fn a_tunnel_carries_tls_for_its_own_name() {
    let (port, target) = echo_target().await;
    let cfg = config(&["allowed.test:*"]);
    let hello = client_hello(Some("ALLOWED.test"));
    let sent = hello.clone();
    let (_, d) = run(&cfg, |mut c| async move {
        open_tunnel(&mut c, &format!("allowed.test:{port}")).await;
        c.write_all(&sent).await.unwrap();
        let mut back = vec![0u8; sent.len()];
        c.read_exact(&mut back).await.unwrap();
        c.shutdown().await.unwrap();
    })
    .await;
    assert_eq!(target.await.unwrap(), hello);
    assert_eq!(d.decision, "allowed");
    assert_eq!(d.sni.as_deref(), Some("allowed.test"));
    assert_eq!(d.bytes_up, hello.len() as u64);
}

#[tokio::test]
async fn a_tunnel_asking_tls_for_another_name_is_closed_unconnected() {
    let (l, port) = listener().await;
    let cfg = config(&["allowed.test:*", "other.test:*"]);
    for (sni, reason) in [
        ("denied.test", "sni denied.test not allowed"),
        ("other.test", "sni does not match"),
    ] {
        let hello = client_hello(Some(sni));
        let (out, d) = run(&cfg, |mut c| async move {
            open_tunnel(&mut c, &format!("allowed.test:{port}")).await;
            c.write_all(&hello).await.unwrap();
            let mut out = Vec::new();
            c.read_to_end(&mut out).await.unwrap();
            out
        })
        .await;
        assert!(out.is_empty(), "the tunnel is closed without a word");
        assert_eq!(d.decision, "denied");
        assert_eq!(d.sni.as_deref(), Some(sni));
        let why = d.reason.unwrap();
        assert!(why.starts_with(reason), "{why}");
    }
    no_connection(&l).await;
}

#[tokio::test]
async fn a_denied_tunnel_gets_403_and_no_connection() {
    let (l, port) = listener().await;
    let cfg = config(&["allowed.test:443"]);
    let req = format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n");
    let (out, d) = ask(&cfg, req).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!((d.decision, d.via), ("denied", "connect"));
    no_connection(&l).await;
}

#[tokio::test]
async fn names_that_dns_points_at_loopback_are_refused() {
    // `localhost` resolves through the system's resolver (/etc/hosts) to loopback, as any
    // name could: allowing the name does not open the host's own services.
    let (l, port) = listener().await;
    let cfg = config(&["localhost:*"]);
    let (out, d) = ask(
        &cfg,
        format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(d.decision, "denied");
    let why = d.reason.unwrap();
    assert!(
        why.contains("resolves to a loopback/link-local address"),
        "{why}"
    );
    no_connection(&l).await;
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let cfg = config(&["allowed.test:*"]);
    for req in [
        "BLAH\r\n\r\n",
        "GET /x HTTP/1.1\r\n\r\n",
        "GET https://allowed.test/ HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    ] {
        let (out, d) = ask(&cfg, req.to_string()).await;
        assert!(
            out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{req:?}: {out}"
        );
        assert_eq!((d.decision, d.host.as_str()), ("denied", ""));
        assert!(d.reason.is_some());
    }
}

#[tokio::test]
async fn a_long_head_gets_431() {
    let cfg = config(&["allowed.test:*"]);
    let req = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(17 * 1024));
    let (out, d) = ask(&cfg, req).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(d.decision, "denied");
    assert!(d.reason.unwrap().contains("16 KiB"));
}

#[tokio::test]
async fn an_allowed_target_that_is_down_gets_502() {
    let (l, port) = listener().await;
    drop(l);
    let cfg = config(&["allowed.test:*"]);
    let (out, d) = ask(
        &cfg,
        format!("GET http://allowed.test:{port}/ HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(d.decision, "allowed");
    assert!(d.reason.unwrap().starts_with("connect failed: "));
}

#[tokio::test]
async fn serves_unix_connections_one_decision_each() {
    let (port, target) = http_target().await;
    let dir = scratch_dir("proxy");
    let path = dir.join("proxy.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (sink, seen) = collector();
    let task = tokio::spawn(serve(listener, Arc::new(config(&["allowed.test:*"])), sink));
    let requests = [
        format!("GET http://allowed.test:{port}/ HTTP/1.1\r\n\r\n"),
        format!("GET http://denied.test:{port}/ HTTP/1.1\r\n\r\n"),
    ];
    let mut replies = Vec::new();
    for req in requests {
        let mut c = UnixStream::connect(&path).await.unwrap();
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        replies.push(out);
    }
    assert!(replies[0].ends_with("hi") && replies[1].starts_with("HTTP/1.1 403"));
    target.await.unwrap();
    let got = decisions(&seen, 2).await;
    let mut hosts: Vec<(&str, &str)> = got.iter().map(|d| (d.decision, d.host.as_str())).collect();
    hosts.sort();
    assert_eq!(
        hosts,
        vec![("allowed", "allowed.test"), ("denied", "denied.test")]
    );
    task.abort();
    let _ = std::fs::remove_dir_all(dir);
}
