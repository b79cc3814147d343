//! The ways in and out (issue 24): upload and download throughput through the guest agent, and
//! what the allowlist proxy adds to a page fetch beside a plain forward, on its own server with
//! a forward allowed and a local HTTP server standing in for the site. Loopback only.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use super::{record, session_id, summary};
use crate::client::Client;

const FILE_MIB: usize = 8;

/// Upload and download of an 8 MiB file, `runs` times each, in MB/s.
pub async fn transfers(client: &Client, runs: usize) -> Result<()> {
    let sid = session_id(&client.call_ok("session_start", json!({})).await?)?;
    let data: Vec<u8> = (0..FILE_MIB << 20)
        .map(|i| ((i * 2_654_435_761usize) >> 13) as u8)
        .collect();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        client.upload(&sid, "/root/bench.bin", &data).await?;
        up.push(mbps(data.len(), t));
        let t = Instant::now();
        let (back, _) = client.download(&sid, "/root/bench.bin").await?;
        down.push(mbps(back.len(), t));
        anyhow::ensure!(
            back == data,
            "the downloaded file differs from the uploaded one"
        );
    }
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    rate(&format!("upload {FILE_MIB} MiB"), up);
    rate(&format!("download {FILE_MIB} MiB"), down);
    Ok(())
}

fn mbps(bytes: usize, t: Instant) -> f64 {
    bytes as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn rate(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let p50 = super::pct(&v, 0.5);
    println!(
        "{name:<38} p50 {p50:>7.1} MB/s  (min {:.1}, max {:.1}, n={})",
        v[0],
        v[v.len() - 1],
        v.len()
    );
    record(
        name,
        json!({ "unit": "MB/s", "p50": p50, "min": v[0], "max": v[v.len() - 1], "n": v.len() }),
    );
}

/// A page on 127.0.0.1 fetched `runs` times by curl in the guest through a forward and through
/// the proxy (allow mode), side by side in one session: the ratio is the proxy's overhead.
pub async fn proxy_overhead(exe: &Path, env: &[(&str, &str)], runs: usize) -> Result<()> {
    let port = serve_page()?;
    let ports = port.to_string();
    let resolve = "bench.test=127.0.0.1".to_string();
    let args = ["--allow-forward", &ports, "--resolve", &resolve];
    let client = Client::spawn(exe, &args, env).await?;
    let start = json!({ "forward": [format!("127.0.0.1:{port}")], "network": { "allow": [format!("bench.test:{port}")] } });
    let t = Instant::now();
    let sid = session_id(&client.call_ok("session_start", start).await?)?;
    client.screenshot(&sid, json!({})).await?;
    // The guest's network is set up through the agent before session_start answers.
    let started = super::ms(t.elapsed());
    println!(
        "{:<38} {started:>7.0} ms (allow list + one forward, guest network configured)",
        "start -> first screenshot"
    );
    record(
        "start with network -> first screenshot",
        json!({ "unit": "ms", "value": started }),
    );
    let fetch =
        |url: String| format!("curl -sS -o /dev/null -w '%{{time_total}}' --max-time 20 {url}");
    let forward = fetch(format!("http://host.deskvm.internal:{port}/"));
    let proxied = fetch(format!("http://bench.test:{port}/"));
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        direct.push(curl_ms(&client, &sid, &forward).await?);
        via.push(curl_ms(&client, &sid, &proxied).await?);
    }
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    client.close().await?;
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        super::pct(v, 0.5)
    };
    let (d, p) = (p50(&mut direct.clone()), p50(&mut via.clone()));
    summary("page fetch in guest via forward", direct);
    summary("page fetch in guest via proxy", via);
    println!(
        "{:<38} {:.2}x the forward's time",
        "proxy overhead (p50 ratio)",
        p / d.max(0.001)
    );
    record("proxy overhead", json!({ "ratio": p / d.max(0.001) }));
    Ok(())
}

/// curl's own total time, in ms (the exec round trip is the same on both paths).
async fn curl_ms(client: &Client, sid: &str, script: &str) -> Result<f64> {
    let out = client.exec_stdout(sid, script).await?;
    let s: f64 = out
        .trim()
        .parse()
        .with_context(|| format!("curl printed {out:?}"))?;
    Ok(s * 1000.0)
}

/// A one-page HTTP server on 127.0.0.1 for the bench's life; its port.
fn serve_page() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding the bench's page server")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "<html><head><title>deskvm bench</title></head><body>bench</body></html>";
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    Ok(port)
}
