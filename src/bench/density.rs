//! Density: what an idle session costs in memory (PSS and USS, not RSS, which counts the
//! template's shared pages in every session) and CPU, and how many idle sessions fit in a
//! memory budget, measured by starting them. Shared-memory sessions beside private ones, each
//! from its own server, in one run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::ms;
use crate::client::Client;

/// One QEMU process's memory (KiB) and CPU time (clock ticks).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Usage {
    pub(super) pss: u64,
    uss: u64,
    rss: u64,
    pub(super) ticks: u64,
}

/// The QEMU process of a session: the one whose command line names it (both backends: a
/// container's processes are the host's too).
pub(super) fn qemu_pid(session_id: &str) -> Option<u32> {
    let needle = format!("deskvm-{session_id}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|b| *b == 0)
            .any(|a| a == needle.as_bytes())
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

pub(super) fn usage(pid: u32) -> Option<Usage> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some(Usage {
        pss: field("Pss:"),
        uss: field("Private_Clean:") + field("Private_Dirty:"),
        rss: field("Rss:"),
        ticks,
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// What `n` idle sessions of one server cost.
pub struct Idle {
    pub sessions: usize,
    pub pss_mib: f64,
    pub uss_mib: f64,
    pub rss_mib: f64,
    /// Percent of one core per idle session.
    pub cpu_percent: f64,
    pub start_ms: Vec<f64>,
    /// Sum of PSS when the budget stopped the starts (MiB).
    pub total_pss_mib: f64,
}

/// Starts sessions until their summed PSS reaches `budget_mib` or `max` are running, lets them
/// idle, and measures them. Every session is stopped before returning.
pub async fn idle_sessions(client: &Client, max: usize, budget_mib: u64) -> Result<Idle> {
    let mut ids = Vec::new();
    let mut start_ms = Vec::new();
    let mut total_kib = 0;
    let result = async {
        while ids.len() < max && total_kib < budget_mib * 1024 {
            let t = Instant::now();
            let info = client.call_ok("session_start", json!({})).await?;
            let sid = super::session_id(&info)?;
            ids.push(sid.clone());
            client.screenshot(&sid, json!({})).await?;
            start_ms.push(ms(t.elapsed()));
            // Unreadable usage would never stop the loop: fail instead (QEMU runs as another
            // user without root, say).
            total_kib = 0;
            for s in &ids {
                let u = qemu_pid(s).and_then(usage).with_context(|| {
                    format!("cannot read the memory of session {s}'s QEMU (run the bench as root)")
                })?;
                total_kib += u.pss;
            }
        }
        // Idle: resumed guests settle (clock catch-up, the first redraws) before measuring.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pids: Vec<u32> = ids.iter().filter_map(|s| qemu_pid(s)).collect();
        let before: Vec<(u32, Usage)> =
            pids.iter().filter_map(|p| Some((*p, usage(*p)?))).collect();
        let window = Duration::from_secs(5);
        tokio::time::sleep(window).await;
        // Paired by pid: a process gone in between drops out of both.
        let pairs: Vec<(Usage, Usage)> = before
            .iter()
            .filter_map(|(p, b)| Some((usage(*p)?, *b)))
            .collect();
        let after: Vec<Usage> = pairs.iter().map(|(a, _)| *a).collect();
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let busy: u64 = pairs
            .iter()
            .map(|(a, b)| a.ticks.saturating_sub(b.ticks))
            .sum();
        let n = after.len().max(1) as f64;
        let mib = |f: fn(&Usage) -> u64| median(after.iter().map(f).collect()) as f64 / 1024.0;
        Ok::<_, anyhow::Error>(Idle {
            sessions: ids.len(),
            pss_mib: mib(|u| u.pss),
            uss_mib: mib(|u| u.uss),
            rss_mib: mib(|u| u.rss),
            cpu_percent: busy as f64 / hz / window.as_secs_f64() / n * 100.0,
            start_ms: start_ms.clone(),
            total_pss_mib: after.iter().map(|u| u.pss).sum::<u64>() as f64 / 1024.0,
        })
    }
    .await;
    for sid in &ids {
        let _ = client
            .call_ok("session_stop", json!({ "session_id": sid }))
            .await;
    }
    result
}

/// Shared-memory sessions (this bench's server) until `budget_mib`, and a few private ones
/// from a second server started with `--guest-memory private`, side by side.
/// The budget, or what the host has available less 2 GiB when that is less.
pub fn cap_budget(budget_mib: u64) -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(budget_mib, |kib| (kib / 1024).saturating_sub(2048));
    budget_mib.min(available)
}

pub async fn compare(
    client: &Client,
    exe: &Path,
    server_args: &[&str],
    env: &[(&str, &str)],
    max: usize,
    budget_mib: u64,
) -> Result<(Idle, Idle)> {
    let shared = idle_sessions(client, max, budget_mib).await?;
    let mut args = server_args.to_vec();
    args.extend(["--guest-memory", "private", "--max-sessions", "4"]);
    let private_server = Client::spawn(exe, &args, env).await?;
    let private = idle_sessions(&private_server, 4, budget_mib).await;
    private_server.close().await?;
    Ok((shared, private?))
}

pub fn print(shared: &Idle, private: &Idle, max: usize, budget_mib: u64) {
    for (what, i) in [("shared", shared), ("private", private)] {
        super::record(
            &format!("idle session ({what} memory)"),
            json!({ "pss_mib": i.pss_mib, "uss_mib": i.uss_mib, "rss_mib": i.rss_mib,
                    "cpu_percent_of_core": i.cpu_percent, "sessions": i.sessions }),
        );
        println!(
            "{:<38} PSS {:.0} MiB, USS {:.0} MiB, RSS {:.0} MiB; CPU {:.1}% of a core each ({} idle at once)",
            format!("idle session memory ({what})"),
            i.pss_mib,
            i.uss_mib,
            i.rss_mib,
            i.cpu_percent,
            i.sessions
        );
    }
    let why = if shared.sessions >= max {
        format!("stopped at --density {max}")
    } else {
        format!(
            "the {:.0} GiB budget was reached",
            budget_mib as f64 / 1024.0
        )
    };
    super::record(
        "idle sessions within the budget",
        json!({ "sessions": shared.sessions, "budget_mib": budget_mib, "total_pss_mib": shared.total_pss_mib,
                "stopped_at_cap": shared.sessions >= max,
                "ratio_pss_private_over_shared": private.pss_mib / shared.pss_mib.max(1.0) }),
    );
    println!(
        "{:<38} {} started, summed PSS {:.1} GiB ({why}); private PSS would fit {:.0}",
        "idle sessions within the budget",
        shared.sessions,
        shared.total_pss_mib / 1024.0,
        budget_mib as f64 / private.pss_mib.max(1.0)
    );
    super::summary(
        "start -> first screenshot, while filling",
        shared.start_ms.clone(),
    );
    println!(
        "{:<38} PSS ratio private/shared {:.1}x",
        "",
        private.pss_mib / shared.pss_mib.max(1.0)
    );
}
