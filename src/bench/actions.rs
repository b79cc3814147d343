//! The agent's basic actions, one session at a time: starts (and with `--cold` one cold boot),
//! the session's memory, screenshots, clicks with and without the input barrier, and typing by
//! one guest and by two at once; then the review ledger's cost over scripted sessions.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{density, ledger, ms, record, session_id, starts, summary, typing, Options};
use crate::client::Client;

pub async fn measure(client: &Client, o: &Options) -> Result<()> {
    println!(
        "deskvm bench: {} cores, through an MCP client over stdio",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    starts::measure(client, o.starts, starts::NAME).await?;
    if o.cold {
        cold_start(client).await?;
    }
    let info = client.call_ok("session_start", json!({})).await?;
    let sid = session_id(&info)?;
    session_figures(&info, &sid);
    screenshots(client, &sid, o.shots).await?;
    clicks(client, &sid, o.clicks).await?;
    let mismatched = if o.chars > 0 {
        typing_rows(client, &sid, o.chars).await?
    } else {
        0
    };
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    if o.ledger_actions > 0 {
        ledger::measure(client, o.ledger_actions).await?;
    }
    if mismatched > 0 {
        bail!("typed text was not read back exactly: {mismatched} characters missing, extra or out of place");
    }
    Ok(())
}

/// One start with no saved ready state (another memory size): the guest must boot.
async fn cold_start(client: &Client) -> Result<()> {
    let t = Instant::now();
    let info = client
        .call_ok("session_start", json!({ "memory_mb": 1536 }))
        .await?;
    let sid = session_id(&info)?;
    client.screenshot(&sid, json!({})).await?;
    summary(
        &format!(
            "start ({}) -> first screenshot",
            info["startup"].as_str().unwrap_or("?")
        ),
        vec![ms(t.elapsed())],
    );
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    Ok(())
}

/// Where the session runs and what it holds in memory.
fn session_figures(info: &serde_json::Value, sid: &str) {
    record(
        "session",
        json!({ "backend": info["backend"], "accelerator": info["accelerator"], "memory": info["memory"] }),
    );
    println!(
        "{:<38} {} backend, {} accelerator",
        "session",
        info["backend"].as_str().unwrap_or("?"),
        info["accelerator"].as_str().unwrap_or("?")
    );
    if let Some(kib) = qemu_rss_kib(sid) {
        record(
            "memory per session (RSS)",
            json!({ "unit": "MiB", "value": kib / 1024 }),
        );
        println!(
            "{:<38} {} MiB (QEMU RSS, 1024 MiB guest, after resume)",
            "memory per session",
            kib / 1024
        );
    }
    if info["backend"] == "docker" {
        let out = std::process::Command::new("docker")
            .args([
                "stats",
                "--no-stream",
                "--format",
                "{{.MemUsage}}",
                &format!("deskvm-{sid}"),
            ])
            .output();
        if let Ok(out) = out {
            println!(
                "{:<38} {} (docker stats: container cgroup)",
                "",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
}

/// Resident memory of the session's QEMU process.
fn qemu_rss_kib(session_id: &str) -> Option<u64> {
    let pid = density::qemu_pid(session_id)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Full-size screenshots (time and bytes), then half-size ones.
async fn screenshots(client: &Client, sid: &str, n: usize) -> Result<()> {
    let mut shots = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..n {
        let t = Instant::now();
        let (png, _) = client.screenshot(sid, json!({})).await?;
        shots.push(ms(t.elapsed()));
        bytes += png.len();
    }
    summary("screenshot 1280x800 PNG", shots);
    record(
        "screenshot 1280x800 PNG bytes",
        json!({ "unit": "KiB", "value": bytes / n.max(1) / 1024 }),
    );
    println!("{:<38} {} KiB per screenshot", "", bytes / n.max(1) / 1024);
    let mut half = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        client.screenshot(sid, json!({ "scale": 0.5 })).await?;
        half.push(ms(t.elapsed()));
    }
    summary("screenshot scale 0.5", half);
    client.screenshot(sid, json!({})).await?;
    Ok(())
}

/// Clicks on the desktop background (a left click there changes nothing visible): back to
/// back, then each after 2 s idle.
async fn clicks(client: &Client, sid: &str, n: usize) -> Result<()> {
    let mut clicks = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        client
            .call_ok(
                "click",
                json!({ "session_id": sid, "x": 1000 + (i % 50) as u32, "y": 700 }),
            )
            .await?;
        clicks.push(ms(t.elapsed()));
    }
    summary("click, back to back (input barrier)", clicks);
    let mut idle = Vec::new();
    for i in 0..(n / 3).max(1) {
        // More than 2 s after the previous click: no barrier, as when an agent looks first.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let t = Instant::now();
        client
            .call_ok(
                "click",
                json!({ "session_id": sid, "x": 1000 + i as u32, "y": 700 }),
            )
            .await?;
        idle.push(ms(t.elapsed()));
    }
    summary("click, after 2 s idle", idle);
    Ok(())
}

/// Typing read back: by this guest, by two at once, then Unicode. Returns the characters not
/// read back exactly (the run fails on any, after its other figures).
async fn typing_rows(client: &Client, sid: &str, chars: usize) -> Result<usize> {
    let one = typing::ascii(client, sid, chars).await?;
    let mut mismatched = one.mismatched;
    typing::report("type (random printable ASCII)", &[one]);
    // Two guests typing at once: this one and a second.
    let info = client.call_ok("session_start", json!({})).await?;
    let second = session_id(&info)?;
    let (a, b) = tokio::join!(
        typing::ascii(client, sid, chars),
        typing::ascii(client, &second, chars)
    );
    let both = [a?, b?];
    mismatched += both.iter().map(|t| t.mismatched).sum::<usize>();
    typing::report("type, two guests at once", &both);
    client
        .call_ok("session_stop", json!({ "session_id": second }))
        .await?;
    for pool in [typing::POOL_16, typing::POOL_40] {
        typing::unicode(client, sid, (chars / 40).clamp(20, 250), pool).await?;
    }
    Ok(mismatched)
}
