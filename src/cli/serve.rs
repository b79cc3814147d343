//! The session manager `deskvm serve` runs: the startup janitor, the accelerator and backend
//! (or engine pool) chosen, the current images adopted and their template made, and this
//! server recorded in the cache.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::choice::{resolve_accel, select_backend, AccelChoice, BackendChoice};
use crate::backend::docker;
use crate::backend::local::LocalBackend;
use crate::backend::Backend;
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::session::{ManagerConfig, SessionManager};
use crate::storage::{self, Layout};

#[allow(clippy::too_many_arguments)]
pub async fn manager(
    accel: AccelChoice,
    default_image: &str,
    backend: BackendChoice,
    max_sessions: usize,
    idle_timeout: Option<std::time::Duration>,
    shared_memory: bool,
    engines: &[String],
    insecure_engine: bool,
    net: crate::session::network::NetConfig,
) -> Result<Arc<SessionManager>> {
    let layout = Layout::from_env();
    storage::private_dir(&layout.sessions())
        .with_context(|| format!("creating {}", layout.sessions().display()))?;
    // What dead deskvm processes left behind; a live instance's things are never touched.
    let engine = docker::connect().await.ok();
    if let Err(e) = storage::janitor::run(&layout, engine.as_ref()).await {
        tracing::warn!(error = %e, "the startup janitor could not run");
    }
    let local = LocalBackend::new().await?;
    let probe = resolve_accel(&layout, &local, accel).await;
    let (backend, why, pool) = if engines.is_empty() {
        let (b, why) = select_backend(&layout, backend, probe.accel, local).await?;
        (b, why, None)
    } else {
        if backend == BackendChoice::Local {
            anyhow::bail!("--engine pools Docker engines; it does not go with --backend local");
        }
        let pool = super::engines::pool(engines, insecure_engine, &layout, probe.accel).await?;
        for remote in pool.remote() {
            storage::janitor::run_on_engine(remote.docker(), &remote.engine().name).await;
        }
        let why = format!("--engine: {}", pool.names().join(", "));
        (pool.first() as Arc<dyn Backend>, why, Some(pool))
    };
    let mut me = storage::Owner::me("server", None);
    me.serving = Some("stdio".into());
    me.images.extend(backend.runtime_image());
    // Every current image is this server's to start: a reclaim elsewhere keeps them. The
    // default one gets its shared-memory template now; others on their first start.
    for image in GuestImage::available(&layout) {
        let spec = crate::session::machine_spec(&image, probe.accel, None, false);
        let ready = ReadyState::find(&image, backend.qemu_version(), &spec);
        crate::session::reclaim::adopt(&image, ready.as_ref());
        me.uses.push(image.dir.clone());
        let default = crate::guest_image::canonical(default_image) == image.name;
        if ready.is_some() && shared_memory && default {
            // Made once per cache, in about a second, from the ready state (no boot).
            match crate::session::template::ensure(&layout, backend.as_ref(), &image, &spec).await {
                Ok(t) => me.uses.push(t.dir),
                Err(e) => {
                    tracing::warn!(error = %crate::session::error::chain(&e), "no shared-memory template: sessions keep private memory")
                }
            }
        }
        me.uses.extend(ready.map(|r| r.dir));
    }
    if let Err(e) = storage::register_instance(&layout, &me) {
        tracing::warn!(error = %e, "could not record this server in the cache (a reclaim elsewhere cannot see what it uses)");
    }
    tracing::info!(accel = probe.accel.as_str(), reason = %probe.reason, backend = backend.name(), why = %why, qemu = backend.qemu_version(), "serving");
    let mgr = Arc::new(SessionManager::new(ManagerConfig {
        layout,
        backend,
        accel: probe.accel,
        max_sessions,
        idle_timeout,
        shared_memory,
        engines: pool,
        image: crate::guest_image::canonical(default_image).to_string(),
        net,
    }));
    mgr.keep_warm();
    Ok(mgr)
}
