//! Checkpoints: the time to save one and how long the VM is paused, the bytes each takes after
//! a short session, and the time from `restore` or a fork's `session_start` to its first
//! screenshot.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use super::{ms, summary};
use crate::client::Client;
use crate::session::boot::TERMINAL_POINT;

pub async fn measure(client: &Client, n: usize) -> Result<()> {
    let info = client.call_ok("session_start", json!({})).await?;
    let sid = super::session_id(&info)?;
    // A short session: the terminal clicked, a command typed, the screen looked at.
    let (x, y) = TERMINAL_POINT;
    client
        .call_ok("click", json!({ "session_id": sid, "x": x, "y": y }))
        .await?;
    client
        .call_ok(
            "type",
            json!({ "session_id": sid, "text": "ls -la /etc > /root/list\n" }),
        )
        .await?;
    client.screenshot(&sid, json!({})).await?;
    let (mut total, mut pause, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut first_layer, mut layers) = (0.0, Vec::new());
    let mut names = Vec::new();
    for i in 0..n {
        if i > 0 {
            // Between checkpoints the agent does a little: each layer holds that much.
            client
                .call_ok(
                    "type",
                    json!({ "session_id": sid, "text": format!("date >> /root/list; sync # {i}\n") }),
                )
                .await?;
            client.screenshot(&sid, json!({})).await?;
        }
        let name = format!("bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let ck = client
            .call_ok("checkpoint", json!({ "session_id": sid, "name": name }))
            .await?;
        total.push(ms(t.elapsed()));
        pause.push(ck["pause_ms"].as_f64().unwrap_or(f64::NAN));
        bytes.push(ck["bytes"].as_f64().unwrap_or(f64::NAN) / 1_048_576.0);
        let layer = ck["layer_bytes"].as_f64().unwrap_or(f64::NAN) / 1_048_576.0;
        if i == 0 {
            first_layer = layer;
        } else {
            layers.push(layer);
        }
        names.push(name);
    }
    let (mut restore, mut fork, mut fork_call) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        client
            .call_ok(
                "restore",
                json!({ "session_id": sid, "checkpoint": names[0] }),
            )
            .await?;
        client.screenshot(&sid, json!({})).await?;
        restore.push(ms(t.elapsed()));
    }
    // Forks start beside the running source, as an evaluation starts its tasks; the source
    // first settles from its last restore (two guests catching up at once share 2 cores).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for _ in 0..n {
        let t = Instant::now();
        let f = client
            .call_ok("session_start", json!({ "from_checkpoint": names[0] }))
            .await?;
        let fid = super::session_id(&f)?;
        fork_call.push(ms(t.elapsed()));
        client.screenshot(&fid, json!({})).await?;
        fork.push(ms(t.elapsed()));
        client
            .call_ok("session_stop", json!({ "session_id": fid }))
            .await?;
    }
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    // Newest first: each is a layer on the one before.
    for name in names.iter().rev() {
        client
            .call_ok("checkpoint_delete", json!({ "name": name }))
            .await?;
    }
    summary("checkpoint (call)", total);
    summary("checkpoint: VM paused", pause);
    bytes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    layers.sort_by(|a, b| a.partial_cmp(b).unwrap());
    super::record(
        "checkpoint bytes",
        json!({ "unit": "MiB", "median": bytes[bytes.len() / 2], "first_layer": first_layer,
                "layer_median": layers.get(layers.len() / 2) }),
    );
    println!(
        "{:<38} {:.1} MiB each (median of {n}; state + own disk layer)",
        "checkpoint: bytes on disk",
        bytes[bytes.len() / 2]
    );
    println!(
        "{:<38} first {first_layer:.1} MiB (the session so far), then {} MiB each (median; what changed since the one before)",
        "checkpoint: disk layer",
        layers
            .get(layers.len() / 2)
            .map_or("-".into(), |m| format!("{m:.2}"))
    );
    summary("restore to first screenshot", restore);
    summary("fork to first screenshot", fork);
    summary("  of which session_start", fork_call);
    Ok(())
}
