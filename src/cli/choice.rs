//! What the global flags `--accel` and `--backend` choose, and how a choice becomes an
//! accelerator and a backend: shared by `serve`, `setup` and `doctor`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::accel;
use crate::backend::docker::DockerBackend;
use crate::backend::local::{LocalBackend, QEMU};
use crate::backend::Backend;
use crate::guest_image::GuestImage;
use crate::storage::Layout;
use crate::vm::spec::Accel;

/// `auto`, `kvm` or `tcg` (flag `--accel` / env `DESKVM_ACCEL`).
#[derive(Debug, Clone, Copy)]
pub enum AccelChoice {
    Auto,
    Fixed(Accel),
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccelChoice::Auto => f.write_str("auto"),
            AccelChoice::Fixed(a) => f.write_str(a.as_str()),
        }
    }
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
        // Any image that boots its own kernel will do for the probe.
        AccelChoice::Auto => match GuestImage::available(layout)
            .into_iter()
            .find(GuestImage::boots_kernel)
        {
            Some(img) => {
                accel::detect(
                    layout,
                    Path::new(QEMU),
                    backend.qemu_version(),
                    &img.kernel(),
                    &img.initrd(),
                )
                .await
            }
            None => accel::Probe {
                accel: Accel::Tcg,
                reason: "no guest kernel to probe KVM with yet".into(),
            },
        },
    }
}

/// `auto`, `docker` or `local` (flag `--backend` / env `DESKVM_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Docker,
    Local,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "docker" => Ok(BackendChoice::Docker),
            "local" => Ok(BackendChoice::Local),
            other => Err(format!(
                "unknown backend {other:?}; valid: auto, docker, local"
            )),
        }
    }
}

/// The backend to run sessions on, and why it was chosen. `auto` takes Docker when the engine
/// answers and the runtime image exists, else the local backend.
pub async fn select_backend(
    layout: &Layout,
    choice: BackendChoice,
    accel: Accel,
    local: LocalBackend,
) -> Result<(Arc<dyn Backend>, String)> {
    match choice {
        BackendChoice::Local => Ok((Arc::new(local), "chosen with --backend local".into())),
        BackendChoice::Docker => {
            let b = DockerBackend::new(&layout.cache, accel).await?;
            Ok((Arc::new(b), "chosen with --backend docker".into()))
        }
        BackendChoice::Auto => match DockerBackend::new(&layout.cache, accel).await {
            Ok(b) => Ok((
                Arc::new(b),
                "auto: the Docker engine answers and the runtime image exists".into(),
            )),
            Err(e) => Ok((Arc::new(local), format!("auto: local, because {e}"))),
        },
    }
}
