//! Guest memory: sessions resumed from the shared-memory template map one RAM file
//! copy-on-write (the pages they have not written are shared, the ones they write are theirs
//! alone); the private path (`--guest-memory private`) still resumes, types and checkpoints.

mod common;

use anyhow::{Context, Result};
use common::*;
use serde_json::{json, Value};

/// Kilobytes of the session's QEMU process (local backend) mapped from the template's RAM file
/// that other processes map too (`Shared_Clean` of that mapping in `/proc/PID/smaps`).
fn template_shared_kb(runtime: &std::path::Path, sid: &str) -> Result<u64> {
    let process = std::fs::read(runtime.join("s").join(sid).join("qemu.process"))?;
    let pid = serde_json::from_slice::<Value>(&process)?["pid"]
        .as_u64()
        .context("qemu.process names its pid")?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut in_ram = false;
    for line in smaps.lines() {
        // Mapping headers start with an address range; fields are "Name:   value kB".
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_ram = line.trim_end().ends_with("/ram.bin");
        } else if in_ram && line.starts_with("Shared_Clean:") {
            return line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .context("Shared_Clean value");
        }
    }
    anyhow::bail!("QEMU {pid} maps no template RAM file")
}

#[tokio::test]
async fn sessions_share_the_template_and_keep_their_own_writes() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let info = c.call_ok("session_start", json!({})).await?;
        assert_eq!(info["memory"], "shared", "{info}");
        assert_eq!(info["startup"], "ready_state", "{info}");
        ids.push(sid(&info));
    }
    let (a, b) = (&ids[0], &ids[1]);
    // The same e2e checks as a private session: the first click lands, typing reads back.
    first_click_and_typing(c, a).await?;
    // /dev/shm is guest RAM: what one guest writes there the other must not see.
    guest(c, a, "echo only-in-a > /dev/shm/mine; sync").await?;
    assert_eq!(guest(c, a, "cat /dev/shm/mine").await?, "only-in-a\n");
    assert_eq!(
        guest(c, b, "cat /dev/shm/mine 2>/dev/null || echo absent").await?,
        "absent\n"
    );
    guest(c, b, "echo only-in-b > /dev/shm/mine").await?;
    assert_eq!(guest(c, a, "cat /dev/shm/mine").await?, "only-in-a\n");
    // Both map the template's RAM file, and share the pages of it neither wrote.
    for id in &ids {
        let shared = template_shared_kb(&s.runtime, id)?;
        eprintln!("session {id}: {shared} KiB of the template shared");
        assert!(
            shared > 16 * 1024,
            "session {id} shares only {shared} KiB of the template with the other"
        );
    }
    // A checkpoint of a shared-memory session holds every page: it restores in place and
    // forks into private memory.
    let name = format!("mem-{}", std::process::id());
    c.call_ok("checkpoint", json!({ "session_id": a, "name": name }))
        .await?;
    guest(c, a, "echo later > /dev/shm/mine").await?;
    c.call_ok("restore", json!({ "session_id": a, "checkpoint": name }))
        .await?;
    assert_eq!(guest(c, a, "cat /dev/shm/mine").await?, "only-in-a\n");
    let fork = c
        .call_ok("session_start", json!({ "from_checkpoint": name }))
        .await?;
    assert_eq!(fork["memory"], "private", "{fork}");
    assert_eq!(
        guest(c, &sid(&fork), "cat /dev/shm/mine").await?,
        "only-in-a\n"
    );
    for id in [a.as_str(), b.as_str(), &sid(&fork)] {
        c.call_ok("session_stop", json!({ "session_id": id }))
            .await?;
    }
    c.call_ok("checkpoint_delete", json!({ "name": name }))
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_private_path_still_resumes_types_and_checkpoints() -> Result<()> {
    let s = server_with(&["--backend", "local", "--guest-memory", "private"]).await?;
    let c = &s.client;
    let info = c.call_ok("session_start", json!({})).await?;
    assert_eq!(info["memory"], "private", "{info}");
    assert_eq!(info["startup"], "ready_state", "{info}");
    let id = sid(&info);
    first_click_and_typing(c, &id).await?;
    guest(c, &id, "echo private > /dev/shm/mine").await?;
    let name = format!("private-{}", std::process::id());
    c.call_ok("checkpoint", json!({ "session_id": id, "name": name }))
        .await?;
    guest(c, &id, "echo changed > /dev/shm/mine").await?;
    c.call_ok("restore", json!({ "session_id": id, "checkpoint": name }))
        .await?;
    assert_eq!(guest(c, &id, "cat /dev/shm/mine").await?, "private\n");
    c.call_ok("session_stop", json!({ "session_id": id }))
        .await?;
    c.call_ok("checkpoint_delete", json!({ "name": name }))
        .await?;
    Ok(())
}
