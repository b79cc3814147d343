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
use crate::guest_image::recipe::Recipe;
use crate::guest_image::{GuestImage, DEFAULT_IMAGE};
use crate::session::{boot, ManagerConfig, SessionManager};
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
        image: image.name.clone(),
        net: Default::default(),
    });
    let spec = mgr.machine_spec(image, None, false);
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

/// What `image build` and `setup` build: a built-in recipe by name, or a recipe directory.
pub fn recipe_of(arg: &str, name: Option<&str>) -> Result<Recipe> {
    let path = std::path::Path::new(arg);
    if arg.contains('/') || path.is_dir() {
        return Ok(Recipe::from_dir(path, name)?);
    }
    let canonical = crate::guest_image::canonical(arg);
    Recipe::builtin(canonical).ok_or_else(|| {
        anyhow::anyhow!(
            "no built-in recipe {arg:?}; built-in: {} (or give a recipe directory, e.g. ./my-recipe)",
            crate::guest_image::recipe::builtin_names().join(", ")
        )
    })
}

/// Builds each recipe's guest image and its ready state when missing; with `runtime`, also
/// the Docker runtime image and ready states made by its QEMU (shared when it is the host's
/// build).
pub async fn build_images(
    choice: AccelChoice,
    recipes: &[Recipe],
    force: bool,
    with_ready: bool,
    runtime: bool,
) -> Result<Vec<GuestImage>> {
    let layout = Layout::from_env();
    let mut images = Vec::new();
    for recipe in recipes {
        let started = std::time::Instant::now();
        let image = GuestImage::build(&layout, recipe, force, &say).await?;
        say(&format!(
            "guest image {} ready after {:.0} s",
            image.name,
            started.elapsed().as_secs_f64()
        ));
        images.push(image);
    }
    let local = LocalBackend::new().await?;
    let probe = resolve_accel(&layout, &local, choice).await;
    eprintln!(
        "deskvm: accelerator {} ({})",
        probe.accel.as_str(),
        probe.reason
    );
    let local: Arc<dyn Backend> = Arc::new(local);
    if with_ready {
        for image in &images {
            ensure_ready_state(&layout, image, local.clone(), probe.accel, force).await?;
        }
    }
    if runtime {
        let docker = docker::connect().await?;
        docker::build_runtime_image(&docker, &layout.work(), &say).await?;
        if with_ready {
            let backend: Arc<dyn Backend> =
                Arc::new(DockerBackend::new(&layout.cache, probe.accel).await?);
            for image in &images {
                ensure_ready_state(&layout, image, backend.clone(), probe.accel, force).await?;
            }
        }
    }
    Ok(images)
}

/// Host packages, the Docker engine, the images named (default: the default image; `all`:
/// every built-in recipe), the runtime image and the ready states.
pub async fn setup(choice: AccelChoice, images: &[String]) -> Result<()> {
    let names: Vec<String> = match images {
        [] => vec![DEFAULT_IMAGE.to_string()],
        [all] if all == "all" => crate::guest_image::recipe::builtin_names(),
        named => named.to_vec(),
    };
    let recipes = names
        .iter()
        .map(|n| recipe_of(n, None))
        .collect::<Result<Vec<_>>>()?;
    eprintln!(
        "deskvm setup: host packages, Docker engine, guest images ({}), runtime image, ready states",
        names.join(", ")
    );
    host_packages::install().await?;
    dockerd::ensure().await?;
    build_images(choice, &recipes, false, true, true).await?;
    eprintln!("deskvm setup: done");
    Ok(())
}
