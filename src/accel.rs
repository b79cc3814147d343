//! Which accelerator really works on this host. `/dev/kvm` existing (and QMP's `query-kvm`
//! saying enabled) proves nothing: on nested hosts a stock kernel hangs under KVM. So a short
//! probe boot of the guest kernel decides, and the answer is cached per host and QEMU build.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::storage::Layout;
use crate::vm::spec::{hex, Accel};

const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub accel: Accel,
    pub reason: String,
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn cache_file(layout: &Layout, qemu_version: &str, kernel: &Path) -> std::path::PathBuf {
    let mut h = Sha256::new();
    for part in [qemu_version, &host_kernel(), &kernel.display().to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    layout
        .cache
        .join(format!("accel-{}.json", hex(&h.finalize()[..6])))
}

/// The accelerator to use: an explicit choice wins; else a cached probe; else a new probe.
pub async fn detect(
    layout: &Layout,
    qemu: &Path,
    qemu_version: &str,
    kernel: &Path,
    initrd: &Path,
) -> Probe {
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm_usable {
        return Probe {
            accel: Accel::Tcg,
            reason: "/dev/kvm is missing or not accessible".into(),
        };
    }
    let cache = cache_file(layout, qemu_version, kernel);
    if let Some(p) = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Probe>(&b).ok())
    {
        return p;
    }
    let probe = probe_kvm(qemu, kernel, initrd).await;
    if let Ok(json) = serde_json::to_vec_pretty(&probe) {
        let _ =
            crate::storage::private_dir(&layout.cache).and_then(|_| std::fs::write(&cache, json));
    }
    probe
}

async fn probe_kvm(qemu: &Path, kernel: &Path, initrd: &Path) -> Probe {
    let dir = std::env::temp_dir().join(format!("deskvm-kvm-probe-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let serial = dir.join("serial.log");
    let started = Instant::now();
    let child = tokio::process::Command::new(qemu)
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-m",
            "256",
        ])
        .args(["-accel", "kvm", "-cpu", "host", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 loglevel=6 panic=-1", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Probe {
                accel: Accel::Tcg,
                reason: format!("could not start the KVM probe: {e}"),
            }
        }
    };
    // A kernel that reaches userspace prints this; under a broken KVM it hangs long before.
    let mut result = Probe {
        accel: Accel::Tcg,
        reason: format!(
            "a guest kernel did not boot under KVM within {} s",
            PROBE_TIMEOUT.as_secs()
        ),
    };
    while started.elapsed() < PROBE_TIMEOUT {
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        if log.contains("Run /init as init process") || log.contains("Freeing unused kernel") {
            result = Probe {
                accel: Accel::Kvm,
                reason: format!(
                    "a guest kernel booted under KVM in {} ms",
                    started.elapsed().as_millis()
                ),
            };
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            result = Probe {
                accel: Accel::Tcg,
                reason: format!("QEMU with KVM exited early ({status})"),
            };
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
