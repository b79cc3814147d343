//! Bringing a VM to a usable desktop: resume a ready state, or cold boot and wait for the guest's
//! own readiness signal; and making the ready state in the first place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::SessionError;
use crate::backend::{Backend, Instance};
use crate::guest_image::ready::ReadyState;
use crate::guest_image::recipe::InputProbe;
use crate::guest_image::GuestImage;
use crate::storage::IoContext;
use crate::vm::spec::{RuntimeFiles, VmSpec};
use crate::vm::{Button, Vm, VmError};

/// Line the guest writes to its first serial port once the recipe's `ready_when` holds.
pub const READY_MARKER: &str = "DESKVM_READY";
/// Line it writes when `ready_when` still failed after its own wait (300 s).
pub const NOT_READY_MARKER: &str = "DESKVM_NOT_READY";
/// The workstation desktop took 157 s to report ready under TCG on a loaded 2-core host.
pub const COLD_BOOT_TIMEOUT: Duration = Duration::from_secs(360);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Startup {
    /// Resumed from a saved ready state.
    ReadyState,
    /// Booted the guest kernel (no ready state for this QEMU build and machine).
    ColdBoot,
    /// An imported disk's first start: booted through its firmware, saved as the image's
    /// ready state, and resumed from it (later starts only resume).
    FirstBoot,
}

pub struct Booted {
    pub vm: Vm,
    pub instance: Box<dyn Instance>,
    pub startup: Startup,
}

pub async fn qemu_img_overlay(backing: &Path, overlay: &Path) -> Result<(), SessionError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(overlay)
        .output()
        .await
        .map_err(|e| {
            SessionError::Setup(format!(
                "could not run qemu-img (apt-get install qemu-utils): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(SessionError::Setup(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Starts a VM in `files.dir`: from `ready` when given, else a cold boot of `image`.
pub async fn start_vm(
    backend: &dyn Backend,
    id: &str,
    image: &GuestImage,
    mut spec: VmSpec,
    ready: Option<&ReadyState>,
    files: &RuntimeFiles,
) -> Result<Booted, SessionError> {
    let t = Instant::now();
    let backing: PathBuf = ready.map(|r| r.disk()).unwrap_or_else(|| image.base());
    if backend.files_on_host() {
        qemu_img_overlay(&backing, &files.disk()).await?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "overlay created");
    } else {
        spec.backing = Some(backing);
    }
    spec.incoming = ready.map(|r| r.state());
    let (width, height) = (spec.width, spec.height);
    let instance = backend.launch(id, &spec, files).await?;
    let exited = instance.exited();
    let attach = Vm::attach(instance.link(), width, height, Duration::from_secs(30));
    let mut vm = tokio::select! {
        vm = attach => vm?,
        reason = exit_reason(exited.clone()) => {
            return Err(SessionError::Setup(reason.unwrap_or_else(|| "qemu exited".into())));
        }
    };
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "QMP connected");
    let startup = if ready.is_some() {
        if let Some(state) = spec.deferred_incoming() {
            vm.qmp().load_deferred(state).await.map_err(VmError::from)?;
        }
        vm.qmp()
            .resume_incoming(Duration::from_secs(60))
            .await
            .map_err(VmError::from)?;
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "ready state loaded, guest running"
        );
        Startup::ReadyState
    } else if image.boots_kernel() {
        wait_for_desktop(&mut vm, &exited, COLD_BOOT_TIMEOUT).await?;
        Startup::ColdBoot
    } else {
        wait_for_quiet_screen(&mut vm, &exited, COLD_BOOT_TIMEOUT).await?;
        Startup::ColdBoot
    };
    Ok(Booted {
        vm,
        instance,
        startup,
    })
}

/// Resolves with the VM's exit reason once it is gone.
pub async fn exit_reason(
    mut exited: tokio::sync::watch::Receiver<Option<String>>,
) -> Option<String> {
    let reason = exited
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|r| r.clone());
    reason
}

/// Waits for the guest's readiness line on the serial port, then for the screen to settle.
/// Pixels alone are not enough: the console sits still at the final resolution before X starts.
pub async fn wait_for_desktop(
    vm: &mut Vm,
    exited: &tokio::sync::watch::Receiver<Option<String>>,
    timeout: Duration,
) -> Result<(), SessionError> {
    let started = Instant::now();
    loop {
        if let Some(reason) = exited.borrow().clone() {
            return Err(SessionError::Setup(format!(
                "the guest stopped while booting: {reason}"
            )));
        }
        let serial = vm
            .read_file(&vm.files.serial())
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if let Some(line) = serial.lines().find(|l| l.contains(NOT_READY_MARKER)) {
            return Err(SessionError::Setup(format!(
                "the desktop said it is not ready: {}",
                line.trim()
            )));
        }
        if serial.contains(READY_MARKER) {
            break;
        }
        if started.elapsed() > timeout {
            let tail: Vec<&str> = serial.lines().rev().take(5).collect();
            return Err(SessionError::Setup(format!(
                "the desktop did not report ready within {} s (serial log tail: {})",
                timeout.as_secs(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    vm.settle(Duration::from_secs(20), Duration::from_millis(300), 3)
        .await?;
    Ok(())
}

/// A disk deskvm did not build says nothing when it is ready: it counts as booted once its
/// screen has been still for 10 s (firmware, boot loader and kernel messages all move it).
pub async fn wait_for_quiet_screen(
    vm: &mut Vm,
    exited: &tokio::sync::watch::Receiver<Option<String>>,
    timeout: Duration,
) -> Result<(), SessionError> {
    let started = Instant::now();
    // The first seconds are the firmware's: a still BIOS screen is not a booted guest.
    tokio::time::sleep(Duration::from_secs(5)).await;
    loop {
        if let Some(reason) = exited.borrow().clone() {
            return Err(SessionError::Setup(format!(
                "the guest stopped while booting: {reason}"
            )));
        }
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(SessionError::Setup(format!(
                "the guest's screen did not settle within {} s",
                timeout.as_secs()
            )));
        }
        let (_, still) = vm.settle(left, Duration::from_millis(500), 20).await?;
        if still {
            return Ok(());
        }
    }
}

/// Where the terminal of the default guest sits; a point well inside it.
pub const TERMINAL_POINT: (u32, u32) = (400, 300);

/// Boots the image, proves that a click and typed keys reach the terminal, and saves the running
/// desktop as the ready state for this QEMU build and machine.
pub async fn make_ready_state(
    backend: &dyn Backend,
    image: &GuestImage,
    spec: VmSpec,
    work: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<ReadyState, SessionError> {
    let target = ReadyState::path_for(image, backend.qemu_version(), &spec);
    let files = RuntimeFiles {
        dir: work.to_path_buf(),
    };
    let started = Instant::now();
    progress(&format!(
        "cold-booting the guest under {} to save a ready state",
        spec.accel.as_str()
    ));
    let Booted {
        mut vm,
        mut instance,
        ..
    } = start_vm(backend, "ready", image, spec, None, &files).await?;
    progress(&format!(
        "desktop ready after {:.1} s; checking that input reaches it",
        started.elapsed().as_secs_f64()
    ));
    let agent = match prove_input(&mut vm, image.meta.input_probe).await {
        Ok(agent) => agent,
        Err(e) => {
            instance.stop().await;
            return Err(e);
        }
    };
    if agent {
        // Freed guest memory is zero (init_on_free=1 on the kernel command line) and zero
        // pages cost next to nothing in the saved state, which is what every session start
        // reads: drop the guest's page cache so its pages are freed too. Both together took
        // the state from 447 MB to 214 MB (dropping the cache alone saved only 2%).
        vm.exec(
            "sync; echo 3 > /proc/sys/vm/drop_caches",
            Duration::from_secs(30),
        )
        .await?;
    }
    vm.settle(Duration::from_secs(10), Duration::from_millis(200), 3)
        .await?;

    progress("input works; saving the ready state");
    let tmp = target.dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at("removing an earlier partial save", &tmp)?;
    }
    std::fs::create_dir_all(&tmp).at("creating the ready state's partial dir", &tmp)?;
    // Its builder's marker: a reclaim leaves the state alone while this process saves it.
    crate::storage::Owner::me("ready_state", None)
        .write(&tmp)
        .at("writing the owner marker in", &tmp)?;
    let partial = ReadyState { dir: tmp.clone() };
    vm.qmp()
        .save_state(&partial.state(), Duration::from_secs(120))
        .await
        .map_err(VmError::from)?;
    vm.qmp().quit().await;
    instance.stop().await;
    std::fs::rename(files.disk(), partial.disk()).at("moving the disk into", &tmp)?;
    partial.seal()?;
    let meta = serde_json::json!({
        "qemu_version": backend.qemu_version(),
        "image": image.name,
        "saved_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "boot_seconds": started.elapsed().as_secs_f64(),
        // Whether a guest agent answered: without one, exec says so at once.
        "agent": agent,
    });
    partial.publish(&target, &meta)?;
    progress(&format!("ready state saved: {}", target.dir.display()));
    Ok(target)
}

/// Proves that a click and typed keys reach the fresh desktop, as the image's recipe says;
/// returns whether a guest agent answers (a disk deskvm did not build may have none).
async fn prove_input(vm: &mut Vm, probe: InputProbe) -> Result<bool, SessionError> {
    let token = format!("deskvm-input-ok-{}", std::process::id());
    let line = match probe {
        InputProbe::None => {
            // Nothing is known to run in it: check that QMP takes input, and ask for an agent.
            vm.click(TERMINAL_POINT.0, TERMINAL_POINT.1, Button::Left, 1, &[])
                .await?;
            return Ok(vm.agent(Duration::from_secs(15)).await.is_ok());
        }
        InputProbe::Terminal => {
            vm.click(TERMINAL_POINT.0, TERMINAL_POINT.1, Button::Left, 1, &[])
                .await?;
            format!(" echo {token} > /tmp/.deskvm-input; clear\n")
        }
        InputProbe::Window => {
            let at = open_probe_window(vm).await?;
            vm.click(at.0, at.1, Button::Left, 1, &[]).await?;
            format!("{token}\n")
        }
    };
    let strokes = crate::vm::input::strokes_for_text(&line)?;
    vm.type_strokes(&strokes).await?;
    let mut seen = String::new();
    for _ in 0..50 {
        seen = vm
            .exec(
                "cat /tmp/.deskvm-input 2>/dev/null; rm -f /tmp/.deskvm-input",
                Duration::from_secs(10),
            )
            .await?
            .stdout;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if seen.trim() != token {
        return Err(SessionError::Setup(format!(
            "input did not reach the guest (read back {seen:?})"
        )));
    }
    Ok(true)
}

/// Opens a small terminal that writes the first line typed into it to /tmp/.deskvm-input and
/// closes; returns a point inside it once it is on screen.
async fn open_probe_window(vm: &mut Vm) -> Result<(u32, u32), SessionError> {
    let open = "rm -f /tmp/.deskvm-input; \
        setsid xterm -title deskvm-probe -geometry 40x4+200+200 \
          -e sh -c 'IFS= read -r l; printf %s \"$l\" > /tmp/.deskvm-input' >/dev/null 2>&1 &";
    vm.exec(open, Duration::from_secs(10)).await?;
    for _ in 0..150 {
        let out = vm
            .exec(
                "xwininfo -name deskvm-probe 2>/dev/null | awk '/Absolute upper-left X/ {x=$4} \
                 /Absolute upper-left Y/ {y=$4} /Map State: IsViewable/ {v=1} END {if (v) print x, y}'",
                Duration::from_secs(10),
            )
            .await?
            .stdout;
        let xy: Vec<u32> = out
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [x, y] = xy[..] {
            // Let the window manager finish placing and focusing it.
            vm.settle(Duration::from_secs(10), Duration::from_millis(200), 3)
                .await?;
            return Ok((x + 60, y + 20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(SessionError::Setup(
        "the input probe's terminal (xterm) did not appear within 30 s".into(),
    ))
}

/// Sets the guest screen size with xrandr through the guest agent (adding a GTF mode when the
/// size is not one the virtual monitor lists), then checks the framebuffer really has it.
pub async fn set_resolution(vm: &mut Vm, width: u32, height: u32) -> Result<(), SessionError> {
    let script = format!(
        "set -e; out=$(xrandr | awk '/ connected/ {{print $1; exit}}'); m={width}x{height}; \
         if ! xrandr | grep -q \"^ *$m \"; then \
           line=$(gtf {width} {height} 60 | awk '/Modeline/ {{for (i=3;i<=NF;i++) printf \"%s \", $i}}'); \
           xrandr --newmode $m $line; xrandr --addmode $out $m; fi; \
         xrandr --output $out --mode $m"
    );
    let out = vm.exec(&script, Duration::from_secs(20)).await?;
    if out.exit_code != 0 {
        return Err(SessionError::Setup(format!(
            "could not set the screen to {width}x{height}: {}",
            out.stderr.trim()
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = vm.frame().await?;
        if (f.width(), f.height()) == (width, height) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SessionError::Setup(format!(
                "asked for {width}x{height} but the guest screen is {}x{}",
                f.width(),
                f.height()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
