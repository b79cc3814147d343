//! The host packages deskvm, its tests and its bench need (`deskvm setup` installs them with
//! apt through `tools/host-setup.sh`; `doctor` lists what is missing).

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::backend::local::QEMU;

const HOST_SETUP: &str = include_str!("../../tools/host-setup.sh");

pub(super) fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Host tools deskvm needs, with the package that brings each.
pub(super) const HOST_TOOLS: &[(&str, &str)] = &[
    (QEMU, "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    // QEMU hands each guest connection to a forward or the proxy to one `socat` (local backend;
    // the runtime image has its own).
    ("socat", "socat"),
    ("dockerd", "docker.io"),
    // UEFI firmware for imported disks with an EFI system partition (SeaBIOS comes with QEMU).
    ("/usr/share/ovmf/OVMF.fd", "ovmf"),
    // The live view's web client: files, not a program.
    ("/usr/share/novnc/core/rfb.js", "novnc"),
];

/// Not needed to run deskvm: the headless browser the test suite renders review viewers with,
/// and what `tools/test-engine.sh` makes a second, TLS-only Docker engine in its own network
/// namespace with (the remote-engine tests).
const TEST_TOOLS: &[(&str, &str)] = &[
    ("chromium", "chromium"),
    ("openssl", "openssl"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
];
/// The peers' stack `deskvm bench` measures beside deskvm (Xvfb + xdotool + ImageMagick).
const BENCH_TOOLS: &[(&str, &str)] = &[
    ("Xvfb", "xvfb"),
    ("xdotool", "xdotool"),
    ("import", "imagemagick"),
    ("xterm", "xterm"),
    ("openbox", "openbox"),
];

pub(super) fn missing_tools() -> Vec<(&'static str, &'static str)> {
    missing_of(HOST_TOOLS)
}

fn missing_of(tools: &'static [(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    tools
        .iter()
        .copied()
        .filter(|(t, _)| {
            if t.starts_with('/') {
                return !Path::new(t).is_file();
            }
            !on_path(t)
                && !Path::new("/usr/sbin").join(t).is_file()
                && !Path::new("/sbin").join(t).is_file()
        })
        .collect()
}

/// QEMU older than 8 had broken PPM/PNG screendumps and lacks what the ready state relies on.
pub(super) fn qemu_major(version: &str) -> Option<u32> {
    version
        .split("version ")
        .nth(1)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

pub async fn install() -> Result<()> {
    let mut missing = missing_tools();
    missing.extend(missing_of(TEST_TOOLS));
    missing.extend(missing_of(BENCH_TOOLS));
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
    if !crate::storage::is_root() {
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
