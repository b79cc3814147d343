//! The Docker backend end to end: the real binary with `--backend docker`, a real rmcp client, a
//! real Docker engine (started by `deskvm setup`) running QEMU in one container per session.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::*;
use serde_json::json;

async fn docker_server() -> Result<Server> {
    server_with(&["--backend", "docker"]).await
}

async fn start_docker_session(c: &deskvm::client::Client) -> Result<String> {
    let info = c.call_ok("session_start", json!({})).await.context(
        "session_start on the Docker backend (engine and runtime image come from `deskvm setup`)",
    )?;
    assert_eq!(info["backend"], "docker", "{info}");
    assert_eq!(info["startup"], "ready_state", "{info}");
    Ok(common::sid(&info))
}

/// Names of the containers labelled with this session, stopped ones included (`ps -a`): a
/// container that exited but was not removed still counts.
fn containers_of(sid: &str) -> Result<Vec<String>> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=deskvm.session={sid}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .context("running docker ps")?;
    assert!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

#[tokio::test]
async fn docker_first_click_lands_and_typed_text_reads_back_exactly() -> Result<()> {
    let s = docker_server().await?;
    let c = &s.client;
    let sid = start_docker_session(c).await?;
    first_click_and_typing(c, &sid).await?;
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    s.client.close().await
}

#[tokio::test]
async fn docker_container_lives_and_dies_with_its_session() -> Result<()> {
    let s = docker_server().await?;
    let c = &s.client;
    let sid = start_docker_session(c).await?;
    let dir = s.runtime.join("s").join(&sid);
    assert_eq!(containers_of(&sid)?, vec![format!("deskvm-{sid}")]);
    assert!(
        dir.join("qmp.sock").exists(),
        "QMP socket in the session runtime dir"
    );

    // No published ports, no network, the labels operators filter on.
    let inspect = Command::new("docker")
        .args(["inspect", "--format", "{{json .HostConfig.PortBindings}} {{.HostConfig.NetworkMode}} {{index .Config.Labels \"deskvm.version\"}}", &format!("deskvm-{sid}")])
        .output()?;
    let inspect = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    assert!(
        inspect.starts_with("{} none ") || inspect.starts_with("null none "),
        "{inspect}"
    );

    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    assert!(
        containers_of(&sid)?.is_empty(),
        "the container is gone after session_stop"
    );
    assert!(!dir.exists(), "the runtime dir is gone after session_stop");
    // The review outlives the container and says where the session ran.
    let x = c
        .call_ok("export_review", json!({ "session_id": sid }))
        .await?;
    let review: serde_json::Value = serde_json::from_slice(&std::fs::read(
        std::path::Path::new(x["dir"].as_str().unwrap()).join("review.json"),
    )?)?;
    assert_eq!(review["backend"], "docker", "{review}");
    assert_eq!(review["state"], "stopped", "{review}");
    assert_eq!(x["steps"], 2, "session_start and session_stop: {x}");
    s.client.close().await
}

#[tokio::test]
async fn docker_kill_fails_the_session_and_others_keep_serving() -> Result<()> {
    let s = docker_server().await?;
    let c = &s.client;
    let victim = start_docker_session(c).await?;
    let other = start_docker_session(c).await?;
    c.screenshot(&victim, json!({})).await?;

    let killed = Command::new("docker")
        .args(["kill", &format!("deskvm-{victim}")])
        .status()?;
    assert!(killed.success());
    let t = Instant::now();
    let mut failed = None;
    while t.elapsed() < Duration::from_secs(10) {
        let r = c
            .call("screenshot", json!({ "session_id": victim }))
            .await?;
        if r.is_error == Some(true) {
            failed = r.structured_content;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = failed.expect("a killed container must fail its session");
    assert_eq!(failed["error"], "session_failed", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exited"),
        "{failed}"
    );
    eprintln!(
        "session reported failed {} ms after docker kill",
        t.elapsed().as_millis()
    );

    // The server keeps serving the other session.
    let (png, _) = c.screenshot(&other, json!({})).await?;
    assert_eq!(image::load_from_memory(&png)?.width(), 1280);
    c.call_ok("session_stop", json!({ "session_id": victim }))
        .await?;
    c.call_ok("session_stop", json!({ "session_id": other }))
        .await?;
    s.client.close().await
}

/// Containers of a server instance (`deskvm.instance` label), running or not, with their
/// session label.
fn containers_of_instance(instance: &str) -> Result<Vec<(String, String)>> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=deskvm.instance={instance}"),
            "--format",
            "{{.Names}} {{.Label \"deskvm.session\"}}",
        ])
        .output()
        .context("running docker ps")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect())
}

/// A Docker server keeps the next session's container started ahead (QEMU's command line
/// handed over at `session_start`), the next start uses it, and nothing of it outlives the
/// server.
#[tokio::test]
async fn the_next_sessions_container_is_started_ahead_and_removed_with_the_server() -> Result<()> {
    let s = docker_server().await?;
    let c = &s.client;
    let first = start_docker_session(c).await?;
    let marker = std::fs::read_to_string(s.runtime.join("s").join(&first).join(".deskvm-owned"))?;
    let instance = serde_json::from_str::<serde_json::Value>(&marker)?["instance"]
        .as_str()
        .context("the marker names its instance")?
        .to_string();
    // Beside the first session's container, one more of this server's: prepared, no QEMU yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    let prepared = loop {
        let others: Vec<_> = containers_of_instance(&instance)?
            .into_iter()
            .filter(|(_, sid)| *sid != first)
            .collect();
        if let [(_, sid)] = others.as_slice() {
            break sid.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no container prepared for the next session: {others:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        s.runtime.join("s").join(&prepared).is_dir(),
        "the prepared container's runtime dir exists"
    );
    let second = start_docker_session(c).await?;
    assert_eq!(
        second, prepared,
        "the next session runs in the prepared container"
    );
    first_click_and_typing(c, &second).await?;
    c.call_ok("session_stop", json!({ "session_id": second }))
        .await?;
    assert!(containers_of(&second)?.is_empty(), "stop removes it");

    let runtime = s.runtime.clone();
    s.client.close().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = containers_of_instance(&instance)?;
        let dirs: Vec<_> = std::fs::read_dir(runtime.join("s"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        if left.is_empty() && dirs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a stopped server left containers {left:?} and runtime dirs {dirs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A host service forwarded into a Docker session (no network otherwise) and a 1 MiB file in
/// and out of it.
#[tokio::test]
async fn docker_forward_and_files() -> Result<()> {
    let svc = net::HostService::start(&net::marker("docker"))?;
    let port = svc.port;
    let ports = port.to_string();
    let s = server_with(&[
        "--backend",
        "docker",
        "--allow-forward",
        &ports,
        "--resolve",
        "allowed.test=127.0.0.1",
    ])
    .await?;
    let c = &s.client;
    // A forward and an allow list at once: both reach this host from the container's QEMU
    // through the runtime dir's unix sockets.
    let info = c
        .call_ok(
            "session_start",
            json!({ "forward": [format!("127.0.0.1:{port}")], "network": { "allow": [format!("allowed.test:{port}")] } }),
        )
        .await?;
    assert_eq!(info["backend"], "docker", "{info}");
    assert_eq!(info["network"]["mode"], "allow", "{info}");
    assert_eq!(
        info["network"]["forwards"][0]["guest"],
        format!("host.deskvm.internal:{port}"),
        "{info}"
    );
    let sid = common::sid(&info);
    // The forward, then the allowed name through the proxy: the same page either way.
    for url in [
        format!("http://host.deskvm.internal:{port}/"),
        format!("http://allowed.test:{port}/"),
    ] {
        let before = svc.connections();
        let out = net::sh(c, &sid, &format!("curl -sS --max-time 20 {url}")).await?;
        let page = out["stdout"].as_str().unwrap_or_default();
        assert!(page.contains(&svc.title), "{url}: {out}");
        assert_eq!(svc.connections(), before + 1, "{url}: one connection");
    }
    let out = net::sh(
        c,
        &sid,
        "curl -s -o /dev/null -w '%{http_code}' --max-time 20 http://denied.test/",
    )
    .await?;
    assert_eq!(out["stdout"], "403", "{out}");
    net::round_trip(c, &sid, "/root/in/docker.bin", 1 << 20).await?;
    c.call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    s.client.close().await
}
