//! Per guest image (`--images minimal,workstation`): its ready state's size, start to first
//! screenshot, what one idle session costs (PSS, CPU), and on images with the applications,
//! Firefox to a rendered local page (cold, and via a fork of a checkpoint taken with it open)
//! and LibreOffice Calc to its window. One server, images side by side in one run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{ms, record, session_id, summary};
use crate::client::Client;
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::storage::Layout;

const PAGE: &str = "<!doctype html><title>deskvm bench page</title><body style='background:#0a5;font:40px sans-serif'><h1>bench</h1>";

async fn start(client: &Client, args: serde_json::Value) -> Result<String> {
    let info = client.call_ok("session_start", args).await?;
    session_id(&info)
}

async fn stop(client: &Client, sid: &str) -> Result<()> {
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    Ok(())
}

async fn exec(client: &Client, sid: &str, command: &str) -> Result<String> {
    client.exec_stdout(sid, command).await
}

/// How long until the focused window's title contains `part`.
async fn until_title(client: &Client, sid: &str, part: &str) -> Result<Duration> {
    Ok(client
        .wait_for_title(sid, part, Duration::from_secs(300))
        .await?
        .1)
}

/// The private ready state's files on disk (the local QEMU build's, for the image's defaults).
async fn ready_state_bytes(image: &GuestImage) -> Result<u64> {
    let local = crate::backend::local::LocalBackend::new().await?;
    let qemu = crate::backend::Backend::qemu_version(&local).to_string();
    for accel in [crate::vm::spec::Accel::Tcg, crate::vm::spec::Accel::Kvm] {
        let spec = crate::session::machine_spec(image, accel, None, false);
        if let Some(r) = ReadyState::find(image, &qemu, &spec) {
            let size = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            return Ok(size(r.state()) + size(r.disk()));
        }
    }
    bail!("image {} has no ready state for {qemu}", image.name)
}

/// One idle session's PSS (MiB) and CPU (% of one core) after `settle` of quiet.
async fn idle_cost(client: &Client, name: &str, settle: Duration) -> Result<(f64, f64)> {
    let sid = start(client, json!({ "image": name })).await?;
    let result = async {
        client.screenshot(&sid, json!({})).await?;
        tokio::time::sleep(settle).await;
        let pid = super::density::qemu_pid(&sid).context("the session's QEMU process")?;
        let before = super::density::usage(pid).context("reading /proc")?;
        let window = Duration::from_secs(20);
        tokio::time::sleep(window).await;
        let after = super::density::usage(pid).context("reading /proc")?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu = (after.ticks - before.ticks) as f64 / hz / window.as_secs_f64() * 100.0;
        Ok::<_, anyhow::Error>((after.pss as f64 / 1024.0, cpu))
    }
    .await;
    stop(client, &sid).await?;
    result
}

/// Firefox on a local page: cold launch to its window, then a fork of a checkpoint taken with
/// it open to its first screenshot (its title checked in the fork).
async fn firefox(client: &Client, name: &str) -> Result<(f64, f64)> {
    let sid = start(client, json!({ "image": name })).await?;
    let checkpoint = format!("bench-firefox-{}", std::process::id());
    let result = async {
        exec(
            client,
            &sid,
            &format!("printf %s \"{PAGE}\" > /tmp/bench.html"),
        )
        .await?;
        exec(
            client,
            &sid,
            "setsid firefox-esr --new-window /tmp/bench.html >/dev/null 2>&1 &",
        )
        .await?;
        let cold = until_title(client, &sid, "deskvm bench page").await?;
        client
            .call_ok(
                "wait",
                json!({ "session_id": sid, "ms": 500, "until_stable": true }),
            )
            .await?;
        client
            .call_ok(
                "checkpoint",
                json!({ "session_id": sid, "name": checkpoint }),
            )
            .await?;
        let t = Instant::now();
        let fork = start(client, json!({ "from_checkpoint": checkpoint })).await?;
        client.screenshot(&fork, json!({})).await?;
        let forked = t.elapsed();
        let title = exec(client, &fork, "xdotool getactivewindow getwindowname").await?;
        stop(client, &fork).await?;
        anyhow::ensure!(
            title.contains("deskvm bench page"),
            "the fork shows {title:?}"
        );
        Ok::<_, anyhow::Error>((ms(cold), ms(forked)))
    }
    .await;
    stop(client, &sid).await?;
    let _ = client
        .call_ok("checkpoint_delete", json!({ "name": checkpoint }))
        .await;
    result
}

/// LibreOffice Calc, cold, to its window.
async fn calc(client: &Client, name: &str) -> Result<f64> {
    let sid = start(client, json!({ "image": name })).await?;
    let result = async {
        exec(client, &sid, "setsid soffice --calc >/dev/null 2>&1 &").await?;
        Ok::<_, anyhow::Error>(ms(until_title(client, &sid, "LibreOffice Calc").await?))
    }
    .await;
    stop(client, &sid).await?;
    result
}

/// Every figure for each image in `names`; `apps_runs` cold launches of each application.
pub async fn measure(
    client: &Client,
    names: &[String],
    starts: usize,
    apps_runs: usize,
) -> Result<()> {
    let layout = Layout::from_env();
    for name in names {
        let image = GuestImage::locate(&layout, name)?;
        let bytes = ready_state_bytes(&image).await?;
        println!(
            "{:<38} {:.0} MB",
            format!("{name}: ready state on disk"),
            bytes as f64 / 1e6
        );
        record(
            &format!("{name}: ready state"),
            json!({ "unit": "bytes", "value": bytes }),
        );
        let mut first = Vec::new();
        for _ in 0..starts.max(1) {
            let t = Instant::now();
            let sid = start(client, json!({ "image": name })).await?;
            client.screenshot(&sid, json!({})).await?;
            first.push(ms(t.elapsed()));
            stop(client, &sid).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        summary(&format!("{name}: start to first screenshot"), first);
        let (pss, cpu) = idle_cost(client, name, Duration::from_secs(20)).await?;
        println!(
            "{:<38} PSS {pss:.0} MiB, CPU {cpu:.1} % of a core",
            format!("{name}: one idle session")
        );
        record(
            &format!("{name}: idle session"),
            json!({ "pss_mib": pss, "cpu_percent": cpu }),
        );
        if image.meta.user == "root" {
            continue;
        }
        let (mut cold, mut fork, mut calc_ms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..apps_runs.max(1) {
            let (c, f) = firefox(client, name).await?;
            cold.push(c);
            fork.push(f);
            calc_ms.push(calc(client, name).await?);
        }
        summary(&format!("{name}: Firefox page, cold"), cold);
        summary(&format!("{name}: Firefox page, fork of checkpoint"), fork);
        summary(&format!("{name}: LibreOffice Calc window, cold"), calc_ms);
    }
    Ok(())
}
