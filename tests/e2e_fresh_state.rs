//! A new user's first day: a server given a state root that does not exist checkpoints, forks,
//! exports, views and reclaims with nothing made beforehand by anyone but the product, and
//! every directory it makes is private. An I/O error names its operation and path.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use common::view::{canvas_matches_screenshot, link, url};
use common::*;
use deskvm::client::Client;
use deskvm_devtools::cdp::Browser;
use serde_json::json;

/// A path under the temp dir that does not exist; removed (if the product made it) on drop.
struct Absent(PathBuf);

impl Absent {
    fn new() -> Absent {
        let p = std::env::temp_dir().join(format!(
            "dvfresh-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        assert!(!p.exists());
        Absent(p)
    }
}

impl Drop for Absent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A local server whose only setting is the state root: data and runtime dirs follow it.
async fn server_on(state: &Path) -> Result<Client> {
    let state = state.to_string_lossy();
    Client::spawn(
        Path::new(env!("CARGO_BIN_EXE_deskvm")),
        &["--backend", "local"],
        // Empty values count as unset: whatever the test's own environment says.
        &[
            ("DESKVM_STATE_DIR", &state),
            ("DESKVM_DATA_DIR", ""),
            ("DESKVM_RUNTIME_DIR", ""),
            ("DESKVM_IMAGE", "minimal"),
        ],
    )
    .await
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn an_absent_state_root_checkpoints_forks_exports_views_and_reclaims() -> Result<()> {
    let root = Absent::new();
    let state = root.0.join("state");
    let c = server_on(&state).await?;
    let session = start(&c).await?;
    assert!(
        state.join("run").join("s").join(&session).is_dir(),
        "the session runs in <state>/run"
    );

    guest(&c, &session, "echo fresh > /root/fresh.txt && sync").await?;
    let ck = c
        .call_ok(
            "checkpoint",
            json!({ "session_id": session, "name": "first-day" }),
        )
        .await?;
    assert_eq!(ck["name"], "first-day", "{ck}");
    let saved = state.join("checkpoints").join("first-day");
    assert!(
        saved.join("checkpoint.json").is_file(),
        "{}",
        saved.display()
    );
    let fork = sid(&c
        .call_ok("session_start", json!({ "from_checkpoint": "first-day" }))
        .await?);
    assert_eq!(guest(&c, &fork, "cat /root/fresh.txt").await?, "fresh\n");
    c.call_ok("session_stop", json!({ "session_id": fork }))
        .await?;

    let export = c
        .call_ok(
            "export_review",
            json!({ "session_id": session, "name": "day-one" }),
        )
        .await?;
    let bundle = state.join("data").join("exports").join("day-one");
    assert!(bundle.join("index.html").is_file(), "{export}");

    let view = link(&c, &session, false).await?;
    let browser = Browser::launch(1400, 1000).await?;
    let page = browser.open(&url(&view)).await?;
    canvas_matches_screenshot(&c, &session, &page).await?;

    let report = c.call_ok("reclaim", json!({})).await?;
    assert!(
        report["usage"]["checkpoints"]["count"].as_u64() == Some(1),
        "reclaim counts the new root's checkpoint: {report}"
    );
    let candidates = report["candidates"].to_string();
    assert!(!candidates.contains("first-day"), "{report}");

    for dir in [
        state.clone(),
        state.join("checkpoints"),
        state.join("data"),
        state.join("data").join("reviews"),
        state.join("run"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{} is private", dir.display());
    }
    c.close().await?;
    Ok(())
}

/// An error on the way names what was being done and where: here the state root's
/// `checkpoints` is a file, so its directory cannot be made.
#[tokio::test]
async fn a_checkpoint_that_cannot_be_written_names_the_operation_and_path() -> Result<()> {
    let root = Absent::new();
    let state = root.0.join("state");
    std::fs::create_dir_all(&state)?;
    let blocker = state.join("checkpoints");
    std::fs::write(&blocker, "not a directory")?;
    let c = server_on(&state).await?;
    let sid = start(&c).await?;
    let (kind, message) = tool_error(
        &c,
        "checkpoint",
        json!({ "session_id": sid, "name": "blocked" }),
    )
    .await?;
    assert_eq!(kind, "io", "{message}");
    assert!(
        message.contains(&format!(
            "creating the checkpoints dir {}",
            blocker.display()
        )),
        "{message}"
    );
    assert!(
        message.contains("File exists") || message.contains("Not a directory"),
        "the OS error is in the chain: {message}"
    );
    // The session lives on, and the refusal is on record.
    assert_eq!(guest(&c, &sid, "echo alive").await?, "alive\n");
    let ev = events(&state.join("data").join("reviews").join(&sid))?;
    assert!(
        ev.iter()
            .any(|e| e["tool"] == "checkpoint" && e["kind"] == "action_failed"),
        "the failed checkpoint is in the ledger"
    );
    c.close().await?;
    Ok(())
}
