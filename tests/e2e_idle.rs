//! The idle timeout: a session nobody calls is stopped, recorded as an idle stop, and its next
//! call says why; a session in use is left alone.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use serde_json::json;

#[tokio::test]
async fn an_idle_session_is_stopped_and_says_so() -> Result<()> {
    let s = server_with(&["--backend", "local", "--idle-timeout-s", "3"]).await?;
    let c = &s.client;
    let idle = start(c).await?;
    let busy = start(c).await?;
    let t = Instant::now();
    // The busy session gets a call every 500 ms; the idle one none.
    let mut stopped = false;
    while t.elapsed() < Duration::from_secs(20) {
        c.screenshot(&busy, json!({ "scale": 0.25 })).await?;
        let list = c.call_ok("session_list", json!({})).await?;
        if !list.to_string().contains(&idle) {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(stopped, "the idle session should have been stopped");
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "not before its timeout"
    );
    let (kind, msg) = tool_error(c, "screenshot", json!({ "session_id": idle })).await?;
    assert_eq!(kind, "session_stopped_idle", "{msg}");
    assert!(msg.contains("idle timeout 3 s"), "{msg}");
    // The session leaves the list as its teardown begins; the VM's end, the runtime dir's
    // removal and the ledger's last event follow within moments.
    let dir = s.runtime.join("s").join(&idle);
    let review = s.data.join("reviews").join(&idle);
    let t = Instant::now();
    while (dir.exists() || events(&review)?.last().unwrap()["kind"] != "session_stopped")
        && t.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!dir.exists(), "its runtime dir is removed");
    let ev = events(&review)?;
    let last = ev.last().unwrap();
    assert_eq!(last["kind"], "session_stopped", "{last}");
    assert_eq!(last["reason"], "idle", "{last}");
    assert!(last["idle_s"].as_u64().unwrap() >= 3, "{last}");
    // The session in use is still there, and answers.
    c.screenshot(&busy, json!({})).await?;
    c.call_ok("session_stop", json!({ "session_id": busy }))
        .await?;
    s.client.close().await
}
