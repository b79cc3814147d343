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
    let saved = save(client, &sid, n).await?;
    let restore = restores(client, &sid, &saved.names[0], n).await?;
    // Forks start beside the running source, as an evaluation starts its tasks; the source
    // first settles from its last restore (two guests catching up at once share 2 cores).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (fork, fork_call) = forks(client, &saved.names[0], n).await?;
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    // Newest first: each is a layer on the one before.
    for name in saved.names.iter().rev() {
        client
            .call_ok("checkpoint_delete", json!({ "name": name }))
            .await?;
    }
    saved.print(n);
    summary("restore to first screenshot", restore);
    summary("fork to first screenshot", fork);
    summary("  of which session_start", fork_call);
    Ok(())
}

/// `n` checkpoints of one session, each after a little work: their names and figures.
#[derive(Default)]
struct Saved {
    names: Vec<String>,
    /// The call's time, the VM's pause (ms), the bytes each takes (MiB).
    total: Vec<f64>,
    pause: Vec<f64>,
    bytes: Vec<f64>,
    /// The first disk layer (the session so far), then each later one (what changed).
    first_layer: f64,
    layers: Vec<f64>,
}

async fn save(client: &Client, sid: &str, n: usize) -> Result<Saved> {
    let mut s = Saved::default();
    for i in 0..n {
        if i > 0 {
            // Between checkpoints the agent does a little: each layer holds that much.
            client
                .call_ok(
                    "type",
                    json!({ "session_id": sid, "text": format!("date >> /root/list; sync # {i}\n") }),
                )
                .await?;
            client.screenshot(sid, json!({})).await?;
        }
        let name = format!("bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let ck = client
            .call_ok("checkpoint", json!({ "session_id": sid, "name": name }))
            .await?;
        s.total.push(ms(t.elapsed()));
        s.pause.push(ck["pause_ms"].as_f64().unwrap_or(f64::NAN));
        s.bytes
            .push(ck["bytes"].as_f64().unwrap_or(f64::NAN) / 1_048_576.0);
        let layer = ck["layer_bytes"].as_f64().unwrap_or(f64::NAN) / 1_048_576.0;
        if i == 0 {
            s.first_layer = layer;
        } else {
            s.layers.push(layer);
        }
        s.names.push(name);
    }
    Ok(s)
}

impl Saved {
    fn print(mut self, n: usize) {
        summary("checkpoint (call)", self.total);
        summary("checkpoint: VM paused", self.pause);
        self.bytes.sort_by(|a, b| a.partial_cmp(b).unwrap());
        self.layers.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (bytes, layers, first_layer) = (&self.bytes, &self.layers, self.first_layer);
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
    }
}

/// `n` restores of `checkpoint` into the session, each to its first screenshot (ms).
async fn restores(client: &Client, sid: &str, checkpoint: &str, n: usize) -> Result<Vec<f64>> {
    let mut restore = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        client
            .call_ok(
                "restore",
                json!({ "session_id": sid, "checkpoint": checkpoint }),
            )
            .await?;
        client.screenshot(sid, json!({})).await?;
        restore.push(ms(t.elapsed()));
    }
    Ok(restore)
}

/// `n` forks of `checkpoint`, one at a time: to the first screenshot, and the `session_start`
/// call alone (ms).
async fn forks(client: &Client, checkpoint: &str, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut fork, mut fork_call) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let f = client
            .call_ok("session_start", json!({ "from_checkpoint": checkpoint }))
            .await?;
        let fid = super::session_id(&f)?;
        fork_call.push(ms(t.elapsed()));
        client.screenshot(&fid, json!({})).await?;
        fork.push(ms(t.elapsed()));
        client
            .call_ok("session_stop", json!({ "session_id": fid }))
            .await?;
    }
    Ok((fork, fork_call))
}
