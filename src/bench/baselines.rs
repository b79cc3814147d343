//! Baselines beside deskvm in the same run: the physical limit (raw QMP on a VM resumed from the
//! same ready state: no MCP, no PNG) and the peers' usual stack (an X server on the host with
//! `xdotool` for input and ImageMagick's `import` for screenshots, as Anthropic's computer-use
//! demo and E2B Desktop do it). Ratios are computed against this run's own deskvm figures.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde_json::json;

use super::{metric, ms, pct, record, summary, METRICS};
use crate::backend::local::LocalBackend;
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::session::{boot, machine_spec};
use crate::storage::{self, Layout, Owner};
use crate::vm::spec::{Accel, RuntimeFiles};

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    pct(&v, 0.5)
}

/// QMP `query-status` and `screendump` (PPM, not read back) on a local VM of the ready state.
pub async fn raw_qmp(n: usize, accel: &str, image: &str) -> Result<(f64, f64)> {
    let layout = Layout::from_env();
    let image = GuestImage::locate(&layout, image)?;
    let local = LocalBackend::new().await?;
    let qemu = crate::backend::Backend::qemu_version(&local).to_string();
    // The sessions' accelerator: a ready state of the other would measure another machine.
    let accel: Accel = accel.parse().map_err(anyhow::Error::msg)?;
    let spec = machine_spec(&image, accel, None, false);
    let ready = ReadyState::find(&image, &qemu, &spec)
        .context("no ready state for the local QEMU (run `deskvm setup`)")?;
    let files = RuntimeFiles {
        dir: layout
            .sessions()
            .join(format!("bench-raw-{}", std::process::id())),
    };
    storage::session_dirs(&files, &Owner::me("session", Some("bench-raw")))?;
    let booted = boot::start_vm(&local, "bench-raw", &image, spec, Some(&ready), &files).await;
    let result = async {
        let mut b = booted?;
        let qmp = b.vm.qmp();
        let (mut status, mut dump) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let t = Instant::now();
            qmp.status().await?;
            status.push(ms(t.elapsed()));
        }
        for _ in 0..n {
            let t = Instant::now();
            qmp.screendump(&files.screen()).await?;
            dump.push(ms(t.elapsed()));
        }
        b.instance.stop().await;
        summary("limit: QMP query-status round trip", status.clone());
        summary("limit: QMP screendump to PPM", dump.clone());
        Ok::<_, anyhow::Error>((p50(status), p50(dump)))
    }
    .await;
    let _ = storage::remove_session_dirs(&files);
    result
}

/// An X server for the peers' stack; everything it started dies with it.
struct Display {
    name: String,
    children: Vec<std::process::Child>,
}

impl Drop for Display {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// No X server holds display `n`: a running X server keeps a lock naming its pid; one killed
/// with SIGKILL leaves its lock and socket behind (its pid is gone), and a socket without a lock
/// is left over too.
fn display_free(n: u32) -> bool {
    match std::fs::read_to_string(format!("/tmp/.X{n}-lock")) {
        Ok(pid) => pid
            .trim()
            .parse::<i32>()
            // SAFETY: kill with signal 0 only checks that the process exists.
            .is_ok_and(|p| unsafe { libc::kill(p, 0) } != 0),
        Err(_) => true,
    }
}

fn start_display(width: u32, height: u32) -> Result<Display> {
    let n = (90..120)
        .find(|&n| display_free(n))
        .context("no free X display number")?;
    // What a killed X server left behind (its lock names a dead process).
    let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
    let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
    let name = format!(":{n}");
    let mut d = Display {
        name: name.clone(),
        children: Vec::new(),
    };
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
    };
    let mut xvfb = Command::new("Xvfb");
    xvfb.args([
        &name,
        "-screen",
        "0",
        &format!("{width}x{height}x24"),
        "-nolisten",
        "tcp",
    ]);
    quiet(&mut xvfb);
    d.children.push(xvfb.spawn().context("starting Xvfb")?);
    let socket = format!("/tmp/.X11-unix/X{n}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&socket).exists() {
        if Instant::now() > deadline {
            bail!("Xvfb {name} did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The demo's stack: a window manager, then a terminal to type into.
    for argv in [vec!["openbox"], vec!["xterm", "-geometry", "80x24+100+100"]] {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]).env("DISPLAY", &name);
        quiet(&mut c);
        d.children
            .push(c.spawn().with_context(|| format!("starting {}", argv[0]))?);
        std::thread::sleep(Duration::from_millis(700));
    }
    Ok(d)
}

fn run(display: &Display, argv: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .env("DISPLAY", &display.name)
        .output()
        .with_context(|| format!("running {}", argv[0]))?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The programs the peers' stack is made of, checked before a bench starts: a baseline that
/// cannot be measured is an error (`--no-baselines` leaves the baselines out on purpose).
pub fn missing_peer_tools() -> Result<()> {
    let tools = ["Xvfb", "xdotool", "import", "xterm", "openbox"];
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        bail!(
            "the peers' stack cannot be measured: {} missing; `sudo deskvm setup` installs xvfb, \
             xdotool, imagemagick, xterm and openbox (or pass --no-baselines)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The peers' stack timed the way deskvm is: screenshot, click, typing; each against deskvm's
/// p50 from this run (`ours_*`). The 2 s the demo sleeps after each action before its
/// screenshot is added as documented, not slept.
pub fn peers(n: usize, chars: usize, ours_shot: f64, ours_click: f64, ours_cps: f64) -> Result<()> {
    missing_peer_tools()?;
    let d = start_display(1280, 800)?;
    let (mut shots, mut bytes) = (Vec::new(), 0usize);
    for _ in 0..n {
        let t = Instant::now();
        bytes += run(&d, &["import", "-window", "root", "png:-"])?.len();
        shots.push(ms(t.elapsed()));
    }
    let mut clicks = Vec::new();
    for i in 0..n {
        let (x, y) = (300 + (i % 20) as u32 * 10, 300);
        let t = Instant::now();
        run(
            &d,
            &[
                "xdotool",
                "mousemove",
                &x.to_string(),
                &y.to_string(),
                "click",
                "1",
            ],
        )?;
        clicks.push(ms(t.elapsed()));
    }
    let mut rng = rand::rng();
    let text: String = (0..chars)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    let t = Instant::now();
    run(&d, &["xdotool", "type", "--delay", "12", &text])?;
    let cps = chars as f64 / t.elapsed().as_secs_f64();
    let (shot, click) = (p50(shots.clone()), p50(clicks.clone()));
    summary("peers: import -window root (PNG)", shots);
    summary("peers: xdotool mousemove+click", clicks);
    println!(
        "{:<38} {:.1} chars/s (xdotool type --delay 12, the demo's setting); {} KiB per screenshot",
        "peers: typing",
        cps,
        bytes / n.max(1) / 1024
    );
    let wait = 2000.0;
    println!(
        "{:<38} screenshot {:.1}x, click {:.1}x, typing {:.1}x; with the demo's 2 s wait after an action, click then screenshot {:.0} ms vs deskvm's {:.0} ms ({:.1}x)",
        "ratio peers / deskvm (p50)",
        shot / ours_shot,
        click / ours_click,
        ours_cps / cps,
        click + wait + shot,
        ours_click + ours_shot,
        (click + wait + shot) / (ours_click + ours_shot)
    );
    record(
        "peers' stack",
        json!({
            "screenshot_p50_ms": shot, "click_p50_ms": click, "type_chars_per_s": cps,
            "screenshot_kib": bytes / n.max(1) / 1024,
            "ratio_screenshot": shot / ours_shot, "ratio_click": click / ours_click,
            "ratio_typing_deskvm_over_peers": ours_cps / cps,
            "with_wait_click_then_screenshot_ms": click + wait + shot,
            "ratio_with_wait": (click + wait + shot) / (ours_click + ours_shot),
        }),
    );
    Ok(())
}

/// The baselines, against this run's own figures.
pub async fn measure(o: &super::Options) -> Result<()> {
    let accel = METRICS
        .lock()
        .expect("metrics poisoned")
        .iter()
        .find(|m| m["name"] == "session")
        .and_then(|m| m["accelerator"].as_str().map(str::to_string))
        .unwrap_or_else(|| "tcg".into());
    let (status, dump) = raw_qmp(o.shots.max(10), &accel, &o.image).await?;
    let ours_shot = metric("screenshot 1280x800 PNG", "p50").unwrap_or(f64::NAN);
    let ours_click = metric("click, after 2 s idle", "p50").unwrap_or(f64::NAN);
    let ours_cps = metric("type (random printable ASCII)", "value").unwrap_or(f64::NAN);
    println!(
        "{:<38} screenshot {:.1}x the bare screendump ({:.1} ms), a QMP round trip is {:.2} ms",
        "ratio deskvm / limit (p50)",
        ours_shot / dump,
        dump,
        status
    );
    record(
        "limit",
        json!({ "qmp_round_trip_p50_ms": status, "screendump_p50_ms": dump,
                "ratio_screenshot_over_screendump": ours_shot / dump }),
    );
    peers(
        o.shots.max(10),
        o.chars.max(100),
        ours_shot,
        ours_click,
        ours_cps,
    )
}
