//! QEMU as a child process of the server.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::process::Command;

use super::{Backend, BackendError, Instance};
use crate::storage::owner::{ProcessRef, PROCESS_FILE};
use crate::storage::IoContext;
use crate::vm::spec::{RuntimeFiles, VmSpec};

pub const QEMU: &str = "qemu-system-x86_64";

pub struct LocalBackend {
    qemu: PathBuf,
    version: String,
}

impl LocalBackend {
    pub async fn new() -> Result<Self, BackendError> {
        let qemu = PathBuf::from(std::env::var_os("DESKVM_QEMU").unwrap_or_else(|| QEMU.into()));
        let version = qemu_version(&qemu).await?;
        Ok(LocalBackend { qemu, version })
    }
}

/// First line of `qemu --version`, e.g. "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)".
pub async fn qemu_version(qemu: &std::path::Path) -> Result<String, BackendError> {
    let out = Command::new(qemu)
        .arg("--version")
        .output()
        .await
        .map_err(|source| BackendError::Spawn {
            program: format!(
                "{} (install QEMU: `deskvm setup`, or apt-get install qemu-system-x86)",
                qemu.display()
            ),
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn qemu_version(&self) -> &str {
        &self.version
    }

    fn launch<'a>(
        &'a self,
        session_id: &'a str,
        spec: &'a VmSpec,
        files: &'a RuntimeFiles,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, BackendError>> {
        async move {
            let log_path = files.qemu_log();
            let log = std::fs::File::create(&log_path).at("creating QEMU's log", &log_path)?;
            let mut cmd = Command::new(&self.qemu);
            cmd.arg("-name")
                .arg(format!("deskvm-{session_id}"))
                .args(spec.argv(files))
                .stdin(Stdio::null())
                .stdout(log.try_clone().at("duplicating the handle of", &log_path)?)
                .stderr(log)
                .kill_on_drop(true);
            // If the server dies without cleaning up (SIGKILL), the kernel kills QEMU too.
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .map_err(|source| BackendError::Spawn { program: self.qemu.display().to_string(), source })?;
            // So that cleanup after a crash of this server can find QEMU and know it is the same
            // process (PR_SET_PDEATHSIG usually takes it down first).
            if let Some(p) = child.id().and_then(ProcessRef::of) {
                let _ = std::fs::write(
                    files.dir.join(PROCESS_FILE),
                    serde_json::to_vec(&p).unwrap_or_default(),
                );
            }
            let link = Arc::new(crate::vm::link::HostLink(files.clone()));
            let (instance, supervisor) = super::supervised(link);
            let log_path = files.qemu_log();
            tokio::spawn(async move {
                let reason = tokio::select! {
                    status = child.wait() => {
                        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                        let tail: Vec<&str> = tail.lines().rev().take(3).collect();
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        if tail.is_empty() {
                            format!("qemu exited ({status})")
                        } else {
                            format!("qemu exited ({status}): {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
                        }
                    }
                    _ = supervisor.kill => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        "stopped".to_string()
                    }
                };
                let _ = supervisor.exit.send(Some(reason));
            });
            Ok(Box::new(instance) as Box<dyn Instance>)
        }
        .boxed()
    }
}
