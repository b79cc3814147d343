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

/// Idle sessions measured at once, beside one alone.
const IDLE_AT_ONCE: usize = 4;

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

/// Idle sessions of one image at once: each one's PSS (MiB) and CPU (% of one core), averaged,
/// after `settle` of quiet. Several at once because the template's pages are shared: PSS
/// splits them among the sessions mapping them, so one session alone carries them all.
async fn idle_cost(client: &Client, name: &str, n: usize, settle: Duration) -> Result<(f64, f64)> {
    let mut sids = Vec::new();
    let result = async {
        for _ in 0..n.max(1) {
            let sid = start(client, json!({ "image": name })).await?;
            client.screenshot(&sid, json!({})).await?;
            sids.push(sid);
        }
        tokio::time::sleep(settle).await;
        let pids = sids
            .iter()
            .map(|sid| super::density::qemu_pid(sid).context("a session's QEMU process"))
            .collect::<Result<Vec<_>>>()?;
        let read = |pids: &[u32]| {
            pids.iter()
                .map(|&p| super::density::usage(p).context("reading /proc"))
                .collect::<Result<Vec<_>>>()
        };
        let before = read(&pids)?;
        let window = Duration::from_secs(20);
        tokio::time::sleep(window).await;
        let after = read(&pids)?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks: u64 = after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.ticks - b.ticks)
            .sum();
        let pss: u64 = after.iter().map(|a| a.pss).sum();
        let k = pids.len() as f64;
        let cpu = ticks as f64 / hz / window.as_secs_f64() * 100.0 / k;
        Ok::<_, anyhow::Error>((pss as f64 / 1024.0 / k, cpu))
    }
    .await;
    for sid in &sids {
        stop(client, sid).await?;
    }
    result
}

/// Writes the bench page into the guest and opens it in Firefox: how long until its window.
async fn open_page(client: &Client, sid: &str) -> Result<Duration> {
    exec(
        client,
        sid,
        &format!("printf %s \"{PAGE}\" > /tmp/bench.html"),
    )
    .await?;
    exec(
        client,
        sid,
        "setsid firefox-esr --new-window /tmp/bench.html >/dev/null 2>&1 &",
    )
    .await?;
    until_title(client, sid, "deskvm bench page").await
}

/// Firefox on a local page: cold launch to its window, then a fork of a checkpoint taken with
/// it open to its first screenshot (its title checked in the fork).
async fn firefox(client: &Client, name: &str) -> Result<(f64, f64)> {
    let sid = start(client, json!({ "image": name })).await?;
    let checkpoint = format!("bench-firefox-{}", std::process::id());
    let result = async {
        let cold = open_page(client, &sid).await?;
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

/// What the guest and its QEMU use with Firefox (on a page) and Calc open at once, settled:
/// the guest's used memory (MemTotal - MemAvailable, MiB), its total, and QEMU's PSS (MiB).
/// This is what the image's default memory has to hold.
async fn apps_memory(client: &Client, name: &str) -> Result<(f64, f64, f64)> {
    let sid = start(client, json!({ "image": name })).await?;
    let result = async {
        exec(client, &sid, "setsid soffice --calc >/dev/null 2>&1 &").await?;
        until_title(client, &sid, "LibreOffice Calc").await?;
        open_page(client, &sid).await?;
        tokio::time::sleep(Duration::from_secs(15)).await;
        let meminfo = exec(client, &sid, "cat /proc/meminfo").await?;
        let kib = |key: &str| -> Result<f64> {
            let line = meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .with_context(|| format!("{key} not in /proc/meminfo"))?;
            let v = line.split_whitespace().nth(1).unwrap_or("");
            v.parse::<f64>()
                .with_context(|| format!("{key} in /proc/meminfo: {line}"))
        };
        let (total, available) = (kib("MemTotal:")?, kib("MemAvailable:")?);
        let pid = super::density::qemu_pid(&sid).context("the session's QEMU process")?;
        let pss = super::density::usage(pid).context("reading /proc")?.pss;
        Ok::<_, anyhow::Error>((
            (total - available) / 1024.0,
            total / 1024.0,
            pss as f64 / 1024.0,
        ))
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
        for n in [1, IDLE_AT_ONCE] {
            let (pss, cpu) = idle_cost(client, name, n, Duration::from_secs(20)).await?;
            println!(
                "{:<38} PSS {pss:.0} MiB, CPU {cpu:.1} % of a core, each",
                format!("{name}: {n} idle session(s)")
            );
            record(
                &format!("{name}: idle sessions x{n}"),
                json!({ "sessions": n, "pss_mib_each": pss, "cpu_percent_each": cpu }),
            );
        }
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
        let (used, total, pss) = apps_memory(client, name).await?;
        println!(
            "{:<38} guest used {used:.0} of {total:.0} MiB, QEMU PSS {pss:.0} MiB",
            format!("{name}: Firefox + Calc open")
        );
        record(
            &format!("{name}: Firefox + Calc open"),
            json!({ "guest_used_mib": used, "guest_total_mib": total, "qemu_pss_mib": pss }),
        );
    }
    Ok(())
}
