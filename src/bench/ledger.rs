//! The review ledger's cost: what it adds to each reply and the bytes it stores, over scripted
//! sessions that exercise every screen-changing tool, back to back and as an agent calls.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{disk, session_id};
use crate::client::Client;
use crate::session::boot::TERMINAL_POINT;

/// Both rhythms: back to back, then as an agent calls (a model thinks between calls, and the
/// after-frame capture of the previous action has usually finished by then).
pub async fn measure(client: &Client, actions: usize) -> Result<()> {
    cost(client, actions, Duration::ZERO).await?;
    cost(client, (actions / 3).max(10), Duration::from_secs(1)).await
}

/// The cost over a scripted session of `n` actions, `pause` apart (none is the worst case for
/// capture: the next call always interrupts the previous action's after-frame).
async fn cost(client: &Client, n: usize, pause: Duration) -> Result<()> {
    let info = client.call_ok("session_start", json!({})).await?;
    let sid = session_id(&info)?;
    for i in 0..n {
        let (tool, mut args) = step(i);
        args["session_id"] = sid.clone().into();
        tokio::time::sleep(pause).await;
        client.call_ok(tool, args).await?;
    }
    let x = client
        .call_ok(
            "export_review",
            json!({ "session_id": sid, "name": format!("bench-{n}") }),
        )
        .await?;
    let before = disk::before_stop(client, &sid).await?;
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    let review: Value = serde_json::from_slice(&std::fs::read(
        std::path::Path::new(x["dir"].as_str().context("no export dir")?).join("review.json"),
    )?)?;
    print(&review, n, pause);
    disk::after_stop(client, n, before).await
}

/// The `i`th action of the script: a cycle of ten that touches every screen-changing tool.
fn step(i: usize) -> (&'static str, Value) {
    let (tx, ty) = TERMINAL_POINT;
    match i % 10 {
        0 => ("screenshot", json!({})),
        1 => ("click", json!({ "x": tx, "y": ty })),
        2 => ("type", json!({ "text": format!("echo step-{i}") })),
        3 => ("key", json!({ "keys": "Return" })),
        4 => ("screenshot", json!({ "scale": 0.5 })),
        5 => ("scroll", json!({ "x": 300, "y": 200, "dy": 1 })),
        6 => ("mouse_move", json!({ "x": 500 + (i % 7) * 10, "y": 300 })),
        7 => (
            "drag",
            json!({ "from": {"x": 50, "y": 150}, "to": {"x": 120, "y": 190} }),
        ),
        8 => ("exec", json!({ "command": "true" })),
        _ => ("screenshot", json!({})),
    }
}

/// The export's own figures: the reply overhead and the bytes per action.
fn print(review: &Value, n: usize, pause: Duration) {
    let o = &review["reply_overhead_us"];
    let bytes = &review["bytes"];
    let per = |v: &Value| v.as_f64().unwrap_or(f64::NAN) / n as f64 / 1024.0;
    let rhythm = if pause.is_zero() {
        "back to back".to_string()
    } else {
        format!("{} ms apart", pause.as_millis())
    };
    println!(
        "{:<38} p50={:>6.2} ms  p95={:>6.2} ms  max={:>6.2} ms (n={}, {} actions {rhythm})",
        "review ledger: added to each reply",
        o["p50"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        o["p95"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        o["max"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        o["n"],
        n
    );
    println!(
        "{:<38} {:.1} KiB per action stored ({} frames, timeline {:.1} KiB); every referenced frame as its own PNG: {:.1} KiB per action",
        "review ledger: bytes",
        (bytes["shots"].as_f64().unwrap_or(0.0) + bytes["timeline"].as_f64().unwrap_or(0.0)) / n as f64 / 1024.0,
        review["counts"]["shots"],
        bytes["timeline"].as_f64().unwrap_or(0.0) / 1024.0,
        per(&bytes["without_dedupe"]),
    );
}
