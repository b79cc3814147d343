//! `reclaim` and the startup janitor against real servers, real guests and a real Docker engine:
//! what a `kill -9`ed server leaves behind is reported, removed item by item and really gone;
//! servers sharing directories never touch each other's sessions; what cannot be removed comes
//! back as a failure; superseded images and ready states go, current ones stay.

mod common;

use std::path::Path;

use anyhow::{Context, Result};
use common::*;
use serde_json::{json, Value};

/// One at a time: a janitor or an unrestricted apply removes every dead server's containers on
/// the engine, so a concurrent test's orphan would vanish before that test could look at it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dirs(runtime: &Path, data: &Path) -> [(&'static str, std::path::PathBuf); 4] {
    state_env(runtime, data)
}

/// The candidates (or removed / failed items) of a report about session `sid`.
fn about<'a>(list: &'a Value, sid: &str) -> Vec<&'a Value> {
    list.as_array()
        .map(|a| a.iter().filter(|c| c["session"] == sid).collect())
        .unwrap_or_default()
}

fn container_exists(name: &str) -> Result<bool> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("name=^/{name}$")])
        .output()
        .context("docker CLI (installed by deskvm setup)")?;
    Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
}

fn qemu_running(sid: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", &format!("-name deskvm-{sid}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn orphan_is_reported_then_removed(backend: &str) -> Result<()> {
    let _one = SERIAL.lock().await;
    let s = server_with(&["--backend", backend]).await?;
    let sid = start(&s.client).await?;
    s.client
        .call_ok(
            "export_review",
            json!({ "session_id": sid, "name": "keep-me" }),
        )
        .await?;
    let rt_dir = s.runtime.join("s").join(&sid);
    // Screendumps go to the session's companion dir on tmpfs (this machine's /dev/shm is one).
    s.client.screenshot(&sid, json!({})).await?;
    // SAFETY: getuid cannot fail.
    let shm = Path::new(&format!("/dev/shm/deskvm-{}", unsafe { libc::getuid() })).join(&sid);
    assert!(
        shm.join("screen.ppm").is_file(),
        "the screendump is in {}",
        shm.display()
    );
    let container = format!("deskvm-{sid}");
    let pid = owner_pid(&s.runtime, &sid)?;
    kill_9(pid);
    wait_dead(pid).await;
    if backend == "docker" {
        assert!(
            container_exists(&container)?,
            "the container outlives a kill -9 of its server"
        );
    }

    // A report removes nothing.
    let env = dirs(&s.runtime, &s.data);
    let (code, report, err) = cli(&["reclaim", "--json"], &env)?;
    assert_eq!(code, 0, "{err}");
    let found = about(&report["candidates"], &sid);
    assert_eq!(found.len(), 1, "the orphan is one item: {report:#}");
    let item = found[0];
    assert_eq!(item["kind"], "orphan_session");
    assert_eq!(item["path"], rt_dir.to_string_lossy().as_ref());
    assert!(item["bytes"].as_u64().unwrap() > 0, "{item}");
    assert!(item["why"].as_str().unwrap().contains("is gone"), "{item}");
    if backend == "docker" {
        assert_eq!(item["container"], container.as_str());
        assert!(
            container_exists(&container)?,
            "a report must not remove the container"
        );
    }
    assert!(rt_dir.exists(), "a report must not remove the runtime dir");

    let (code, applied, err) = cli(&["reclaim", "--apply", "--json"], &env)?;
    assert_eq!(code, 0, "{err}\n{applied:#}");
    assert_eq!(applied["failed"], json!([]), "{applied:#}");
    let removed = about(&applied["removed"], &sid);
    assert_eq!(removed.len(), 1, "{applied:#}");
    assert!(
        removed[0]["bytes_freed"].as_u64().unwrap() > 0,
        "{applied:#}"
    );
    assert!(!rt_dir.exists(), "the runtime dir is gone");
    assert!(!shm.exists(), "its screendump dir on tmpfs is gone");
    assert!(!container_exists(&container)?, "no container of it remains");
    assert!(!qemu_running(&sid), "no QEMU of it remains");

    let (_, again, _) = cli(&["reclaim", "--json"], &env)?;
    assert!(about(&again["candidates"], &sid).is_empty(), "{again:#}");
    let export = s.data.join("exports").join("keep-me");
    assert!(export.join("index.html").is_file(), "exports are untouched");
    assert!(
        s.data.join("reviews").join(&sid).is_dir(),
        "the ledger is kept (retention)"
    );
    Ok(())
}

#[tokio::test]
async fn a_local_orphan_is_reported_then_removed() -> Result<()> {
    orphan_is_reported_then_removed("local").await
}

#[tokio::test]
async fn a_docker_orphan_is_reported_then_removed() -> Result<()> {
    orphan_is_reported_then_removed("docker").await
}

/// A new server's janitor removes what a killed one left, and `reclaim` (tool and CLI) says so.
#[tokio::test]
async fn the_startup_janitor_removes_orphans_and_says_so() -> Result<()> {
    let _one = SERIAL.lock().await;
    let (d, _guard) = temp_dirs(&["t", "d"])?;
    let (runtime, data) = (&d[0], &d[1]);
    let a = server_in(&["--backend", "docker"], runtime, data).await?;
    let sid = start(&a.client).await?;
    let pid = owner_pid(runtime, &sid)?;
    kill_9(pid);
    wait_dead(pid).await;
    let container = format!("deskvm-{sid}");
    assert!(container_exists(&container)?);

    let b = server_in(&["--backend", "docker"], runtime, data).await?;
    assert!(
        !runtime.join("s").join(&sid).exists(),
        "the janitor removed the runtime dir"
    );
    assert!(
        !container_exists(&container)?,
        "the janitor removed the container"
    );

    let r = b.client.call_ok("reclaim", json!({})).await?;
    let removed = about(&r["last_janitor"]["removed"], &sid);
    assert_eq!(
        removed.len(),
        1,
        "the tool tells what the janitor removed: {r:#}"
    );
    assert_eq!(removed[0]["container"], container.as_str());
    assert!(about(&r["candidates"], &sid).is_empty(), "{r:#}");
    let (_, cli_report, _) = cli(&["reclaim", "--json"], &dirs(runtime, data))?;
    assert_eq!(
        about(&cli_report["last_janitor"]["removed"], &sid).len(),
        1,
        "the CLI tells it too: {cli_report:#}"
    );
    Ok(())
}

/// Two servers on one runtime and data dir, one local and one on Docker: neither's janitor nor
/// reclaim (tool or CLI) touches the other's live session.
#[tokio::test]
async fn servers_sharing_dirs_leave_each_other_alone() -> Result<()> {
    let _one = SERIAL.lock().await;
    let (d, _guard) = temp_dirs(&["t", "d"])?;
    let (runtime, data) = (&d[0], &d[1]);
    let a = server_in(&["--backend", "local"], runtime, data).await?;
    let sa = start(&a.client).await?;
    // B's startup janitor runs while A's session lives.
    let b = server_in(&["--backend", "docker"], runtime, data).await?;
    let sb = start(&b.client).await?;
    a.client.screenshot(&sa, json!({})).await?;

    for (who, c) in [("b", &b.client), ("a", &a.client)] {
        let r = c.call_ok("reclaim", json!({ "mode": "apply" })).await?;
        for sid in [&sa, &sb] {
            assert!(
                about(&r["removed"], sid).is_empty(),
                "{who} removed {sid}: {r:#}"
            );
            assert!(
                about(&r["failed"], sid).is_empty(),
                "{who} tried {sid}: {r:#}"
            );
        }
        a.client.screenshot(&sa, json!({})).await?;
        b.client.screenshot(&sb, json!({})).await?;
    }
    let (code, r, err) = cli(&["reclaim", "--apply", "--json"], &dirs(runtime, data))?;
    assert_eq!(code, 0, "{err}");
    assert!(
        about(&r["removed"], &sa).is_empty() && about(&r["removed"], &sb).is_empty(),
        "{r:#}"
    );
    a.client.screenshot(&sa, json!({})).await?;
    b.client.screenshot(&sb, json!({})).await?;
    // What sessions start from is still there: new sessions start from the ready state on both.
    for x in r["removed"].as_array().into_iter().flatten() {
        let kind = x["kind"].as_str().unwrap_or_default();
        assert!(
            !matches!(kind, "guest_image" | "ready_state" | "runtime_image"),
            "removed what a live server runs from: {x}"
        );
    }
    for c in [&a.client, &b.client] {
        let sid = start(c).await?;
        c.call_ok("session_stop", json!({ "session_id": sid }))
            .await?;
    }

    // Disk per session (doctor: both servers' sessions, each with its owner), and bad requests
    // refused with their reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskvm"))
        .arg("doctor")
        .envs(state_env(runtime, data))
        .output()?;
    let doctor = String::from_utf8_lossy(&out.stdout);
    for sid in [&sa, &sb] {
        assert!(
            doctor.lines().any(
                |l| l.contains(&format!("session {sid}: runtime dir")) && l.contains("running")
            ),
            "{doctor}"
        );
    }
    let list = a.client.call_ok("session_list", json!({})).await?;
    let disk = &list["sessions"][0]["disk"];
    assert!(disk["runtime_bytes"].as_u64().unwrap() > 0, "{list}");
    assert!(disk["ledger_bytes"].as_u64().unwrap() > 0, "{list}");
    let (kind, msg) = tool_error(&a.client, "reclaim", json!({ "older_than": "soon" })).await?;
    assert_eq!(kind, "out_of_range", "{msg}");
    assert!(msg.contains("older_than") && msg.contains("7d"), "{msg}");
    let (kind, msg) = tool_error(&a.client, "reclaim", json!({ "include": ["nope"] })).await?;
    assert_eq!(kind, "invalid_name", "{msg}");
    let (kind, msg) = tool_error(&a.client, "reclaim", json!({ "mode": "purge" })).await?;
    assert_eq!(kind, "invalid_params", "{msg}");
    // Every reclaim call, refused ones too, is in the server's ledger.
    let mut recorded = 0;
    for e in std::fs::read_dir(data.join("reviews"))?.flatten() {
        if e.file_name().to_string_lossy().starts_with("server-") {
            recorded += events(&e.path())?
                .iter()
                .filter(|ev| ev["tool"] == "reclaim")
                .count();
        }
    }
    assert_eq!(recorded, 5, "2 applies and 3 refusals are recorded");
    Ok(())
}
