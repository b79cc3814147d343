//! A remote engine beside this host's, in one run (`--remote-engine`): `deskvm image push`
//! time and bytes, then session starts, screenshots, clicks and typing on each engine of one
//! server (`--engine local --engine REMOTE`, each session pinned), with the ratios. The local
//! engine uses the bind-mount fast path; the remote one does everything over exec sessions.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{metric, ms, record, session_id, summary};
use crate::client::Client;

pub struct Remote<'a> {
    pub engine: &'a str,
    pub insecure: bool,
    pub starts: usize,
    pub shots: usize,
    pub clicks: usize,
    pub chars: usize,
}

pub async fn compare(exe: &std::path::Path, env: &[(&str, &str)], r: &Remote<'_>) -> Result<()> {
    let spec = crate::backend::docker::EngineSpec::parse(r.engine).map_err(anyhow::Error::msg)?;
    push(exe, env, r, &spec.name)?;
    let mut args = vec![
        "--backend",
        "docker",
        "--engine",
        "local",
        "--engine",
        r.engine,
        "--max-sessions",
        "4",
    ];
    if r.insecure {
        args.push("--insecure-engine");
    }
    let client = Client::spawn(exe, &args, env).await?;
    let mut result = Ok(());
    for (engine, label) in [
        ("local", "local engine"),
        (spec.name.as_str(), "remote engine"),
    ] {
        result = one_engine(&client, engine, label, r).await;
        if result.is_err() {
            break;
        }
    }
    client.close().await?;
    result?;
    ratios();
    Ok(())
}

/// `deskvm image push` to the remote engine: its time and bytes, as it printed them.
fn push(exe: &std::path::Path, env: &[(&str, &str)], r: &Remote<'_>, name: &str) -> Result<()> {
    let mut push = std::process::Command::new(exe);
    push.args(["image", "push", "--engine", r.engine]);
    if r.insecure {
        push.arg("--insecure-engine");
    }
    let t = Instant::now();
    let out = push.envs(env.iter().copied()).output()?;
    if !out.status.success() {
        bail!(
            "image push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let pushed: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or_default())
        .context("image push printed no JSON")?;
    let (bytes, secs) = (
        pushed["bytes"].as_f64().unwrap_or(0.0),
        pushed["seconds"].as_f64().unwrap_or(0.0),
    );
    record(
        "image push",
        json!({ "bytes": bytes, "seconds": secs, "with_build_check_seconds": t.elapsed().as_secs_f64() }),
    );
    println!(
        "{:<38} {:.0} MB in {secs:.1} s ({:.0} MB/s; {:.1} s with the build check)",
        format!("image push to {name}"),
        bytes / 1e6,
        bytes / 1e6 / secs.max(1e-9),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Remote over local for each figure both engines have (typing: local over remote, a rate).
fn ratios() {
    for what in ["start", "screenshot", "click", "click after idle", "type"] {
        let (l, m) = (
            format!("{what} on local engine"),
            format!("{what} on remote engine"),
        );
        let field = if what == "type" { "chars_per_s" } else { "p50" };
        let (a, b) = (metric(&l, field), metric(&m, field));
        if let (Some(a), Some(b)) = (a, b) {
            let ratio = if what == "type" { a / b } else { b / a };
            record(
                &format!("ratio remote / local {what}"),
                json!({ "unit": "x", "value": ratio }),
            );
            println!(
                "{:<38} {ratio:.2}x",
                format!("ratio remote / local {what} ({field})")
            );
        }
    }
}

async fn one_engine(client: &Client, engine: &str, label: &str, r: &Remote<'_>) -> Result<()> {
    let pinned = json!({ "engine": engine });
    let mut starts = Vec::new();
    for _ in 0..r.starts {
        // As in the main start figures: an agent's starts are 1 s apart at the quickest.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        let info = client.call_ok("session_start", pinned.clone()).await?;
        let sid = session_id(&info)?;
        if info["startup"] != "ready_state" || info["engine"] != engine {
            bail!("{engine}: expected a ready-state start there, got {info}");
        }
        client.screenshot(&sid, json!({})).await?;
        starts.push(ms(t.elapsed()));
        client
            .call_ok("session_stop", json!({ "session_id": sid }))
            .await?;
    }
    summary(&format!("start on {label}"), starts);
    let info = client.call_ok("session_start", pinned).await?;
    let sid = session_id(&info)?;
    let mut shots = Vec::new();
    for _ in 0..r.shots {
        let t = Instant::now();
        client.screenshot(&sid, json!({})).await?;
        shots.push(ms(t.elapsed()));
    }
    summary(&format!("screenshot on {label}"), shots);
    let mut clicks = Vec::new();
    for i in 0..r.clicks {
        let t = Instant::now();
        let at = json!({ "session_id": sid, "x": 1000 + (i % 50) as u32, "y": 700 });
        client.call_ok("click", at).await?;
        clicks.push(ms(t.elapsed()));
    }
    summary(&format!("click on {label}"), clicks);
    // More than 2 s after the previous one: no input barrier, the channel's own cost.
    let mut idle = Vec::new();
    for i in 0..(r.clicks / 3).max(3) {
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let t = Instant::now();
        let at = json!({ "session_id": sid, "x": 1000 + i as u32, "y": 700 });
        client.call_ok("click", at).await?;
        idle.push(ms(t.elapsed()));
    }
    summary(&format!("click after idle on {label}"), idle);
    let typed = super::typing::ascii(client, &sid, r.chars).await?;
    let (rate, lost) = (typed.rate(), typed.mismatched);
    record(
        &format!("type on {label}"),
        json!({ "chars": r.chars, "chars_per_s": rate, "mismatched": lost }),
    );
    println!(
        "{:<38} {rate:.1} chars/s, {lost} of {} not read back exact",
        format!("type on {label}"),
        r.chars
    );
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    if lost > 0 {
        bail!("typing on {engine} lost {lost} characters");
    }
    Ok(())
}
