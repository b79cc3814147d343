//! Wiring for the CLI: host checks and setup, the session manager a server runs, and `doctor`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::accel;
use crate::backend::local::{LocalBackend, QEMU};
use crate::backend::Backend;
use crate::image::ready::ReadyState;
use crate::image::{GuestImage, DEFAULT_IMAGE};
use crate::session::{boot, ManagerConfig, SessionManager, DEFAULT_MEMORY_MB};
use crate::storage::{self, Layout};
use crate::vm::spec::Accel;

const HOST_SETUP: &str = include_str!("../tools/host-setup.sh");

/// `auto`, `kvm` or `tcg` (flag `--accel` / env `DESKVM_ACCEL`).
#[derive(Debug, Clone, Copy)]
pub enum AccelChoice {
    Auto,
    Fixed(Accel),
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            Ok(AccelChoice::Auto)
        } else {
            s.parse().map(AccelChoice::Fixed)
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Host tools deskvm needs, with the package that brings each.
const HOST_TOOLS: &[(&str, &str)] = &[
    (QEMU, "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
];

fn missing_tools() -> Vec<(&'static str, &'static str)> {
    HOST_TOOLS
        .iter()
        .copied()
        .filter(|(t, _)| {
            !on_path(t)
                && !Path::new("/usr/sbin").join(t).is_file()
                && !Path::new("/sbin").join(t).is_file()
        })
        .collect()
}

/// QEMU older than 8 had broken PPM/PNG screendumps and lacks what the ready state relies on.
fn qemu_major(version: &str) -> Option<u32> {
    version
        .split("version ")
        .nth(1)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

pub async fn install_host_packages() -> Result<()> {
    let missing = missing_tools();
    let old_qemu = match crate::backend::local::qemu_version(Path::new(QEMU)).await {
        Ok(v) => qemu_major(&v).is_some_and(|m| m < 8),
        Err(_) => false,
    };
    if missing.is_empty() && !old_qemu {
        return Ok(());
    }
    let what: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    eprintln!(
        "deskvm setup: installing host packages ({})",
        if what.is_empty() {
            "newer QEMU".into()
        } else {
            what.join(", ")
        }
    );
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing host packages {what:?}; run `sudo deskvm setup` or install them with apt-get (QEMU 8 or newer; on bookworm from bookworm-backports)");
    }
    let status = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(HOST_SETUP)
        .status()
        .await
        .context("running the host setup script")?;
    if !status.success() {
        bail!("host setup failed ({status}); see the apt output above");
    }
    Ok(())
}

pub async fn resolve_accel(
    layout: &Layout,
    backend: &LocalBackend,
    choice: AccelChoice,
) -> accel::Probe {
    match choice {
        AccelChoice::Fixed(a) => accel::Probe {
            accel: a,
            reason: "chosen with --accel / DESKVM_ACCEL".into(),
        },
        AccelChoice::Auto => match GuestImage::locate(layout, DEFAULT_IMAGE) {
            Ok(img) => {
                accel::detect(
                    layout,
                    Path::new(QEMU),
                    backend.qemu_version(),
                    &img.kernel(),
                    &img.initrd(),
                )
                .await
            }
            Err(_) => accel::Probe {
                accel: Accel::Tcg,
                reason: "no guest kernel to probe KVM with yet".into(),
            },
        },
    }
}

pub async fn manager(choice: AccelChoice, max_sessions: usize) -> Result<Arc<SessionManager>> {
    let layout = Layout::from_env();
    storage::private_dir(&layout.sessions())
        .with_context(|| format!("creating {}", layout.sessions().display()))?;
    let backend = LocalBackend::new().await?;
    let probe = resolve_accel(&layout, &backend, choice).await;
    tracing::info!(accel = probe.accel.as_str(), reason = %probe.reason, qemu = backend.qemu_version(), "accelerator");
    Ok(Arc::new(SessionManager::new(ManagerConfig {
        layout,
        backend: Arc::new(backend),
        accel: probe.accel,
        max_sessions,
    })))
}

fn say(line: &str) {
    eprintln!("  {line}");
}

/// Builds the guest image and its ready state when missing; returns the image.
pub async fn build_image(choice: AccelChoice, force: bool, with_ready: bool) -> Result<GuestImage> {
    let layout = Layout::from_env();
    let image = GuestImage::build(&layout, DEFAULT_IMAGE, force, &say).await?;
    if !with_ready {
        return Ok(image);
    }
    let backend = LocalBackend::new().await?;
    let probe = resolve_accel(&layout, &backend, choice).await;
    eprintln!(
        "deskvm: accelerator {} ({})",
        probe.accel.as_str(),
        probe.reason
    );
    let mgr = SessionManager::new(ManagerConfig {
        layout: layout.clone(),
        backend: Arc::new(backend),
        accel: probe.accel,
        max_sessions: 1,
    });
    let spec = mgr.machine_spec(&image, DEFAULT_MEMORY_MB, false);
    if !force {
        if let Some(r) = ReadyState::find(&image, mgr.backend().qemu_version(), &spec) {
            say(&format!("ready state is up to date: {}", r.dir.display()));
            return Ok(image);
        }
    }
    let work = layout
        .sessions()
        .join(format!("ready-{}", std::process::id()));
    storage::owned_dir(&work)?;
    let result = boot::make_ready_state(mgr.backend(), &image, spec, &work, &say).await;
    let _ = storage::remove_owned_dir(&work);
    result?;
    Ok(image)
}

pub async fn setup(choice: AccelChoice) -> Result<()> {
    eprintln!("deskvm setup: host packages, guest image, ready state");
    install_host_packages().await?;
    build_image(choice, false, true).await?;
    eprintln!("deskvm setup: done");
    Ok(())
}

/// Prints what deskvm sees on this host, with a fix for each problem; false if any.
pub async fn doctor(choice: AccelChoice) -> bool {
    let layout = Layout::from_env();
    let mut ok = true;
    let mut report = |good: bool, what: String, fix: &str| {
        ok &= good;
        if good {
            println!("ok    {what}");
        } else {
            println!("FAIL  {what}\n      fix: {fix}");
        }
    };
    for (tool, pkg) in HOST_TOOLS {
        let present = !missing_tools().iter().any(|(t, _)| t == tool);
        report(
            present,
            format!("{tool} present"),
            &format!("sudo deskvm setup (or apt-get install {pkg})"),
        );
    }
    let backend = LocalBackend::new().await;
    match &backend {
        Ok(b) => {
            let good = qemu_major(b.qemu_version()).is_some_and(|m| m >= 8);
            report(
                good,
                format!("QEMU: {}", b.qemu_version()),
                "install QEMU 8 or newer (bookworm: -t bookworm-backports qemu-system-x86)",
            );
        }
        Err(e) => report(false, format!("QEMU: {e}"), "sudo deskvm setup"),
    }
    let image = GuestImage::locate(&layout, DEFAULT_IMAGE);
    match &image {
        Ok(img) => report(true, format!("guest image: {}", img.dir.display()), ""),
        Err(e) => report(false, format!("guest image: {e}"), "sudo deskvm setup"),
    }
    if let Ok(b) = &backend {
        let probe = resolve_accel(&layout, b, choice).await;
        println!(
            "info  accelerator: {} ({})",
            probe.accel.as_str(),
            probe.reason
        );
        if let Ok(img) = &image {
            let mgr = SessionManager::new(ManagerConfig {
                layout: layout.clone(),
                backend: Arc::new(LocalBackend::new().await.expect("checked above")),
                accel: probe.accel,
                max_sessions: 1,
            });
            let spec = mgr.machine_spec(img, DEFAULT_MEMORY_MB, false);
            match ReadyState::find(img, b.qemu_version(), &spec) {
                Some(r) => report(true, format!("ready state: {}", r.dir.display()), ""),
                None => report(false, "ready state: none for this QEMU build and machine (sessions would cold-boot, ~40 s)".into(), "deskvm image build"),
            }
        }
    }
    let docker = on_path("docker") || std::env::var_os("DOCKER_HOST").is_some();
    println!(
        "info  docker client: {}",
        if docker {
            "present (Docker backend: not in this version)"
        } else {
            "absent"
        }
    );
    println!("info  cache dir: {}", layout.cache.display());
    println!("info  runtime dir: {}", layout.runtime.display());
    ok
}

pub fn default_demo_dir() -> PathBuf {
    std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("."))
        .join("deskvm-demo")
}
