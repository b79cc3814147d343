//! `deskvm setup` and `deskvm image build`: host packages, the Docker engine, the guest image,
//! the runtime image, and a ready state (plus its shared-memory template) per QEMU build.

use std::sync::Arc;

use anyhow::Result;

use super::choice::{resolve_accel, AccelChoice};
use super::{dockerd, host_packages};
use crate::backend::docker::{self, DockerBackend};
use crate::backend::local::LocalBackend;
use crate::backend::Backend;
use crate::guest_image::ready::ReadyState;
use crate::guest_image::{GuestImage, DEFAULT_IMAGE};
use crate::session::{boot, ManagerConfig, SessionManager, DEFAULT_MEMORY_MB};
use crate::storage::{self, Layout};
use crate::vm::spec::Accel;

fn say(line: &str) {
    eprintln!("  {line}");
}

/// Saves a ready state for `backend`'s QEMU build unless one exists.
async fn ensure_ready_state(
    layout: &Layout,
    image: &GuestImage,
    backend: Arc<dyn Backend>,
    accel: Accel,
    force: bool,
) -> Result<()> {
    let mgr = SessionManager::new(ManagerConfig {
        layout: layout.clone(),
        backend,
        accel,
        max_sessions: 1,
        idle_timeout: None,
        shared_memory: true,
        engines: None,
    });
    let spec = mgr.machine_spec(image, DEFAULT_MEMORY_MB, false);
    if !force {
        if let Some(r) = ReadyState::find(image, mgr.backend().qemu_version(), &spec) {
            crate::session::reclaim::adopt(image, Some(&r));
            say(&format!(
                "ready state for the {} backend is up to date: {}",
                mgr.backend().name(),
                r.dir.display()
            ));
            return ensure_template(layout, mgr.backend(), image, &spec).await;
        }
    }
    let work = layout
        .sessions()
        .join(format!("ready-{}", std::process::id()));
    let builder = storage::Owner::me("ready_build", None).uses([image.dir.clone()]);
    storage::owned_dir(&work, &builder)?;
    let result = boot::make_ready_state(mgr.backend(), image, spec.clone(), &work, &say).await;
    let _ = storage::remove_owned_dir(&work);
    result?;
    ensure_template(layout, mgr.backend(), image, &spec).await
}

/// The shared-memory template made from the ready state (about a second, no boot).
async fn ensure_template(
    layout: &Layout,
    backend: &dyn Backend,
    image: &GuestImage,
    spec: &crate::vm::spec::VmSpec,
) -> Result<()> {
    // Sessions fall back to private memory without one: a warning, not a failed setup.
    match crate::session::template::ensure(layout, backend, image, spec).await {
        Ok(t) => say(&format!("shared-memory template: {}", t.dir.display())),
        Err(e) => say(&format!(
            "no shared-memory template (sessions will use private memory): {}",
            crate::session::error::chain(&e)
        )),
    }
    Ok(())
}

/// Builds the guest image and its ready state when missing; with `runtime`, also the Docker
/// runtime image and a ready state made by its QEMU (shared when it is the host's build).
pub async fn build_image(
    choice: AccelChoice,
    force: bool,
    with_ready: bool,
    runtime: bool,
) -> Result<GuestImage> {
    let layout = Layout::from_env();
    let image = GuestImage::build(&layout, DEFAULT_IMAGE, force, &say).await?;
    let local = LocalBackend::new().await?;
    let probe = resolve_accel(&layout, &local, choice).await;
    eprintln!(
        "deskvm: accelerator {} ({})",
        probe.accel.as_str(),
        probe.reason
    );
    if with_ready {
        ensure_ready_state(&layout, &image, Arc::new(local), probe.accel, force).await?;
    }
    if runtime {
        let docker = docker::connect().await?;
        docker::build_runtime_image(&docker, &layout.work(), &say).await?;
        if with_ready {
            let backend = DockerBackend::new(&layout.cache, probe.accel).await?;
            ensure_ready_state(&layout, &image, Arc::new(backend), probe.accel, force).await?;
        }
    }
    Ok(image)
}

pub async fn setup(choice: AccelChoice) -> Result<()> {
    eprintln!(
        "deskvm setup: host packages, Docker engine, guest image, runtime image, ready states"
    );
    host_packages::install().await?;
    dockerd::ensure().await?;
    build_image(choice, false, true, true).await?;
    eprintln!("deskvm setup: done");
    Ok(())
}
