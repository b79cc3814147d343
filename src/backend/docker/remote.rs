//! Sessions on an engine that shares no filesystem with this host: the container runs the
//! guest image, makes its own disk overlay, and is reached only through exec sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::query_parameters::ListImagesOptionsBuilder;
use bollard::Docker;

use super::exec::ExecLink;
use super::guest::{self, LABEL_READY};
use super::{Backend, BackendError, DockerBackend, Instance, LABEL_QEMU};
use crate::vm::spec::{Memory, RuntimeFiles, VmSpec};

/// QEMU's runtime dir inside the container (its writable layer).
const RUNTIME_IN_CONTAINER: &str = "/run/deskvm";
/// Screendumps go to the container's own tmpfs.
const SCREEN_IN_CONTAINER: &str = "/dev/shm/screen.ppm";
/// Makes the overlay over the image's ready-state disk, then becomes QEMU (PID 1 stays QEMU).
const START: &str = r#"set -e; mkdir -p /run/deskvm; qemu-img create -q -f qcow2 -F qcow2 -b "$0" /run/deskvm/disk.qcow2; exec "$@""#;

/// The QEMU build of the guest images an engine has (None: it has none).
pub(super) async fn guest_qemu_version(docker: &Docker) -> Option<String> {
    let filters = std::collections::HashMap::from([(
        "reference".to_string(),
        vec![format!("{}:*", guest::GUEST_REPO)],
    )]);
    let opts = ListImagesOptionsBuilder::new().filters(&filters).build();
    let images = docker.list_images(Some(opts)).await.ok()?;
    images
        .into_iter()
        .find_map(|i| i.labels.get(LABEL_QEMU).cloned())
}

impl DockerBackend {
    /// The guest image `spec` needs on this engine, and whether the engine has it with the
    /// ready state `spec` loads (an error says what to push).
    pub async fn guest_image_for(&self, spec: &VmSpec) -> Result<String, BackendError> {
        let tag = self.guest_tag(spec);
        let checked = (tag.clone(), spec.incoming.clone());
        // Once seen there, not asked again: an image removed since fails the create instead.
        if self
            .guest_checked
            .lock()
            .expect("poisoned")
            .contains(&checked)
        {
            return Ok(tag);
        }
        let push = format!("run `deskvm image push --engine {}`", self.engine_arg());
        let img = self.docker.inspect_image(&tag).await.map_err(|_| {
            BackendError::Setup(format!(
                "engine {} has no guest image {tag}: {push}",
                self.engine.name
            ))
        })?;
        if let Some(state) = &spec.incoming {
            let ready = state
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let labels = img.config.and_then(|c| c.labels).unwrap_or_default();
            let has = labels
                .get(LABEL_READY)
                .is_some_and(|l| l.split(',').any(|r| r == ready));
            if !has {
                return Err(BackendError::Setup(format!(
                    "engine {}'s guest image {tag} lacks ready state {ready}: {push}",
                    self.engine.name
                )));
            }
        }
        self.guest_checked.lock().expect("poisoned").insert(checked);
        Ok(tag)
    }

    /// The guest image tag of `spec`'s image for this engine's QEMU build.
    pub(super) fn guest_tag(&self, spec: &VmSpec) -> String {
        let image_dir = spec
            .kernel
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        guest::tag_for(&image_dir, self.qemu_version())
    }

    fn engine_arg(&self) -> String {
        match &self.engine.url {
            Some(u) => format!("{}={u}", self.engine.name),
            None => self.engine.name.clone(),
        }
    }

    fn in_image(&self, p: &Path) -> Result<PathBuf, BackendError> {
        super::engine::in_image(&self.cache_dir, p).ok_or_else(|| {
            BackendError::Setup(format!("{} is not in the image cache", p.display()))
        })
    }

    pub(super) async fn launch_remote(
        &self,
        session_id: &str,
        spec: &VmSpec,
        host_files: &RuntimeFiles,
    ) -> Result<Box<dyn Instance>, BackendError> {
        if spec.memory != Memory::Private {
            return Err(BackendError::Setup(
                "a remote engine runs guests on private memory (templates stay on their host)"
                    .into(),
            ));
        }
        let t = std::time::Instant::now();
        let tag = self.guest_image_for(spec).await?;
        let backing = spec.backing.as_deref().ok_or_else(|| {
            BackendError::Setup("no disk to make the session's overlay over".into())
        })?;
        let mut inner = spec.clone();
        inner.kernel = self.in_image(&spec.kernel)?;
        inner.initrd = self.in_image(&spec.initrd)?;
        inner.incoming = spec
            .incoming
            .as_deref()
            .map(|p| self.in_image(p))
            .transpose()?;
        let files = RuntimeFiles {
            dir: RUNTIME_IN_CONTAINER.into(),
        };
        let mut cmd = vec![
            "bash".to_string(),
            "-c".into(),
            START.into(),
            self.in_image(backing)?.to_string_lossy().into_owned(),
        ];
        cmd.extend(Self::qemu_argv(session_id, &inner, &files));
        let name = format!("deskvm-{session_id}");
        if !self.launch_warm(session_id, &cmd, host_files).await {
            let config = self.container_config(session_id, spec, &tag, Vec::new(), cmd);
            self.create_and_start(&name, config).await?;
        }
        tracing::debug!(ms = t.elapsed().as_millis() as u64, engine = %self.engine.name, "container created and started");
        let link = ExecLink::new(
            self.docker.clone(),
            name.clone(),
            files,
            SCREEN_IN_CONTAINER.into(),
            self.lost_token(),
        );
        Ok(self.supervise(name, Arc::new(link)))
    }
}

impl DockerBackend {
    /// The engine's memory in bytes (`docker info`, asked once: it takes the engine tens of
    /// milliseconds, and placement asks before every start).
    pub async fn memory_total(&self) -> Result<u64, bollard::errors::Error> {
        if let Some(t) = self.memory_total.get() {
            return Ok(*t);
        }
        let total = self.docker.info().await?.mem_total.unwrap_or(0).max(0) as u64;
        Ok(*self.memory_total.get_or_init(|| total))
    }

    /// Learns the engine's QEMU build once a guest image has arrived there.
    pub async fn refresh_version(&self) {
        if self.version.get().is_none() {
            if let Some(v) = guest_qemu_version(&self.docker).await {
                let _ = self.version.set(v);
            }
        }
    }
}

/// How often a remote engine is asked whether it is there, and how many silent asks in a row
/// mean it is lost (a partition resets no connection: without this its sessions' reads and
/// waits would hang instead of failing).
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(3);
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
const SILENT_PINGS: u32 = 2;

impl DockerBackend {
    /// False once the watchdog found the engine silent, until it answers again.
    pub fn answering(&self) -> bool {
        self.answering.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The token this engine's current sessions are cut off with when it goes quiet.
    pub(super) fn lost_token(&self) -> tokio_util::sync::CancellationToken {
        self.lost.lock().expect("poisoned").clone()
    }

    /// Starts the watchdog of a remote engine (nothing for this host's). It ends with the
    /// backend (it holds only a weak reference to the token's slot).
    pub(super) fn watched(self) -> Self {
        if !self.remote {
            return self;
        }
        let (docker, name) = (self.docker.clone(), self.engine.name.clone());
        let slot = Arc::downgrade(&self.lost);
        let answering = self.answering.clone();
        tokio::spawn(async move {
            let mut silent = 0;
            loop {
                tokio::time::sleep(PING_EVERY).await;
                let Some(slot) = slot.upgrade() else { return };
                let answered = matches!(
                    tokio::time::timeout(PING_TIMEOUT, docker.ping()).await,
                    Ok(Ok(_))
                );
                silent = if answered { 0 } else { silent + 1 };
                answering.store(silent < SILENT_PINGS, std::sync::atomic::Ordering::Relaxed);
                if silent == SILENT_PINGS {
                    tracing::warn!(engine = %name, "the engine stopped answering; failing its sessions");
                    let old = std::mem::take(&mut *slot.lock().expect("poisoned"));
                    old.cancel();
                }
            }
        });
        self
    }
}
