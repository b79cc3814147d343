//! The guest as a Docker image: `deskvm-guest:<image>-<qemu build>`, the runtime image plus the
//! guest's kernel, initrd, base disk and private ready states, built on the local engine without
//! a registry (a container of the runtime image, an archive upload, a commit) and streamed to
//! other engines over the Engine API (`deskvm image push`: save here, load there).

mod build;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bollard::query_parameters::ImportImageOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::transfer::{self, Meter, Pinged};
use super::{docker_err, BackendError};
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::storage::owner::LABEL_PID;
use crate::storage::IoContext;
use crate::vm::spec::hex;

pub use crate::storage::owner::GUEST_REPO;
/// Where the image carries the cache's files: the same layout under another root.
pub const CACHE_IN_IMAGE: &str = "/deskvm/cache";
/// The ready states an image carries (their directory names, comma-separated) and their stamps.
pub const LABEL_READY: &str = "deskvm.ready";
pub const LABEL_READY_STAMPS: &str = "deskvm.ready-stamps";

/// `deskvm-guest:<image dir>-<hash of the QEMU build and runtime recipe>`: ready states load
/// only into the QEMU build that saved them, and the exec channel needs the runtime image's
/// tools (socat, lz4) of this deskvm.
pub fn tag_for(image_dir: &str, qemu_version: &str) -> String {
    let mut h = Sha256::new();
    h.update(qemu_version.as_bytes());
    h.update([0]);
    h.update(super::runtime_image_tag().as_bytes());
    format!("{GUEST_REPO}:{image_dir}-{}", hex(&h.finalize()[..4]))
}

pub fn tag_of(image: &GuestImage, qemu_version: &str) -> String {
    let dir = image.dir.file_name().unwrap_or_default().to_string_lossy();
    tag_for(&dir, qemu_version)
}

/// The image's private ready states saved by `qemu_version` (templates need their RAM file on
/// the engine's host, which an image cannot share between containers; sessions on remote
/// engines run on private memory).
fn ready_states(image: &GuestImage, qemu_version: &str) -> Vec<ReadyState> {
    let mut found: Vec<ReadyState> = std::fs::read_dir(&image.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ready-"))
        .map(|e| ReadyState { dir: e.path() })
        .filter(|r| !r.is_template() && r.state().is_file() && r.disk().is_file())
        .filter(|r| {
            std::fs::read(r.meta())
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|m| m["qemu_version"] == qemu_version)
        })
        .collect();
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    found
}

/// Builds the guest image on the local engine unless it is there with the same ready states.
pub async fn build(
    docker: &Docker,
    cache: &Path,
    image: &GuestImage,
    runtime: &str,
    qemu_version: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String, BackendError> {
    let tag = tag_of(image, qemu_version);
    let ready = ready_states(image, qemu_version);
    if ready.is_empty() {
        return Err(BackendError::Setup(format!(
            "no ready state of {} for {qemu_version}: run `deskvm image build` first",
            image.name
        )));
    }
    let carried = build::Carried::of(&ready, qemu_version);
    if let Ok(img) = docker.inspect_image(&tag).await {
        let labels = img.config.and_then(|c| c.labels).unwrap_or_default();
        // An image that carries its build container's owner labels is rebuilt: see
        // build::image_labels.
        let owned = labels.get(LABEL_PID).is_some_and(|p| !p.is_empty());
        if labels.get(LABEL_READY_STAMPS) == Some(&carried.stamps) && !owned {
            progress(&format!("guest image {tag} is up to date"));
            return Ok(tag);
        }
    }
    progress(&format!("building guest image {tag} on {runtime}"));
    let work = cache.join(format!("guest-image-{}", std::process::id()));
    crate::storage::private_dir(&work).at("creating the build dir", &work)?;
    crate::storage::Owner::me("image_build", None)
        .write(&work)
        .at("writing the owner marker in", &work)?;
    let built = async {
        let stage = build::stage(cache, image, &ready, &work).await?;
        build::commit_stage(docker, runtime, &stage, &tag, &carried).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    built?;
    progress(&format!(
        "guest image {tag} ready ({} ready state(s))",
        ready.len()
    ));
    Ok(tag)
}

/// What a push moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pushed {
    pub tag: String,
    pub bytes: u64,
    pub seconds: f64,
}

/// Streams `tag` from `from` (`docker save`) into `to`, the engine `engine` (`docker load`);
/// nothing is written to disk on this host. `meter` counts what `to` took and what it
/// reported loading; the push fails once that stands still for the stall bound, however long
/// the whole takes.
pub async fn push(
    from: &Docker,
    to: &Docker,
    tag: &str,
    engine: &str,
    meter: &Arc<Meter>,
) -> Result<Pushed, BackendError> {
    let started = Instant::now();
    // The image's size is what the save sends, less the archive's headers: the bar's total.
    if let Some(size) = from.inspect_image(tag).await.ok().and_then(|i| i.size) {
        meter.set_total(size.max(0) as u64);
    }
    let saved = transfer::counted(
        transfer::without_deadline(from).export_image(tag),
        meter.clone(),
    );
    // Not quiet: the engine's "Loading layer" lines are its progress once the archive is in.
    let opts = ImportImageOptionsBuilder::new().quiet(false).build();
    let target = transfer::without_deadline(to);
    let load = async {
        let mut loaded = target.import_image_stream(opts, saved, None);
        while let Some(item) = loaded.next().await {
            let info =
                item.map_err(|e| docker_err("loading the guest image into the engine", e))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(BackendError::Setup(format!(
                    "the engine refused the guest image: {e}"
                )));
            }
            let detail = info.progress_detail.unwrap_or_default();
            meter.engine_progress(detail.current, detail.total);
        }
        Ok(())
    };
    let pinged = Pinged {
        source: Some(from),
        target: Some(to),
    };
    transfer::watched(meter, transfer::stall_bound(), pinged, load)
        .await
        .map_err(transfer::stalled(format!(
            "pushing {tag} to engine {engine}"
        )))??;
    to.inspect_image(tag)
        .await
        .map_err(|e| docker_err("the engine does not list the pushed image", e))?;
    Ok(Pushed {
        tag: tag.to_string(),
        bytes: meter.snapshot().sent,
        seconds: started.elapsed().as_secs_f64(),
    })
}
