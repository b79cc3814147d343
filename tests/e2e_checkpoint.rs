//! Checkpoints on a real guest through the real binary: restore in place (files and screen as
//! they were, twice in a row), forks running at once from one checkpoint, and a checkpoint that
//! outlives its server and cannot be deleted while a fork runs on it.

mod common;

use anyhow::Result;
use common::*;
use deskvm::client::Client;
use serde_json::{json, Value};

/// The desktop background's colour at a point the terminal does not cover.
async fn background(c: &Client, sid: &str) -> Result<[u8; 3]> {
    wait_stable(c, sid).await?;
    let (png, _) = c.screenshot(sid, json!({})).await?;
    let img = image::load_from_memory(&png)?.into_rgb8();
    Ok(img.get_pixel(1200, 720).0)
}

async fn set_state(c: &Client, sid: &str, text: &str, colour: &str) -> Result<()> {
    guest(
        c,
        sid,
        &format!("echo {text} > /root/ck.txt; sync; xsetroot -solid '{colour}'"),
    )
    .await?;
    Ok(())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u16>())
}

#[tokio::test]
async fn restore_brings_back_files_and_screen_and_forks_run_apart() -> Result<()> {
    let s = server().await?;
    let c = &s.client;
    let sid = start(c).await?;
    set_state(c, &sid, "one", "#aa0000").await?;
    let red = background(c, &sid).await?;
    assert_eq!(red, [0xaa, 0, 0]);
    // 24 MB the first checkpoint's disk layer holds and the second's must not.
    guest(
        c,
        &sid,
        "head -c 24000000 /dev/urandom > /root/big.bin && sync && echo ok",
    )
    .await?;
    let name = unique("ck");
    let ck = c
        .call_ok("checkpoint", json!({ "session_id": sid, "name": name }))
        .await?;
    assert_eq!(ck["name"], name.as_str());
    assert!(ck["bytes"].as_u64().unwrap_or(0) > 1_000_000, "{ck}");
    assert!(ck["pause_ms"].as_u64().is_some(), "{ck}");
    // The session runs on after the checkpoint.
    assert_eq!(guest(c, &sid, "cat /root/ck.txt").await?, "one\n");

    for next in ["two", "three"] {
        set_state(c, &sid, next, "#0000aa").await?;
        assert_eq!(background(c, &sid).await?, [0, 0, 0xaa]);
        let r = c
            .call_ok("restore", json!({ "session_id": sid, "checkpoint": name }))
            .await?;
        assert!(r["ok"].as_bool().unwrap_or(false), "{r}");
        assert_eq!(
            guest(c, &sid, "cat /root/ck.txt").await?,
            "one\n",
            "after restore"
        );
        assert_eq!(background(c, &sid).await?, red, "the checkpoint's screen");
    }
    // Input still reaches the restored desktop.
    c.call_ok("click", json!({ "session_id": sid, "x": 400, "y": 300 }))
        .await?;
    c.call_ok(
        "type",
        json!({ "session_id": sid, "text": "echo typed-after-restore > /root/t.txt\n" }),
    )
    .await?;
    assert_eq!(
        read_guest_file(c, &sid, "/root/t.txt", 5).await?,
        "typed-after-restore\n"
    );

    // Three forks at once, each typing its own line.
    let starts = (0..3).map(|_| c.call_ok("session_start", json!({ "from_checkpoint": name })));
    let forks: Vec<String> = futures::future::try_join_all(starts)
        .await?
        .iter()
        .map(sid_of)
        .collect();
    // They run at once; each types in turn (four TCG guests typing at once on two cores starve
    // each other's keyboard queues).
    let mut lines = Vec::new();
    for (i, f) in forks.iter().enumerate() {
        // As an agent would: look until the new desktop has settled, then act.
        wait_stable(c, f).await?;
        c.call_ok("click", json!({ "session_id": f, "x": 400, "y": 300 }))
            .await?;
        c.call_ok(
            "type",
            json!({ "session_id": f, "text": format!("echo fork-{i} >> /root/ck.txt\n") }),
        )
        .await?;
        let l = read_guest_file(c, f, "/root/ck.txt", 11).await?;
        if l.len() < 11 {
            let (png, _) = c.screenshot(f, json!({})).await?;
            std::fs::write(browser::artifact_dir().join("fork-typing-failure.png"), png)?;
        }
        lines.push(l);
    }
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            l,
            &format!("one\nfork-{i}\n"),
            "fork {i} sees only its own line"
        );
    }
    assert_eq!(
        guest(c, &sid, "cat /root/ck.txt").await?,
        "one\n",
        "the source is unaffected"
    );
    assert_eq!(
        background(c, &forks[0]).await?,
        red,
        "a fork starts on the checkpoint's screen"
    );

    // Two sessions checkpoint under one name at once: one gets it, the other a clear error,
    // and its disk is left consistent (its next checkpoint restores).
    let same = unique("same");
    let both = futures::future::join(
        c.call(
            "checkpoint",
            json!({ "session_id": forks[0], "name": same }),
        ),
        c.call(
            "checkpoint",
            json!({ "session_id": forks[1], "name": same }),
        ),
    )
    .await;
    let errors: Vec<bool> = [&both.0, &both.1]
        .iter()
        .map(|r| r.as_ref().map(|r| r.is_error == Some(true)).unwrap_or(true))
        .collect();
    assert_eq!(errors.iter().filter(|e| **e).count(), 1, "{both:?}");
    let loser = if errors[0] { &forks[0] } else { &forks[1] };
    let other = unique("other");
    c.call_ok("checkpoint", json!({ "session_id": loser, "name": other }))
        .await?;
    guest(c, loser, "echo after-other >> /root/ck.txt").await?;
    c.call_ok(
        "restore",
        json!({ "session_id": loser, "checkpoint": other }),
    )
    .await?;
    assert!(!guest(c, loser, "cat /root/ck.txt")
        .await?
        .contains("after-other"));

    let (kind, msg) = tool_error(c, "checkpoint_delete", json!({ "name": name })).await?;
    assert_eq!(kind, "in_use", "{msg}");
    assert!(msg.contains(&forks[0]) || msg.contains("session"), "{msg}");
    for f in &forks {
        c.call_ok("session_stop", json!({ "session_id": f }))
            .await?;
    }
    for n in [&same, &other] {
        c.call_ok("checkpoint_delete", json!({ "name": n })).await?;
    }
    // The restored source runs on the checkpoint's disk too.
    let (kind, msg) = tool_error(c, "checkpoint_delete", json!({ "name": name })).await?;
    assert_eq!(kind, "in_use", "{msg}");
    assert!(msg.contains(&sid), "{msg}");

    // A second checkpoint is a layer on the first: it holds what changed since, and both
    // restore after the session moved on from them.
    set_state(c, &sid, "four", "#00aa00").await?;
    let green = background(c, &sid).await?;
    let name2 = unique("ck2");
    let ck2 = c
        .call_ok("checkpoint", json!({ "session_id": sid, "name": name2 }))
        .await?;
    assert_eq!(ck2["parent"], name.as_str(), "{ck2}");
    let layer = |v: &Value| v["layer_bytes"].as_u64().unwrap_or(0);
    assert!(layer(&ck) > 24_000_000, "{ck}");
    assert!(
        layer(&ck2) < 12_000_000,
        "the second layer holds only what changed since the first: {ck2}"
    );
    set_state(c, &sid, "five", "#0000aa").await?;
    for (to, text, colour) in [
        (&name2, "four\n", green),
        (&name, "one\n", red),
        (&name2, "four\n", green),
    ] {
        c.call_ok("restore", json!({ "session_id": sid, "checkpoint": to }))
            .await?;
        assert_eq!(
            guest(c, &sid, "cat /root/ck.txt").await?,
            text,
            "restored {to}"
        );
        assert_eq!(background(c, &sid).await?, colour, "the screen of {to}");
    }
    let list = c.call_ok("checkpoint_list", json!({})).await?;
    let listed = list["checkpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name2.as_str()).cloned())
        .unwrap_or_default();
    let deps = listed["depends_on"].to_string();
    assert!(
        deps.contains(&format!("checkpoint {name}")) && deps.contains("ready state"),
        "{list}"
    );

    let ev = events(&s.data.join("reviews").join(&sid))?;
    for t in ["checkpoint", "restore"] {
        assert!(ev.iter().any(|e| e["tool"] == t), "{t} is in the ledger");
    }
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    // The first is the second's lower layer: kept while the second exists.
    let (kind, msg) = tool_error(c, "checkpoint_delete", json!({ "name": name })).await?;
    assert_eq!(kind, "in_use", "{msg}");
    assert!(msg.contains(&format!("checkpoint {name2}")), "{msg}");
    for n in [&name2, &name] {
        let d = c.call_ok("checkpoint_delete", json!({ "name": n })).await?;
        assert!(d["bytes_freed"].as_u64().unwrap_or(0) > 0, "{d}");
    }
    let (kind, _) = tool_error(
        c,
        "restore",
        json!({ "session_id": "0000000000000000", "checkpoint": name }),
    )
    .await?;
    assert_eq!(kind, "unknown_session");
    Ok(())
}

fn sid_of(v: &Value) -> String {
    v["session_id"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_checkpoint_outlives_its_server_and_forks_after_a_restart() -> Result<()> {
    let (dirs, _guard) = temp_dirs(&["t", "d"])?;
    let (runtime, data) = (&dirs[0], &dirs[1]);
    let name = unique("kept");
    {
        let a = server_in(&["--backend", "local"], runtime, data).await?;
        let sid = start(&a.client).await?;
        set_state(&a.client, &sid, "before-restart", "#00aa00").await?;
        a.client
            .call_ok("checkpoint", json!({ "session_id": sid, "name": name }))
            .await?;
        a.client.close().await?;
    }
    let b = server_in(&["--backend", "local"], runtime, data).await?;
    let c = &b.client;
    let list = c.call_ok("checkpoint_list", json!({})).await?;
    let found = list["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(found["bytes"].as_u64().unwrap_or(0) > 0, "{list}");
    let fork = sid_of(
        &c.call_ok("session_start", json!({ "from_checkpoint": name }))
            .await?,
    );
    assert_eq!(
        guest(c, &fork, "cat /root/ck.txt").await?,
        "before-restart\n"
    );
    assert_eq!(background(c, &fork).await?, [0, 0xaa, 0]);
    let (kind, _) = tool_error(
        c,
        "session_start",
        json!({ "from_checkpoint": "no-such-checkpoint" }),
    )
    .await?;
    assert_eq!(kind, "unknown_checkpoint");
    let (kind, _) = tool_error(c, "checkpoint_delete", json!({ "name": name })).await?;
    assert_eq!(kind, "in_use");
    c.call_ok("session_stop", json!({ "session_id": fork }))
        .await?;
    c.call_ok("checkpoint_delete", json!({ "name": name }))
        .await?;
    Ok(())
}

/// A containerised session checkpointed and restored: QEMU in the container writes the state to
/// the runtime dir it shares with the host, and loads it back from the cache it sees read-only.
/// Then across backends (one QEMU build): a local server forks the container's checkpoint and
/// checkpoints its fork, and the container's session restores that local checkpoint.
#[tokio::test]
async fn docker_checkpoint_and_restore_across_backends() -> Result<()> {
    // Checkpoints belong to a state root: both servers share this test's.
    let (dirs, _guard) = temp_dirs(&["t", "d"])?;
    let (runtime, data) = (&dirs[0], &dirs[1]);
    let s = server_in(&["--backend", "docker"], runtime, data).await?;
    let c = &s.client;
    let info = c.call_ok("session_start", json!({})).await?;
    assert_eq!(info["backend"], "docker", "{info}");
    let sid = sid_of(&info);
    set_state(c, &sid, "in-container", "#aa00aa").await?;
    let name = unique("dock");
    let ck = c
        .call_ok("checkpoint", json!({ "session_id": sid, "name": name }))
        .await?;
    assert_eq!(ck["backend"], "docker", "{ck}");
    set_state(c, &sid, "changed", "#0000aa").await?;
    c.call_ok("restore", json!({ "session_id": sid, "checkpoint": name }))
        .await?;
    assert_eq!(guest(c, &sid, "cat /root/ck.txt").await?, "in-container\n");
    assert_eq!(background(c, &sid).await?, [0xaa, 0, 0xaa]);

    let l = server_in(&["--backend", "local"], runtime, data).await?;
    let lc = &l.client;
    let fork = lc
        .call_ok("session_start", json!({ "from_checkpoint": name }))
        .await?;
    assert_eq!(fork["backend"], "local", "{fork}");
    let fork = sid_of(&fork);
    assert_eq!(
        guest(lc, &fork, "cat /root/ck.txt").await?,
        "in-container\n"
    );
    assert_eq!(background(lc, &fork).await?, [0xaa, 0, 0xaa]);
    set_state(lc, &fork, "local-fork", "#00aaaa").await?;
    let local = unique("lcl");
    let lck = lc
        .call_ok("checkpoint", json!({ "session_id": fork, "name": local }))
        .await?;
    assert_eq!(
        lck["parent"],
        name.as_str(),
        "a layer on the container's checkpoint: {lck}"
    );
    lc.call_ok("session_stop", json!({ "session_id": fork }))
        .await?;

    c.call_ok("restore", json!({ "session_id": sid, "checkpoint": local }))
        .await?;
    assert_eq!(guest(c, &sid, "cat /root/ck.txt").await?, "local-fork\n");
    assert_eq!(background(c, &sid).await?, [0, 0xaa, 0xaa]);
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    for n in [&local, &name] {
        c.call_ok("checkpoint_delete", json!({ "name": n })).await?;
    }
    Ok(())
}
