//! Host services for the network tests (HTTP on 127.0.0.1 only, each counting the connections
//! it accepted), guest commands with their exit status, ledger polling, and file transfers
//! (`upload` / `download`) checked byte for byte.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use deskvm::client::Client;
use rmcp::model::ResourceContents;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::Server;

/// A small HTTP server on 127.0.0.1 (port chosen by the system) serving one page titled
/// `title` with `Connection: close`, counting every TCP connection it accepted. Stopped when
/// dropped.
pub struct HostService {
    pub port: u16,
    pub title: String,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HostService {
    pub fn start(title: &str) -> Result<HostService> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding a test service on 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1></body></html>\n"
        );
        let (count, stopped) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let page = page.clone();
                std::thread::spawn(move || serve_one(stream, &page));
            }
        });
        Ok(HostService {
            port,
            title: title.to_string(),
            accepted,
            stop,
        })
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for HostService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag and ends (this one is not counted).
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads the request head (whatever it is) and answers with the page, then closes.
fn serve_one(mut stream: TcpStream, page: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{page}",
        page.len()
    );
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

/// A marker no other test (or earlier run) serves.
pub fn marker(what: &str) -> String {
    format!("deskvm-{what}-{:08x}", rand::random::<u32>())
}

/// The review dir (ledger) of a session of this server.
pub fn review(s: &Server, sid: &str) -> PathBuf {
    s.data.join("reviews").join(sid)
}

/// The ledger's events as far as they are written (a line being appended is skipped).
pub fn ledger(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("timeline.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (20 s at most) for an event matching `pred` in the ledger of `dir`: a network event
/// is written once its connection is over, a moment after the guest's command returned.
pub async fn wait_for_event(
    dir: &Path,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ev = ledger(dir);
        if let Some(e) = ev.iter().find(|e| pred(e)) {
            return Ok(e.clone());
        }
        if Instant::now() >= deadline {
            let net: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "network").collect();
            bail!(
                "no {what} in the ledger {} after 20 s; its network events: {net:?}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `exec` of a shell command (90 s at most: a DNS lookup that gets no answer takes a while);
/// the whole outcome (stdout, stderr, exit_code).
pub async fn sh(c: &Client, sid: &str, command: &str) -> Result<Value> {
    c.call_ok(
        "exec",
        json!({ "session_id": sid, "command": command, "timeout_ms": 90000 }),
    )
    .await
}

/// The number after the last `rc=` in a command's output (`...; echo rc=$?`).
pub fn rc_of(stdout: &str) -> Option<i64> {
    let tail = &stdout[stdout.rfind("rc=")? + 3..];
    let digits: String = tail.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// `n` pseudo-random bytes (xorshift64, seeded from the clock and a counter).
pub fn random_bytes(n: usize) -> Vec<u8> {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let calls = CALLS.fetch_add(1, Ordering::SeqCst) as u64;
    let mut x = (nanos ^ calls.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ std::process::id() as u64) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The sha256 of a guest file as `sha256sum` computes it in the guest ("" if it has none).
pub async fn guest_sha256(c: &Client, sid: &str, path: &str) -> Result<String> {
    let out = sh(c, sid, &format!("sha256sum '{path}'")).await?;
    Ok(out["stdout"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// A `download`: its structured result, the file's bytes, its text when the server sent a
/// text resource, and the resource's URI.
pub struct Downloaded {
    pub meta: Value,
    pub bytes: Vec<u8>,
    pub text: Option<String>,
    pub uri: String,
}

pub async fn download(c: &Client, sid: &str, path: &str) -> Result<Downloaded> {
    let r = c
        .call("download", json!({ "session_id": sid, "path": path }))
        .await?;
    if r.is_error == Some(true) {
        bail!("download {path} failed: {}", deskvm::client::text_of(&r));
    }
    let meta = r.structured_content.clone().unwrap_or(Value::Null);
    let res = r
        .content
        .iter()
        .find_map(|b| b.as_resource())
        .with_context(|| format!("download {path} returned no embedded resource: {meta}"))?;
    match &res.resource {
        ResourceContents::TextResourceContents { uri, text, .. } => Ok(Downloaded {
            meta,
            bytes: text.as_bytes().to_vec(),
            text: Some(text.clone()),
            uri: uri.clone(),
        }),
        ResourceContents::BlobResourceContents { uri, blob, .. } => Ok(Downloaded {
            meta,
            bytes: base64::engine::general_purpose::STANDARD
                .decode(blob)
                .context("the blob resource is not base64")?,
            text: None,
            uri: uri.clone(),
        }),
        other => bail!("download {path}: unexpected resource {other:?}"),
    }
}

/// Downloads `path` until it has content (an application saves it a moment after its keys).
pub async fn download_written(
    c: &Client,
    sid: &str,
    path: &str,
    limit: Duration,
) -> Result<Downloaded> {
    let deadline = Instant::now() + limit;
    loop {
        let d = download(c, sid, path).await?;
        if d.meta["size"].as_u64().unwrap_or(0) > 0 {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            bail!("{path} was still empty after {limit:?}: {}", d.meta);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Polls the focused window's title as xprop reads it (a person's check: see
/// [`super::active_window`]) until it contains `part`.
pub async fn wait_for_xprop_title(
    c: &Client,
    sid: &str,
    part: &str,
    limit: Duration,
) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let title = super::active_window(c, sid).await?;
        if title.contains(part) {
            return Ok(title);
        }
        if Instant::now() >= deadline {
            bail!("no window titled like {part:?} within {limit:?} (focused: {title:?})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asserts two byte strings are equal without printing megabytes when they are not.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes, expected {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

/// `len` random bytes uploaded to `path` (parents made), checked by the upload's answer, by
/// `sha256sum` in the guest, and downloaded back byte-exact.
pub async fn round_trip(c: &Client, sid: &str, path: &str, len: usize) -> Result<()> {
    let data = random_bytes(len);
    let sum = sha256_hex(&data);
    let up = c
        .call_ok(
            "upload",
            json!({ "session_id": sid, "path": path, "content": b64(&data), "create_dirs": true }),
        )
        .await?;
    assert_eq!(up["size"], len as u64, "{up}");
    assert_eq!(up["sha256"], sum.as_str(), "{up}");
    assert_eq!(up["path"], path, "{up}");
    assert_eq!(
        guest_sha256(c, sid, path).await?,
        sum,
        "sha256sum in the guest"
    );
    let down = download(c, sid, path).await?;
    assert_eq!(down.meta["sha256"], sum.as_str(), "{}", down.meta);
    assert_eq!(down.meta["size"], len as u64, "{}", down.meta);
    assert_eq!(
        down.meta["text"], false,
        "random bytes are no text: {}",
        down.meta
    );
    assert!(
        down.text.is_none(),
        "random bytes came back as a text resource"
    );
    assert_same_bytes(&down.bytes, &data, "the downloaded file");
    Ok(())
}
