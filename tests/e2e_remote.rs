//! Desktops on Docker engines that share nothing with deskvm but the Engine API: a second
//! dockerd in its own network namespace, reachable only over TCP with mutual TLS (a CA made for
//! the test), its own data root. deskvm gets only its address and client certificates.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use common::engine::TestEngine;
use common::*;
use serde_json::{json, Value};

/// The engine's `docker inspect` of a session's container.
fn inspect(engine: &TestEngine, sid: &str) -> Result<Value> {
    let (ok, out, err) = engine.docker(&["inspect", &format!("deskvm-{sid}")])?;
    assert!(ok, "docker inspect on {}: {err}", engine.name);
    Ok(serde_json::from_str::<Vec<Value>>(&out)?.remove(0))
}

/// Containers of this session on the engine, stopped ones included.
fn containers_there(engine: &TestEngine, sid: &str) -> Result<Vec<String>> {
    let filter = format!("label=deskvm.session={sid}");
    let (ok, out, err) =
        engine.docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])?;
    assert!(ok, "docker ps on {}: {err}", engine.name);
    Ok(out.lines().map(str::to_string).collect())
}

async fn wait_gone(engine: &TestEngine, sid: &str) -> Result<()> {
    for _ in 0..100 {
        if containers_there(engine, sid)?.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("session {sid}'s container is still on {}", engine.name);
}

/// A call on a session whose engine is gone fails as `session_failed`, naming the engine.
async fn fails_with_engine(c: &deskvm::client::Client, sid: &str, what: &str) -> Result<()> {
    for _ in 0..50 {
        let r = c.call("screenshot", json!({ "session_id": sid })).await?;
        if r.is_error == Some(true) {
            let s = r
                .structured_content
                .context("errors carry structured content")?;
            assert_eq!(s["error"], "session_failed", "{s}");
            let msg = s["message"].as_str().unwrap_or_default();
            assert!(msg.contains(what), "{msg}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("session {sid} kept working after its engine went away");
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A stopped container on the engine with deskvm's owner labels.
fn labelled_container(
    engine: &TestEngine,
    image: &str,
    name: &str,
    labels: &[(&str, String)],
) -> Result<()> {
    let mut args = vec!["create".to_string(), "--name".into(), name.into()];
    for (k, v) in labels {
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    args.extend([image.to_string(), "true".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = engine.docker(&args)?;
    assert!(ok, "docker create {name}: {err}");
    Ok(())
}

#[tokio::test]
async fn a_remote_engine_runs_a_desktop_through_the_engine_api_alone() -> Result<()> {
    let engine = TestEngine::start("rmt1", 31)?;
    let pushed = engine.push()?;

    // Reclaim on an engine others may use: a container of a deskvm on another machine (or one
    // that did not label its machine) is never judged; one of a dead deskvm of this machine
    // and boot is removed.
    let image = pushed["tag"].as_str().context("push names its tag")?;
    let ns = std::fs::read_link("/proc/self/ns/pid")?
        .to_string_lossy()
        .into_owned();
    let ns = ns
        .trim_start_matches("pid:[")
        .trim_end_matches(']')
        .to_string();
    let dead_pid = "999999".to_string();
    let foreign = [
        ("deskvm.pid", dead_pid.clone()),
        ("deskvm.session", "foreign1".into()),
        ("deskvm.machine", "0123456789abcdef0123456789abcdef".into()),
        ("deskvm.boot", "another-boot".into()),
    ];
    let unlabelled_machine = [
        ("deskvm.pid", dead_pid.clone()),
        ("deskvm.session", "foreign2".into()),
    ];
    let mine_dead = [
        ("deskvm.pid", dead_pid.clone()),
        ("deskvm.pid-start", "1".into()),
        ("deskvm.session", "deadmine".into()),
        ("deskvm.machine", read_trimmed("/etc/machine-id")),
        (
            "deskvm.boot",
            read_trimmed("/proc/sys/kernel/random/boot_id"),
        ),
        ("deskvm.pid-ns", ns),
    ];
    labelled_container(&engine, image, "dv-foreign1", &foreign)?;
    labelled_container(&engine, image, "dv-foreign2", &unlabelled_machine)?;
    labelled_container(&engine, image, "dv-deadmine", &mine_dead)?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskvm"))
        .args([
            "reclaim",
            "--apply",
            "--kind",
            "orphan_session",
            "--engine",
            &engine.engine_arg(),
        ])
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "reclaim --engine: {said}");
    assert_eq!(
        containers_there(&engine, "foreign1")?,
        ["dv-foreign1"],
        "{said}"
    );
    assert_eq!(
        containers_there(&engine, "foreign2")?,
        ["dv-foreign2"],
        "{said}"
    );
    assert!(containers_there(&engine, "deadmine")?.is_empty(), "{said}");
    assert!(said.contains("not judged"), "{said}");
    let arg = engine.engine_arg();
    let s = server_with(&["--backend", "docker", "--engine", &arg]).await?;
    let c = &s.client;
    let info = c.call_ok("session_start", json!({})).await?;
    assert_eq!(info["engine"], "rmt1", "{info}");
    assert_eq!(info["startup"], "ready_state", "{info}");
    assert!(
        info["placement"]
            .as_str()
            .unwrap_or_default()
            .contains("free memory"),
        "{info}"
    );
    let sid = sid(&info);

    // Nothing of this host is bound into the container, nothing is published, no network.
    let inspected = inspect(&engine, &sid)?;
    let host = &inspected["HostConfig"];
    assert!(
        host["Binds"].is_null() || host["Binds"] == json!([]),
        "binds: {}",
        host["Binds"]
    );
    assert!(
        inspected["Mounts"] == json!([]),
        "mounts: {}",
        inspected["Mounts"]
    );
    assert!(
        host["PortBindings"].is_null() || host["PortBindings"] == json!({}),
        "port bindings: {}",
        host["PortBindings"]
    );
    let ports = &inspected["NetworkSettings"]["Ports"];
    assert!(
        ports.is_null() || ports == &json!({}),
        "published ports: {ports}"
    );
    assert_eq!(host["NetworkMode"], "none");

    // The full round: the first click lands, typed text reads back exact, a screenshot.
    first_click_and_typing(c, &sid).await?;
    let (png, _) = c.screenshot(&sid, json!({})).await?;
    let img = image::load_from_memory(&png)?;
    assert_eq!((img.width(), img.height()), (1280, 800));

    // The live view reaches the VM's VNC socket through the Engine API's exec channel too
    // (nothing published, as inspected above): a person types into the terminal.
    let view = common::view::link(c, &sid, true).await?;
    let browser = deskvm_devtools::cdp::Browser::launch(1400, 1000).await?;
    let page = browser.open(&common::view::url(&view)).await?;
    common::view::canvas_matches_screenshot(c, &sid, &page).await?;
    let (px, py) = deskvm_devtools::probe::page_point(&page, 300, 250).await?;
    page.click(px, py).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    page.type_text("echo remote-person > /tmp/rp.txt\n").await?;
    assert_eq!(
        read_guest_file(c, &sid, "/tmp/rp.txt", 14).await?,
        "remote-person\n"
    );
    drop(browser);

    // Checkpoints are files on this host: refused by name, the session goes on.
    let (kind, msg) = tool_error(c, "checkpoint", json!({ "session_id": sid })).await?;
    assert_eq!(kind, "not_on_engine", "{msg}");
    c.call_ok("screenshot", json!({ "session_id": sid }))
        .await?;

    // An unknown engine name is refused with the valid ones.
    let (kind, msg) = tool_error(c, "session_start", json!({ "engine": "nowhere" })).await?;
    assert_eq!(kind, "invalid_params", "{msg}");
    assert!(msg.contains("rmt1"), "{msg}");

    // `docker kill` on that engine: the next call says the session failed.
    let (ok, _, err) = engine.docker(&["kill", &format!("deskvm-{sid}")])?;
    assert!(ok, "docker kill: {err}");
    fails_with_engine(c, &sid, "exited").await?;
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    wait_gone(&engine, &sid).await?;

    // A second session stops cleanly: its container is gone from the engine.
    let sid2 = common::sid(
        &c.call_ok("session_start", json!({ "engine": "rmt1" }))
            .await?,
    );
    c.call_ok("session_stop", json!({ "session_id": sid2 }))
        .await?;
    assert!(containers_there(&engine, &sid2)?.is_empty());
    s.client.close().await?;
    // The server's prepared container went with it: only the two foreign ones are left.
    let mut left = Vec::new();
    for _ in 0..50 {
        let (ok, out, err) = engine.docker(&[
            "ps",
            "-a",
            "--filter",
            "label=deskvm.pid",
            "--format",
            "{{.Names}}",
        ])?;
        assert!(ok, "{err}");
        left = out.lines().map(str::to_string).collect::<Vec<_>>();
        left.sort();
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, ["dv-foreign1", "dv-foreign2"]);
    a_silent_engine_ends_the_call_in_flight(&engine).await
}

/// The engine's network goes (nothing is reset, nothing answers) while a call runs there: the
/// call ends as `session_failed` once the engine's watchdog gives up on it, rather than waiting
/// on it for good; the session still stops, and the server serves on. Last: the engine stays
/// cut off.
async fn a_silent_engine_ends_the_call_in_flight(engine: &TestEngine) -> Result<()> {
    let s = server_with(&["--backend", "docker", "--engine", &engine.engine_arg()]).await?;
    let c = &s.client;
    let sid = common::sid(&c.call_ok("session_start", json!({})).await?);
    c.call_ok("screenshot", json!({ "session_id": sid }))
        .await?;
    let in_flight = c.call(
        "exec",
        json!({ "session_id": sid, "command": "sleep 120", "timeout_ms": 200000 }),
    );
    let cut = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        engine.partition()
    };
    // A hang detector only: the watchdog gives up after two silent pings (about 10 s).
    let (ended, cut) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(90), in_flight),
        cut
    );
    cut?;
    let r = ended.context("the call in flight never ended after its engine went silent")??;
    let err = r
        .structured_content
        .context("errors carry structured content")?;
    assert_eq!(r.is_error, Some(true), "{err}");
    assert_eq!(err["error"], "session_failed", "{err}");
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(msg.contains("stopped answering"), "{msg}");
    fails_with_engine(c, &sid, "rmt1").await?;
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    let list = c.call_ok("session_list", json!({})).await?;
    assert_eq!(list["engines"][0]["healthy"], false, "{list}");
    // And the server exits by itself (its prepared container is left to the next start's
    // janitor): rmcp's close sends SIGTERM after 3 s and SIGKILL after 6, and returns once the
    // child is gone, so a shutdown waiting on the engine shows as a close of 6 s or more.
    let closing = std::time::Instant::now();
    s.client.close().await?;
    let took = closing.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "the server had to be killed: its shutdown waited on the silent engine ({took:?})"
    );
    Ok(())
}

#[tokio::test]
async fn sessions_spread_over_two_engines_and_a_lost_engine_fails_only_its_own() -> Result<()> {
    let engine = TestEngine::start("rmt2", 32)?;
    engine.push()?;
    let arg = engine.engine_arg();
    let s = server_with(&["--backend", "docker", "--engine", "local", "--engine", &arg]).await?;
    let c = &s.client;
    let mut on: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..4 {
        let info = c.call_ok("session_start", json!({})).await?;
        let placement = info["placement"].as_str().unwrap_or_default();
        assert!(placement.contains("most free memory"), "{info}");
        let engine_name = info["engine"].as_str().context("engine in session_start")?;
        on.entry(engine_name.to_string())
            .or_default()
            .push(sid(&info));
    }
    let local = on.get("local").cloned().unwrap_or_default();
    let remote = on.get("rmt2").cloned().unwrap_or_default();
    assert!(
        !local.is_empty() && !remote.is_empty(),
        "not spread over both engines: {on:?}"
    );

    let list = c.call_ok("session_list", json!({})).await?;
    let engines = list["engines"]
        .as_array()
        .context("session_list lists engines")?;
    assert_eq!(engines.len(), 2, "{list}");
    for e in engines {
        assert_eq!(e["healthy"], true, "{e}");
        let mine = e["sessions"].as_array().map_or(0, Vec::len);
        let expected = if e["name"] == "local" {
            local.len()
        } else {
            remote.len()
        };
        assert_eq!(mine, expected, "{e}");
        assert!(e["memory_total_mib"].as_u64().unwrap_or(0) > 0, "{e}");
    }

    // The remote daemon dies: its sessions fail, clearly; the local ones keep serving.
    engine.kill_daemon()?;
    for sid in &remote {
        fails_with_engine(c, sid, "rmt2").await?;
    }
    for sid in &local {
        c.call_ok("screenshot", json!({ "session_id": sid }))
            .await?;
    }
    let list = c.call_ok("session_list", json!({})).await?;
    let down = list["engines"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == "rmt2"))
        .cloned()
        .context("rmt2 listed")?;
    assert_eq!(down["healthy"], false, "{down}");
    // The failed ones stop cleanly (their engine cannot be asked), and new sessions go where
    // they can run.
    for sid in &remote {
        c.call_ok("session_stop", json!({ "session_id": sid }))
            .await?;
    }
    let info = c.call_ok("session_start", json!({})).await?;
    assert_eq!(info["engine"], "local", "{info}");
    let (kind, msg) = tool_error(c, "session_start", json!({ "engine": "rmt2" })).await?;
    assert_eq!(kind, "invalid_params", "{msg}");
    assert!(msg.contains("not available"), "{msg}");
    for sid in local.iter().chain([&sid(&info)]) {
        c.call_ok("session_stop", json!({ "session_id": sid }))
            .await?;
    }
    s.client.close().await
}

/// Files in and out of a desktop on a remote engine (1 MiB, byte-exact); the network features
/// that need this host (`forward`, an allowlist) are refused there before anything starts.
#[tokio::test]
async fn remote_files_round_trip() -> Result<()> {
    let engine = TestEngine::start("rmt3", 33)?;
    engine.push()?;
    let arg = engine.engine_arg();
    let s = server_with(&[
        "--backend",
        "docker",
        "--engine",
        &arg,
        "--allow-forward",
        "4300",
    ])
    .await?;
    let c = &s.client;
    for refused in [
        json!({ "forward": ["127.0.0.1:4300"] }),
        json!({ "network": { "allow": ["example.com"] } }),
    ] {
        let (kind, msg) = tool_error(c, "session_start", refused.clone()).await?;
        assert_eq!(kind, "unavailable", "{refused}: {msg}");
    }
    let list = c.call_ok("session_list", json!({})).await?;
    assert_eq!(list["sessions"], json!([]), "{list}");

    let info = c.call_ok("session_start", json!({})).await?;
    assert_eq!(info["engine"], "rmt3", "{info}");
    let sid = sid(&info);
    net::round_trip(c, &sid, "/root/in/remote.bin", 1 << 20).await?;
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    wait_gone(&engine, &sid).await?;
    s.client.close().await
}
