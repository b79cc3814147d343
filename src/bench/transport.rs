//! `--transport http`: the same screenshot over stdio and over streamable HTTP, side by side in
//! one run, and several HTTP clients at once, one desktop each.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::{ms, pct, summary};
use crate::client::{Client, HttpServer};

async fn session(client: &Client) -> Result<String> {
    let info = client.call_ok("session_start", json!({})).await?;
    super::session_id(&info)
}

/// `n` full-size screenshots, each timed (ms).
pub(super) async fn shots(client: &Client, sid: &str, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client.screenshot(sid, json!({})).await?;
        v.push(ms(t.elapsed()));
    }
    Ok(v)
}

/// `stdio` is the bench's stdio client; the HTTP server is spawned with the same arguments
/// and environment.
pub async fn compare(
    stdio: &Client,
    server_args: &[&str],
    env: &[(&str, &str)],
    n: usize,
    clients: usize,
) -> Result<()> {
    let exe = std::env::current_exe()?;
    let server = HttpServer::spawn(&exe, server_args, env).await?;
    let http = Client::connect_http(&server.mcp_url(), None).await?;
    let (s_sid, h_sid) = (session(stdio).await?, session(&http).await?);
    // Interleaved rounds, so drift on a shared machine hits both alike.
    let (mut s_ms, mut h_ms) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        s_ms.extend(shots(stdio, &s_sid, n / 5).await?);
        h_ms.extend(shots(&http, &h_sid, n / 5).await?);
    }
    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (pct(&v, 0.5), pct(&v, 0.95))
    };
    let (s50, s95) = sorted(&s_ms);
    let (h50, h95) = sorted(&h_ms);
    summary("screenshot over stdio", s_ms);
    summary("screenshot over streamable HTTP", h_ms);
    println!(
        "{:<38} p50 x{:.2}, p95 x{:.2} (HTTP / stdio)",
        "  ratio",
        h50 / s50,
        h95 / s95
    );
    stdio
        .call_ok("session_stop", json!({ "session_id": s_sid }))
        .await?;
    http.call_ok("session_stop", json!({ "session_id": h_sid }))
        .await?;
    http.close().await?;

    // Several clients at once, a desktop each, all screenshotting.
    let mut conns = Vec::new();
    for _ in 0..clients {
        let c = Client::connect_http(&server.mcp_url(), None).await?;
        let sid = session(&c).await?;
        conns.push((c, sid));
    }
    let t = Instant::now();
    let runs = conns.iter().map(|(c, sid)| shots(c, sid, n));
    let all: Vec<f64> = futures::future::try_join_all(runs)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let wall = t.elapsed().as_secs_f64();
    let total = all.len();
    summary(&format!("screenshot, {clients} HTTP clients at once"), all);
    println!(
        "{:<38} {:.1} screenshots/s in all ({total} in {wall:.2} s), {:.1} per client",
        "  throughput",
        total as f64 / wall,
        total as f64 / wall / clients as f64
    );
    for (c, sid) in conns {
        c.call_ok("session_stop", json!({ "session_id": sid }))
            .await?;
        c.close().await?;
    }
    Ok(())
}
