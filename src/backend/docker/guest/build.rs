//! Assembling the guest image on the local engine: the cache's files staged under
//! [`CACHE_IN_IMAGE`], uploaded as one tar stream into a container of the runtime image, and
//! that container committed with the labels that say which ready states it carries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;

use super::super::transfer::{self, Meter, Pinged};
use super::super::{docker_err, BackendError, LABEL_QEMU, LABEL_VERSION};
use super::{CACHE_IN_IMAGE, LABEL_READY, LABEL_READY_STAMPS};
use crate::guest_image::ready::ReadyState;
use crate::guest_image::GuestImage;
use crate::storage::IoContext;

/// What the committed image says of itself: the ready states it carries (directory names and
/// stamps, comma-separated) and the QEMU build that saved them.
pub(super) struct Carried {
    pub names: String,
    pub stamps: String,
    pub qemu_version: String,
}

impl Carried {
    pub fn of(ready: &[ReadyState], qemu_version: &str) -> Self {
        let names = ready
            .iter()
            .map(|r| {
                r.dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect::<Vec<_>>()
            .join(",");
        let stamps = ready
            .iter()
            .map(ReadyState::stamp)
            .collect::<Vec<_>>()
            .join(",");
        Carried {
            names,
            stamps,
            qemu_version: qemu_version.to_string(),
        }
    }
}

/// Commits the `stage` as `tag` through a container of `runtime`, which is removed however
/// the build ends.
pub(super) async fn commit_stage(
    docker: &Docker,
    runtime: &str,
    stage: &Path,
    tag: &str,
    carried: &Carried,
) -> Result<(), BackendError> {
    let name = format!("deskvm-guest-build-{}", std::process::id());
    super::super::DockerBackend::remove(docker, &name).await;
    // Owner labels: if this process dies mid-build, the janitor finds the container.
    let owner_labels = crate::storage::Owner::me("image_build", None).labels();
    create_container(docker, &name, runtime, &owner_labels).await?;
    let committed = async {
        upload(docker, &name, stage).await?;
        commit(docker, &name, tag, image_labels(carried, &owner_labels)).await
    }
    .await;
    super::super::DockerBackend::remove(docker, &name).await;
    committed
}

/// Stages the image's files in `work/stage`, mirroring the cache under [`CACHE_IN_IMAGE`]. Big
/// files are symlinks that tar follows (-h), so nothing is copied but the small ready-state
/// overlays, whose backing path is rewritten to where the image carries the base disk.
pub(super) async fn stage(
    cache: &Path,
    image: &GuestImage,
    ready: &[ReadyState],
    work: &Path,
) -> Result<PathBuf, BackendError> {
    let stage = Stage {
        cache,
        root: work.join("stage"),
    };
    // An imported disk boots through firmware: it has no kernel of its own to carry.
    let kernel = [image.kernel(), image.initrd()];
    let kernel = kernel.iter().filter(|_| image.boots_kernel());
    for f in kernel.chain([&image.base()]) {
        stage.link(f)?;
    }
    let base_inside =
        super::super::engine::in_image(cache, &image.base()).expect("base is in the cache");
    for r in ready {
        stage.link(&r.state())?;
        stage.link(&r.meta())?;
        let disk = stage.inside(&r.disk())?;
        std::fs::copy(r.disk(), &disk).at("copying the ready state's disk to", &disk)?;
        rebase(&disk, &base_inside).await?;
    }
    Ok(stage.root)
}

/// The staged tree: the cache's layout under [`CACHE_IN_IMAGE`] below `root`.
struct Stage<'a> {
    cache: &'a Path,
    root: PathBuf,
}

impl Stage<'_> {
    /// Where the cache's file `p` goes in the stage.
    fn inside(&self, p: &Path) -> Result<PathBuf, BackendError> {
        let rel = p.strip_prefix(self.cache).map_err(|_| {
            BackendError::Setup(format!("{} is not in the image cache", p.display()))
        })?;
        Ok(self
            .root
            .join(CACHE_IN_IMAGE.trim_start_matches('/'))
            .join(rel))
    }

    /// Puts the cache's file `from` in the stage as a symlink, for tar to follow.
    fn link(&self, from: &Path) -> Result<(), BackendError> {
        let to = self.inside(from)?;
        let dir = to.parent().expect("inside the stage");
        std::fs::create_dir_all(dir).at("creating the stage dir", dir)?;
        std::os::unix::fs::symlink(from, &to).at("linking into the stage", &to)?;
        Ok(())
    }
}

/// Points the overlay `disk` at `base` (where the image carries the base disk) without
/// touching its data (`qemu-img rebase -u`).
async fn rebase(disk: &Path, base: &Path) -> Result<(), BackendError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(disk)
        .output()
        .await
        .at("running qemu-img rebase on", disk)?;
    if !out.status.success() {
        return Err(BackendError::Setup(format!(
            "qemu-img rebase failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Creates (without starting) the container the guest files are uploaded into.
async fn create_container(
    docker: &Docker,
    name: &str,
    runtime: &str,
    owner_labels: &HashMap<String, String>,
) -> Result<(), BackendError> {
    let body = ContainerCreateBody {
        image: Some(runtime.to_string()),
        cmd: Some(vec!["true".into()]),
        labels: Some(owner_labels.clone()),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(name).build()),
            body,
        )
        .await
        .map_err(|e| docker_err("creating the guest image build container", e))?;
    Ok(())
}

/// Streams the stage, as tar, into the container's root.
async fn upload(docker: &Docker, name: &str, stage: &Path) -> Result<(), BackendError> {
    let mut tar = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(stage)
        .args([
            "-h",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-cf",
            "-",
            "deskvm",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .at("running tar in", stage)?;
    let stdout = tar.stdout.take().expect("piped");
    // Gigabytes into this host's engine, which answers only once it has them all: bounded
    // by progress (`transfer`), not by the client's request timeout.
    let meter = Meter::new(None);
    let body = tokio_util::io::ReaderStream::with_capacity(stdout, 1 << 20);
    let body = transfer::counted(body, meter.clone());
    let opts = UploadToContainerOptionsBuilder::new().path("/").build();
    let client = transfer::without_deadline(docker);
    let upload = client.upload_to_container(name, Some(opts), bollard::body_try_stream(body));
    transfer::watched(
        &meter,
        transfer::stall_bound(),
        Pinged::target(docker),
        upload,
    )
    .await
    .map_err(transfer::stalled(
        "uploading the guest files to this host's engine",
    ))?
    .map_err(|e| docker_err("uploading the guest files", e))?;
    if !tar.wait().await.at("waiting for tar in", stage)?.success() {
        return Err(BackendError::Setup("tar of the guest files failed".into()));
    }
    Ok(())
}

/// The committed image's labels: what it carries, and the build container's owner labels
/// blanked.
fn image_labels(
    carried: &Carried,
    owner_labels: &HashMap<String, String>,
) -> HashMap<String, String> {
    [
        (LABEL_READY, carried.names.as_str()),
        (LABEL_READY_STAMPS, carried.stamps.as_str()),
        (LABEL_QEMU, carried.qemu_version.as_str()),
        (LABEL_VERSION, env!("CARGO_PKG_VERSION")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    // A commit keeps every label of the container the config does not set: blank the build
    // container's owner labels, or every container made from the image (a user's `docker
    // run` on an engine others share) would look like this dead build's and be reclaimed.
    .chain(owner_labels.keys().map(|k| (k.clone(), String::new())))
    .collect()
}

/// Commits the container as `tag` with `labels`.
async fn commit(
    docker: &Docker,
    name: &str,
    tag: &str,
    labels: HashMap<String, String>,
) -> Result<(), BackendError> {
    let (repo, t) = tag.split_once(':').expect("tag has a colon");
    let opts = CommitContainerOptionsBuilder::new()
        .container(name)
        .repo(repo)
        .tag(t)
        .pause(false)
        .build();
    let config = bollard::models::ContainerConfig {
        labels: Some(labels),
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    // Writing a layer of gigabytes says nothing until it is done: the engine answering
    // pings is the only sign it is at work.
    let client = transfer::without_deadline(docker);
    let commit = client.commit_container(opts, config);
    transfer::watched(
        &Meter::working(),
        transfer::stall_bound(),
        Pinged::target(docker),
        commit,
    )
    .await
    .map_err(transfer::stalled("committing the guest image"))?
    .map_err(|e| docker_err("committing the guest image", e))?;
    Ok(())
}
