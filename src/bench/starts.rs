//! Session starts, ready state → first screenshot: on the bench server's backend and, when
//! that is local and a Docker engine with the runtime image answers, on Docker in the same
//! run, as a ratio (with typing there too, so both backends' typing is in one run).
//!
//! Starts are 1 s apart, as an agent's are at the quickest: a Docker server prepares the next
//! session's container in the background after each start (~200 ms of the engine's time), and
//! back-to-back starts would measure that preparation instead.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{ms, record, session_id, summary, METRICS};
use crate::client::Client;

pub const NAME: &str = "start (ready state) -> first screenshot";
const DOCKER: &str = "start on the Docker backend -> first screenshot";
const GAP: Duration = Duration::from_secs(1);

/// `n` starts on `client`'s server, each stopped after its first screenshot.
pub async fn measure(client: &Client, n: usize, name: &str) -> Result<()> {
    let mut starts = Vec::new();
    for _ in 0..n {
        tokio::time::sleep(GAP).await;
        let t = Instant::now();
        let info = client.call_ok("session_start", json!({})).await?;
        let sid = session_id(&info)?;
        if info["startup"] != "ready_state" {
            bail!(
                "session did not start from a ready state ({}); run `deskvm setup` first",
                info["startup"]
            );
        }
        client.screenshot(&sid, json!({})).await?;
        starts.push(ms(t.elapsed()));
        client
            .call_ok("session_stop", json!({ "session_id": sid }))
            .await?;
    }
    summary(name, starts);
    Ok(())
}

/// The same starts, and `chars` typed, on a Docker server beside the local one, when there is
/// an engine; fails when the typed text did not come back exactly.
pub async fn docker_beside(
    exe: &std::path::Path,
    env: &[(&str, &str)],
    n: usize,
    chars: usize,
) -> Result<()> {
    let local = METRICS
        .lock()
        .expect("metrics poisoned")
        .iter()
        .any(|m| m["name"] == "session" && m["backend"] == "local");
    if !local || n == 0 {
        return Ok(());
    }
    use crate::backend::docker;
    let image = match docker::connect().await {
        Ok(engine) => docker::image_qemu_version(&engine, &docker::runtime_image_tag()).await,
        Err(_) => None,
    };
    if image.is_none() {
        println!("{DOCKER:<38} not measured: no Docker engine with the runtime image");
        return Ok(());
    }
    let client = Client::spawn(exe, &["--backend", "docker", "--max-sessions", "4"], env).await?;
    let measured = async {
        measure(&client, n, DOCKER).await?;
        if chars == 0 {
            return Ok(0);
        }
        let info = client.call_ok("session_start", json!({})).await?;
        let sid = session_id(&info)?;
        let typed = super::typing::ascii(&client, &sid, chars).await?;
        let mismatched = typed.mismatched;
        super::typing::report("type on the Docker backend", &[typed]);
        client
            .call_ok("session_stop", json!({ "session_id": sid }))
            .await?;
        Ok::<_, anyhow::Error>(mismatched)
    }
    .await;
    client.close().await?;
    let mismatched = measured?;
    let p50 = |name: &str| super::metric(name, "p50").unwrap_or(f64::NAN);
    let ratio = p50(DOCKER) / p50(NAME);
    record(
        "ratio docker / local start",
        json!({ "unit": "x", "value": ratio }),
    );
    println!("{:<38} {ratio:.2}x", "ratio docker / local start (p50)");
    if mismatched > 0 {
        bail!("typed text was not read back exactly on the Docker backend: {mismatched} characters missing, extra or out of place");
    }
    Ok(())
}
