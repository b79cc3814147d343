//! A review survives its server: `kill -9` of `deskvm serve` mid-session, then
//! `deskvm review export` from a new process exports every call answered before the kill.
//! (Its own test binary, so its guest never competes for CPU with another test's typing.)

mod common;

use anyhow::Result;
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn a_review_survives_kill_9_of_its_server() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    c.screenshot(&sid, json!({})).await?;
    c.call_ok("click", json!({ "session_id": sid, "x": 400, "y": 300 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "echo before-the-crash\n" }),
    )
    .await?;
    tool_error(c, "click", json!({ "session_id": sid, "x": -1, "y": 0 })).await?;
    c.call_ok("key", json!({ "session_id": sid, "keys": "ctrl+l" }))
        .await?;
    let answered = 6; // session_started + 5 calls

    let pid = owner_pid(&s.runtime, &sid)?;
    kill_9(pid);
    // SIGKILL takes effect asynchronously: the next steps must see a dead server.
    wait_dead(pid).await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskvm"))
        .args(["review", "export", &sid, "--name", "after-crash"])
        .envs(state_env(&s.runtime, &s.data))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = s.data.join("exports").join("after-crash");
    let ev = events(&bundle)?;
    let seqs: Vec<u64> = ev.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=ev.len() as u64).collect::<Vec<_>>(),
        "seq must be 1..n"
    );
    let steps: Vec<&Value> = ev.iter().filter(|e| e["kind"] != "frame").collect();
    assert_eq!(
        steps.len(),
        answered,
        "every answered call survives: {steps:?}"
    );
    assert_eq!(steps[answered - 1]["tool"], "key");
    assert!(bundle.join("index.html").is_file() && bundle.join("after-crash.html").is_file());
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_deskvm"))
        .args(["review", "list"])
        .envs(state_env(&s.runtime, &s.data))
        .output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains(&sid) && list.contains("server gone"),
        "{list}"
    );
    drop(s.client);
    Ok(())
}
