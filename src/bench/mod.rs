//! `deskvm bench`: the numbers in BENCHMARKS.md, measured through a real MCP client against the
//! real server and guest, so they include everything an agent would wait for.
//!
//! The live view's rows drive headless Chromium through the `deskvm-devtools` test crate, so
//! they are built only with `--features devtools`.

mod baselines;
mod checkpoint;
mod density;
mod disk;
mod remote;
mod report;
mod starts;
mod transport;
mod typing;
#[cfg(feature = "devtools")]
mod view;

pub(crate) use report::{metric, ms, pct, record, summary, METRICS};

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::client::Client;
use crate::session::boot::TERMINAL_POINT;

pub struct Options {
    pub starts: usize,
    pub shots: usize,
    pub clicks: usize,
    pub chars: usize,
    pub cold: bool,
    /// Length of the scripted session that measures the review ledger (0: skip).
    pub ledger_actions: usize,
    /// Timed `reclaim` reports (0: skip).
    pub reclaim_runs: usize,
    /// Checkpoints, restores and forks measured (0: skip).
    pub checkpoints: usize,
    /// Most idle sessions started to measure density (0: skip), within `budget_gib`.
    pub density: usize,
    pub budget_gib: u64,
    /// Also compare stdio with streamable HTTP, and run this many HTTP clients at once.
    pub http_clients: Option<usize>,
    /// Passed on to `deskvm serve`.
    pub server_args: Vec<String>,
    /// Also compare this engine (`--engine` syntax) with the local one: push, start,
    /// screenshot, click, typing.
    pub remote_engine: Option<String>,
    pub insecure_engine: bool,
    /// Live viewers attached while screenshots are measured again (0: skip the live view).
    pub viewers: usize,
    /// Also write every figure as JSON here.
    pub json: Option<std::path::PathBuf>,
    /// Measure the baselines (raw QMP, the peers' stack) beside deskvm; their tools missing is
    /// an error, found before anything runs.
    pub baselines: bool,
}

pub async fn run(o: Options) -> Result<()> {
    if o.baselines {
        baselines::missing_peer_tools()?;
    }
    let exe = std::env::current_exe()?;
    let most = o.density.max(4).to_string();
    let mut args: Vec<&str> = o.server_args.iter().map(String::as_str).collect();
    args.extend(["--max-sessions", &most]);
    // The bench's reviews and sessions go to directories of its own, removed at the end, so
    // its disk figures count only its own sessions.
    // Its checkpoints go to a state root of its own too: the bench starts from nothing a user
    // made and leaves nothing behind but the image store's artifacts.
    let data = std::env::temp_dir().join(format!("deskvm-bench-{}", std::process::id()));
    let runtime = std::env::temp_dir().join(format!("deskvm-bench-rt-{}", std::process::id()));
    let state = std::env::temp_dir().join(format!("deskvm-bench-st-{}", std::process::id()));
    let (data_env, rt_env) = (data.to_string_lossy(), runtime.to_string_lossy());
    let state_env = state.to_string_lossy();
    // Every server of the run (the main one and those compared beside it) uses these.
    let env = [
        ("RUST_LOG", "warn,qapi=error"),
        ("DESKVM_DATA_DIR", &*data_env),
        ("DESKVM_RUNTIME_DIR", &*rt_env),
        ("DESKVM_STATE_DIR", &*state_env),
    ];
    let client = Client::spawn(&exe, &args, &env).await?;
    let mut result = run_with(&client, &o).await;
    if result.is_ok() {
        result = starts::docker_beside(&exe, &env, o.starts, o.chars).await;
    }
    if result.is_ok() && o.baselines {
        result = baselines::measure(&o).await;
    }
    if let (Ok(()), Some(engine)) = (&result, &o.remote_engine) {
        let r = remote::Remote {
            engine,
            insecure: o.insecure_engine,
            starts: o.starts,
            shots: o.shots,
            clicks: o.clicks,
            chars: o.chars.min(4000),
        };
        result = remote::compare(&exe, &env, &r).await;
    }
    if result.is_ok() && o.viewers > 0 {
        // Beside the main figures: a host without Chromium (or a build without the DevTools
        // client) still gets the rest.
        if let Err(e) = live_view(&client, &o).await {
            println!("{:<38} not measured: {e:#}", "live view");
            record("live view", json!({ "error": format!("{e:#}") }));
        }
    }
    if result.is_ok() && o.reclaim_runs > 0 {
        result = disk::reclaim_report_time(&client, o.reclaim_runs).await;
    }
    if result.is_ok() && o.checkpoints > 0 {
        result = checkpoint::measure(&client, o.checkpoints).await;
    }
    if result.is_ok() && o.density > 0 {
        let base: Vec<&str> = o.server_args.iter().map(String::as_str).collect();
        let budget = density::cap_budget(o.budget_gib * 1024);
        result = density::compare(&client, &exe, &base, &env, o.density, budget)
            .await
            .map(|(shared, private)| density::print(&shared, &private, o.density, budget));
    }
    if let (Ok(()), Some(clients)) = (&result, o.http_clients) {
        result = transport::compare(&client, &args, &env, o.shots.max(10), clients).await;
    }
    client.close().await?;
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&runtime);
    let _ = std::fs::remove_dir_all(&state);
    if let (Ok(()), Some(path)) = (&result, &o.json) {
        let run = json!({
            "format": "deskvm-bench/1",
            "deskvm": env!("CARGO_PKG_VERSION"),
            "unix_time": crate::storage::owner::unix_now(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "server_args": o.server_args,
            "metrics": *METRICS.lock().expect("metrics poisoned"),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&run)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    result
}

/// The live view's rows: they drive headless Chromium, so they need the DevTools client.
async fn live_view(client: &Client, o: &Options) -> Result<()> {
    #[cfg(feature = "devtools")]
    return view::measure(client, o.viewers, o.shots, (o.clicks / 3).max(5)).await;
    #[cfg(not(feature = "devtools"))]
    {
        let _ = (client, o);
        anyhow::bail!(
            "the view rows need a build with --features devtools \
             (cargo build --release --features devtools)"
        )
    }
}

async fn run_with(client: &Client, o: &Options) -> Result<()> {
    println!(
        "deskvm bench: {} cores, through an MCP client over stdio",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    starts::measure(client, o.starts, starts::NAME).await?;

    if o.cold {
        let t = Instant::now();
        // A machine with no saved ready state (other memory size) must boot.
        let info = client
            .call_ok("session_start", json!({ "memory_mb": 1536 }))
            .await?;
        let sid = session_id(&info)?;
        client.screenshot(&sid, json!({})).await?;
        summary(
            &format!(
                "start ({}) -> first screenshot",
                info["startup"].as_str().unwrap_or("?")
            ),
            vec![ms(t.elapsed())],
        );
        client
            .call_ok("session_stop", json!({ "session_id": sid }))
            .await?;
    }

    let info = client.call_ok("session_start", json!({})).await?;
    let sid = session_id(&info)?;
    record(
        "session",
        json!({ "backend": info["backend"], "accelerator": info["accelerator"], "memory": info["memory"] }),
    );
    println!(
        "{:<38} {} backend, {} accelerator",
        "session",
        info["backend"].as_str().unwrap_or("?"),
        info["accelerator"].as_str().unwrap_or("?")
    );
    if let Some(kib) = qemu_rss_kib(&sid) {
        record(
            "memory per session (RSS)",
            json!({ "unit": "MiB", "value": kib / 1024 }),
        );
        println!(
            "{:<38} {} MiB (QEMU RSS, 1024 MiB guest, after resume)",
            "memory per session",
            kib / 1024
        );
    }
    if info["backend"] == "docker" {
        let out = std::process::Command::new("docker")
            .args([
                "stats",
                "--no-stream",
                "--format",
                "{{.MemUsage}}",
                &format!("deskvm-{sid}"),
            ])
            .output();
        if let Ok(out) = out {
            println!(
                "{:<38} {} (docker stats: container cgroup)",
                "",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
    let mut shots = Vec::new();
    let mut bytes = 0usize;
    for _ in 0..o.shots {
        let t = Instant::now();
        let (png, _) = client.screenshot(&sid, json!({})).await?;
        shots.push(ms(t.elapsed()));
        bytes += png.len();
    }
    summary("screenshot 1280x800 PNG", shots);
    record(
        "screenshot 1280x800 PNG bytes",
        json!({ "unit": "KiB", "value": bytes / o.shots.max(1) / 1024 }),
    );
    println!(
        "{:<38} {} KiB per screenshot",
        "",
        bytes / o.shots.max(1) / 1024
    );
    let mut half = Vec::new();
    for _ in 0..o.shots {
        let t = Instant::now();
        client.screenshot(&sid, json!({ "scale": 0.5 })).await?;
        half.push(ms(t.elapsed()));
    }
    summary("screenshot scale 0.5", half);
    client.screenshot(&sid, json!({})).await?;

    // The desktop background: a left click there changes nothing visible.
    let mut clicks = Vec::new();
    for i in 0..o.clicks {
        let t = Instant::now();
        client
            .call_ok(
                "click",
                json!({ "session_id": sid, "x": 1000 + (i % 50) as u32, "y": 700 }),
            )
            .await?;
        clicks.push(ms(t.elapsed()));
    }
    summary("click, back to back (input barrier)", clicks);
    let mut idle = Vec::new();
    for i in 0..(o.clicks / 3).max(1) {
        // More than 2 s after the previous click: no barrier, as when an agent looks first.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let t = Instant::now();
        client
            .call_ok(
                "click",
                json!({ "session_id": sid, "x": 1000 + i as u32, "y": 700 }),
            )
            .await?;
        idle.push(ms(t.elapsed()));
    }
    summary("click, after 2 s idle", idle);

    let mut mismatched = 0;
    if o.chars > 0 {
        let one = typing::ascii(client, &sid, o.chars).await?;
        mismatched += one.mismatched;
        typing::report("type (random printable ASCII)", &[one]);
        // Two guests typing at once: this one and a second.
        let info = client.call_ok("session_start", json!({})).await?;
        let second = session_id(&info)?;
        let (a, b) = tokio::join!(
            typing::ascii(client, &sid, o.chars),
            typing::ascii(client, &second, o.chars)
        );
        let both = [a?, b?];
        mismatched += both.iter().map(|t| t.mismatched).sum::<usize>();
        typing::report("type, two guests at once", &both);
        client
            .call_ok("session_stop", json!({ "session_id": second }))
            .await?;
    }
    if o.chars > 0 {
        for pool in [typing::POOL_16, typing::POOL_40] {
            typing::unicode(client, &sid, (o.chars / 40).clamp(20, 250), pool).await?;
        }
    }
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    if o.ledger_actions > 0 {
        ledger_cost(client, o.ledger_actions, Duration::ZERO).await?;
        // As an agent calls: a model thinks between calls, and the after-frame capture of the
        // previous action has usually finished by then.
        ledger_cost(
            client,
            (o.ledger_actions / 3).max(10),
            Duration::from_secs(1),
        )
        .await?;
    }
    if mismatched > 0 {
        bail!("typed text was not read back exactly: {mismatched} characters missing, extra or out of place");
    }
    Ok(())
}

/// Resident memory of the session's QEMU process.
fn qemu_rss_kib(session_id: &str) -> Option<u64> {
    let pid = density::qemu_pid(session_id)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The id of a session `session_start` answered with.
pub(crate) fn session_id(info: &serde_json::Value) -> Result<String> {
    Ok(info["session_id"]
        .as_str()
        .context("no session_id")?
        .to_string())
}

/// The review ledger's cost over a scripted session of `n` actions, `pause` apart (none is the
/// worst case for capture: the next call always interrupts the previous action's after-frame).
async fn ledger_cost(client: &Client, n: usize, pause: Duration) -> Result<()> {
    let info = client.call_ok("session_start", json!({})).await?;
    let sid = session_id(&info)?;
    let (tx, ty) = TERMINAL_POINT;
    for i in 0..n {
        let (tool, args) = match i % 10 {
            0 => ("screenshot", json!({})),
            1 => ("click", json!({ "x": tx, "y": ty })),
            2 => ("type", json!({ "text": format!("echo step-{i}") })),
            3 => ("key", json!({ "keys": "Return" })),
            4 => ("screenshot", json!({ "scale": 0.5 })),
            5 => ("scroll", json!({ "x": 300, "y": 200, "dy": 1 })),
            6 => ("mouse_move", json!({ "x": 500 + (i % 7) * 10, "y": 300 })),
            7 => (
                "drag",
                json!({ "from": {"x": 50, "y": 150}, "to": {"x": 120, "y": 190} }),
            ),
            8 => ("exec", json!({ "command": "true" })),
            _ => ("screenshot", json!({})),
        };
        let mut args = args;
        args["session_id"] = sid.clone().into();
        tokio::time::sleep(pause).await;
        client.call_ok(tool, args).await?;
    }
    let x = client
        .call_ok(
            "export_review",
            json!({ "session_id": sid, "name": format!("bench-{n}") }),
        )
        .await?;
    let before = disk::before_stop(client, &sid).await?;
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;

    let review: serde_json::Value = serde_json::from_slice(&std::fs::read(
        std::path::Path::new(x["dir"].as_str().context("no export dir")?).join("review.json"),
    )?)?;
    let o = &review["reply_overhead_us"];
    let bytes = &review["bytes"];
    let per = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN) / n as f64 / 1024.0;
    let rhythm = if pause.is_zero() {
        "back to back".to_string()
    } else {
        format!("{} ms apart", pause.as_millis())
    };
    println!(
        "{:<38} p50={:>6.2} ms  p95={:>6.2} ms  max={:>6.2} ms (n={}, {} actions {rhythm})",
        "review ledger: added to each reply",
        o["p50"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        o["p95"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        o["max"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        o["n"],
        n
    );
    println!(
        "{:<38} {:.1} KiB per action stored ({} frames, timeline {:.1} KiB); every referenced frame as its own PNG: {:.1} KiB per action",
        "review ledger: bytes",
        (bytes["shots"].as_f64().unwrap_or(0.0) + bytes["timeline"].as_f64().unwrap_or(0.0)) / n as f64 / 1024.0,
        review["counts"]["shots"],
        bytes["timeline"].as_f64().unwrap_or(0.0) / 1024.0,
        per(&bytes["without_dedupe"]),
    );
    disk::after_stop(client, n, before).await
}
