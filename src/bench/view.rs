//! The live view's cost to the agent and its lag for the person (`--viewers`): screenshot
//! latency with no viewer and with N viewers attached (headless Chromium tabs on view links),
//! and the time from an agent's click to the change on a viewer's canvas (the pointer arriving
//! where the click went).
//!
//! Built only with `--features devtools`: the DevTools client is test code, kept out of the
//! product binary.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::json;

use deskvm_devtools::cdp::{Browser, Page};
use deskvm_devtools::probe;

use super::{metric, record, session_id, summary};
use crate::client::Client;

pub async fn measure(client: &Client, viewers: usize, shots: usize, clicks: usize) -> Result<()> {
    let info = client.call_ok("session_start", json!({})).await?;
    let sid = session_id(&info)?;
    let result = run(client, &sid, viewers, shots, clicks).await;
    client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    result
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn attach<'a>(
    browser: &'a Browser,
    client: &Client,
    sid: &str,
    n: usize,
) -> Result<Vec<Page<'a>>> {
    let mut pages = Vec::new();
    for _ in 0..n {
        let v = client
            .call_ok("session_view", json!({ "session_id": sid }))
            .await?;
        let page = browser.open(v["url"].as_str().context("view url")?).await?;
        probe::wait_live(&page, Duration::from_secs(60)).await?;
        pages.push(page);
    }
    Ok(pages)
}

/// CPU time (clock ticks) of the processes `pick` chooses by pid and name.
fn cpu_ticks(pick: impl Fn(u32, &str) -> bool) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            if !pick(pid, name) {
                return None;
            }
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Where the host's CPU went while screenshots ran: QEMU and the viewers' browser, in
/// percent of one core.
struct Cpu {
    qemu: u64,
    browser: u64,
    at: Instant,
}

impl Cpu {
    fn now(qemu: Option<u32>) -> Cpu {
        Cpu {
            qemu: cpu_ticks(|pid, _| Some(pid) == qemu),
            browser: cpu_ticks(|_, name| name.starts_with("chrom")),
            at: Instant::now(),
        }
    }

    /// (QEMU, browser) since `self`, in percent of a core.
    fn since(&self, qemu: Option<u32>) -> (f64, f64) {
        let now = Cpu::now(qemu);
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let s = self.at.elapsed().as_secs_f64().max(1e-6);
        let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / s * 100.0;
        (pct(self.qemu, now.qemu), pct(self.browser, now.browser))
    }
}

/// Screenshots with no viewer and with `viewers`, in alternating blocks (this host's noise
/// drifts over seconds): the two figures and their ratio.
async fn side_by_side(
    browser: &Browser,
    client: &Client,
    sid: &str,
    viewers: usize,
    shots: usize,
    screen: &str,
) -> Result<()> {
    const BLOCKS: usize = 3;
    let qemu = super::density::qemu_pid(sid);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut cpu_without, mut cpu_with) = ((0.0, 0.0), (0.0, 0.0));
    let add = |acc: &mut (f64, f64), (q, b): (f64, f64)| {
        acc.0 += q / BLOCKS as f64;
        acc.1 += b / BLOCKS as f64;
    };
    for _ in 0..BLOCKS {
        let cpu = Cpu::now(qemu);
        without.extend(super::transport::shots(client, sid, shots.div_ceil(BLOCKS)).await?);
        add(&mut cpu_without, cpu.since(qemu));
        let pages = attach(browser, client, sid, viewers).await?;
        let cpu = Cpu::now(qemu);
        with.extend(super::transport::shots(client, sid, shots.div_ceil(BLOCKS)).await?);
        add(&mut cpu_with, cpu.since(qemu));
        for p in pages {
            p.close().await?;
        }
        // The bridge sees the tab go and QEMU drops the client.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (a, b) = (
        format!("screenshot, {screen}, no viewer"),
        format!("screenshot, {screen}, {viewers} viewers"),
    );
    summary(&a, without);
    summary(&b, with);
    if let (Some(x), Some(y)) = (metric(&a, "p50"), metric(&b, "p50")) {
        record(
            &format!("live view cost, {screen}"),
            json!({ "ratio": y / x, "viewers": viewers }),
        );
        println!(
            "{:<38} {:.2}x ({viewers} viewers against none, p50)",
            format!("live view cost, {screen}"),
            y / x
        );
    }
    record(
        &format!("host CPU while screenshots ran, {screen}"),
        json!({ "unit": "% of a core", "qemu_without": cpu_without.0, "qemu_with": cpu_with.0, "browser_with": cpu_with.1 }),
    );
    println!(
        "{:<38} QEMU {:.0}% of a core without viewers, {:.0}% with; the viewers' Chromium {:.0}%",
        "", cpu_without.0, cpu_with.0, cpu_with.1
    );
    Ok(())
}

/// A terminal that scrolls without pause: a screen that changes all the time, which is when a
/// VNC server has work to do for its viewers.
const BUSY: &str = "xterm -geometry 100x30+480+40 -title busy -e sh -c 'while :; do ls -l /usr/bin; done' >/dev/null 2>&1 &";

async fn run(
    client: &Client,
    sid: &str,
    viewers: usize,
    shots: usize,
    clicks: usize,
) -> Result<()> {
    client
        .call_ok(
            "wait",
            json!({ "session_id": sid, "ms": 200, "until_stable": true }),
        )
        .await?;
    let browser = Browser::launch(1400, 1000).await?;
    side_by_side(&browser, client, sid, viewers, shots, "still screen").await?;

    // The pointer moving to a click's point shows on the canvas: watch a box around each
    // point, click, and take the first animation frame that differs.
    let pages = attach(&browser, client, sid, 1).await?;
    let page = &pages[0];
    page.front().await?;
    let mut lag = Vec::new();
    for i in 0..clicks {
        let (x, y) = if i % 2 == 0 { (1000, 650) } else { (1100, 720) };
        probe::watch_region(page, x - 4, y - 4, 24, 24).await?;
        // More than 2 s after the previous click: no input barrier in the figure.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let sent = now_ms();
        client
            .call_ok("click", json!({ "session_id": sid, "x": x, "y": y }))
            .await?;
        let seen = probe::changed_at(page, Duration::from_secs(10)).await?;
        lag.push(seen.saturating_sub(sent) as f64);
    }
    summary("agent click -> viewer's canvas", lag);
    for p in pages {
        p.close().await?;
    }

    // A screen that never stops changing.
    client
        .call_ok("exec", json!({ "session_id": sid, "command": BUSY }))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = side_by_side(&browser, client, sid, viewers, shots, "busy screen").await;
    client
        .call_ok(
            "exec",
            json!({ "session_id": sid, "command": "pkill -f 'ls -l /usr/bin'; pkill -f 'title busy'; true" }),
        )
        .await?;
    busy
}
