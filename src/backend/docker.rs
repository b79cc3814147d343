//! QEMU inside one Docker container per session, through the Docker Engine API (bollard).
//!
//! On this host's engine the container sees the session's runtime directory, its screendump dir
//! on tmpfs and the image cache at the same paths as the host (qcow2 backing-file paths and QMP
//! socket paths stay valid on both sides); the sockets never leave that 0700 directory. On an
//! engine elsewhere nothing is bound: the container runs the guest image (`guest`) and is
//! reached through exec sessions (`exec`, `remote`). No port is ever published.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, DeviceMapping, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};

pub mod engine;
pub mod exec;
pub mod guest;
mod remote;
mod runtime_image;
pub mod transfer;
mod warm;

pub use engine::EngineSpec;
pub use runtime_image::build_runtime_image;

use super::{Backend, BackendError, Instance};
use crate::storage::Owner;
use crate::vm::link::{HostLink, Link};
use crate::vm::spec::{hex, Accel, RuntimeFiles, VmSpec};

/// The names deskvm owns in an engine live with the other owner marks, where reclaim (below this
/// room) judges them; the owner's labels (instance, pid and its start time, boot, session) come
/// from [`Owner::labels`].
pub use crate::storage::owner::{IMAGE_REPO, LABEL_VERSION};
/// Set on the runtime image at import: the QEMU build inside, so no container has to run to ask.
pub const LABEL_QEMU: &str = "deskvm.qemu-version";

const RUNTIME_RECIPE: &[u8] = include_bytes!("../../tools/runtime/build-rootfs.sh");

/// The runtime image tag: a hash of its recipe, so a changed recipe means a new image.
pub fn runtime_image_tag() -> String {
    std::env::var("DESKVM_RUNTIME_IMAGE")
        .unwrap_or_else(|_| format!("{IMAGE_REPO}:{}", hex(&Sha256::digest(RUNTIME_RECIPE)[..6])))
}

pub(crate) fn docker_err(what: &str, e: bollard::errors::Error) -> BackendError {
    BackendError::Setup(format!("{what}: {e}"))
}

/// Connects to this host's engine (`DOCKER_HOST` is honoured) and checks that it answers.
pub async fn connect() -> Result<Docker, BackendError> {
    EngineSpec::local().connect(false).await
}

/// The QEMU version recorded on the runtime image, or None when the image is missing.
pub async fn image_qemu_version(docker: &Docker, tag: &str) -> Option<String> {
    let img = docker.inspect_image(tag).await.ok()?;
    let labels = img.config.and_then(|c| c.labels).unwrap_or_default();
    Some(
        labels
            .get(LABEL_QEMU)
            .cloned()
            .unwrap_or_else(|| "unknown QEMU (image without deskvm label)".into()),
    )
}

pub struct DockerBackend {
    docker: Docker,
    engine: EngineSpec,
    /// QEMU does not see this host's files: sessions run the guest image, over exec channels.
    remote: bool,
    /// The runtime image (this host's engine) sessions run from.
    image: String,
    /// The QEMU build sessions run (a remote engine's: that of its guest images, once it has one).
    version: std::sync::OnceLock<String>,
    accel: Accel,
    cache_dir: PathBuf,
    /// The state root's checkpoints (this host's engine): forks and restores run on their
    /// layers, at the host's paths.
    checkpoint_dir: PathBuf,
    /// Containers started ahead for the next sessions (`warm`).
    warm: warm::Pool,
    /// The engine's memory (placement), asked once.
    memory_total: std::sync::OnceLock<u64>,
    /// Guest images (and ready states) seen on a remote engine.
    guest_checked: std::sync::Mutex<std::collections::HashSet<(String, Option<PathBuf>)>>,
    /// Cancelled when a remote engine stops answering; replaced by a fresh one for what
    /// starts after it answers again.
    lost: Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
    /// False while the watchdog's pings go unanswered (placement skips it without asking).
    answering: Arc<std::sync::atomic::AtomicBool>,
}

impl DockerBackend {
    pub async fn new(cache_dir: &Path, accel: Accel) -> Result<Self, BackendError> {
        Self::on(EngineSpec::local(), false, cache_dir, accel).await
    }

    /// The backend of one engine: this host's (runtime image, bind mounts) or one elsewhere
    /// (guest image, exec channels; its QEMU build is the one its guest images were made with).
    pub async fn on(
        engine: EngineSpec,
        insecure: bool,
        cache_dir: &Path,
        accel: Accel,
    ) -> Result<Self, BackendError> {
        let docker = engine.connect(insecure).await?;
        let remote = !engine.is_local();
        let image = runtime_image_tag();
        let version = std::sync::OnceLock::new();
        if remote {
            // Known once a guest image is there (`deskvm image push` may come later).
            if let Some(v) = remote::guest_qemu_version(&docker).await {
                let _ = version.set(v);
            }
        } else {
            let v = image_qemu_version(&docker, &image).await.ok_or_else(|| {
                BackendError::Setup(format!("runtime image {image} not found; build it with `deskvm setup` (or `deskvm image build --runtime`)"))
            })?;
            let _ = version.set(v);
        }
        Ok(DockerBackend {
            docker,
            engine,
            remote,
            image,
            version,
            accel,
            cache_dir: cache_dir.to_path_buf(),
            checkpoint_dir: crate::storage::Layout::from_env().checkpoints(),
            warm: warm::Pool::default(),
            memory_total: Default::default(),
            guest_checked: Default::default(),
            lost: Default::default(),
            answering: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
        .watched())
    }

    /// QEMU's command line for a session.
    fn qemu_argv(session_id: &str, spec: &VmSpec, files: &RuntimeFiles) -> Vec<String> {
        let mut cmd = vec![
            "qemu-system-x86_64".to_string(),
            "-name".into(),
            format!("deskvm-{session_id}"),
        ];
        cmd.extend(spec.argv(files));
        cmd
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn engine(&self) -> &EngineSpec {
        &self.engine
    }

    /// The runtime dir, its tmpfs companion, the image store and the checkpoints, at the
    /// host's paths (read-only but the first two).
    fn host_binds(&self, files: &RuntimeFiles) -> Vec<String> {
        let rt = files.dir.display().to_string();
        let cache = self.cache_dir.display().to_string();
        let mut binds = vec![format!("{rt}:{rt}:rw"), format!("{cache}:{cache}:ro")];
        // Made here, private, before Docker would make a missing bind source as its own.
        match crate::storage::private_dir(&self.checkpoint_dir) {
            Ok(()) => {
                let ck = self.checkpoint_dir.display();
                binds.push(format!("{ck}:{ck}:ro"));
            }
            Err(e) => tracing::warn!(error = %e, dir = %self.checkpoint_dir.display(),
                "containers will not see checkpoints: creating the checkpoints dir failed"),
        }
        // Screendumps go to the session's tmpfs companion dir when it has one.
        if let Some(shm) = files.shm_dir().filter(|_| files.shm_in_use()) {
            let shm = shm.display();
            binds.push(format!("{shm}:{shm}:rw"));
        }
        binds
    }

    /// A session container running `cmd` from `image` with `binds`; what it may use depends
    /// only on [`warm::Key`].
    fn container_config(
        &self,
        session_id: &str,
        spec: &VmSpec,
        image: &str,
        binds: Vec<String>,
        cmd: Vec<String>,
    ) -> ContainerCreateBody {
        let mut labels = Owner::me("session", Some(session_id)).labels();
        labels.insert(
            LABEL_VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        labels.insert(
            super::pool::LABEL_MEMORY_MB.to_string(),
            (spec.memory_mb + 768).to_string(),
        );
        let devices = (self.accel == Accel::Kvm).then(|| {
            vec![DeviceMapping {
                path_on_host: Some("/dev/kvm".into()),
                path_in_container: Some("/dev/kvm".into()),
                cgroup_permissions: Some("rwm".into()),
            }]
        });
        // Guest RAM plus QEMU's own overhead (TCG translation cache, device state).
        let memory = (i64::from(spec.memory_mb) + 768) * 1024 * 1024;
        ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(cmd),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: (!binds.is_empty()).then_some(binds),
                network_mode: Some(if spec.network {
                    "bridge".into()
                } else {
                    "none".into()
                }),
                memory: Some(memory),
                nano_cpus: Some(i64::from(spec.cpus) * 1_000_000_000),
                devices,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Last lines QEMU printed, for the exit reason.
    async fn log_tail(docker: &Docker, name: &str) -> String {
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("3")
            .build();
        let mut logs = docker.logs(name, Some(opts));
        let mut lines = Vec::new();
        while let Some(Ok(chunk)) = logs.next().await {
            lines.push(chunk.to_string().trim().to_string());
        }
        lines.retain(|l| !l.is_empty());
        lines.join(" | ")
    }

    pub(crate) async fn remove(docker: &Docker, name: &str) {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        // An engine that went away must not hold a session's stop for the request timeout.
        let removed = docker.remove_container(name, Some(opts));
        let _ = tokio::time::timeout(Duration::from_secs(15), removed).await;
    }
}

impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn qemu_version(&self) -> &str {
        self.version.get().map_or("", String::as_str)
    }

    fn runtime_image(&self) -> Option<String> {
        (!self.remote).then(|| self.image.clone())
    }

    fn files_on_host(&self) -> bool {
        !self.remote
    }

    fn launch<'a>(
        &'a self,
        session_id: &'a str,
        spec: &'a VmSpec,
        files: &'a RuntimeFiles,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, BackendError>> {
        async move {
            if self.remote {
                return self.launch_remote(session_id, spec, files).await;
            }
            let name = format!("deskvm-{session_id}");
            let argv = Self::qemu_argv(session_id, spec, files);
            let link: Arc<dyn Link> = Arc::new(HostLink(files.clone()));
            if self.launch_warm(session_id, &argv, files).await {
                return Ok(self.supervise(name, link));
            }
            let config =
                self.container_config(session_id, spec, &self.image, self.host_binds(files), argv);
            self.create_and_start(&name, config).await?;
            Ok(self.supervise(name, link))
        }
        .boxed()
    }

    fn prepares_ahead(&self) -> bool {
        true
    }

    fn prepare(&self, session_id: String, spec: &VmSpec, files: RuntimeFiles) {
        self.prepare_warm(session_id, spec, files);
    }

    fn take_prepared(&self, spec: &VmSpec) -> Option<String> {
        self.warm
            .take(spec, self.remote.then(|| self.guest_tag(spec)))
    }

    fn release(&self, session_id: &str) {
        self.release_warm(session_id);
    }

    fn discard_prepared(&self) -> BoxFuture<'_, ()> {
        self.discard_warm(!self.remote || self.answering()).boxed()
    }
}

impl DockerBackend {
    async fn create_and_start(
        &self,
        name: &str,
        config: ContainerCreateBody,
    ) -> Result<(), BackendError> {
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        self.docker
            .create_container(Some(opts), config)
            .await
            .map_err(|e| docker_err("creating the session container", e))?;
        if let Err(e) = self.docker.start_container(name, None).await {
            Self::remove(&self.docker, name).await;
            return Err(docker_err("starting the session container", e));
        }
        Ok(())
    }

    /// Watches a started session container: publishes its exit, kills it on request, and
    /// removes it either way.
    fn supervise(&self, name: String, link: Arc<dyn Link>) -> Box<dyn Instance> {
        let (instance, supervisor) = super::supervised(link);
        let engine = self.engine.name.clone();
        let docker = self.docker.clone();
        let lost = self.remote.then(|| self.lost_token());
        tokio::spawn(async move {
            let mut wait = docker.wait_container(&name, None);
            let quiet = async {
                match &lost {
                    Some(t) => t.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let reason = tokio::select! {
                // A partition resets no connection: the engine's watchdog says it went quiet.
                () = quiet => {
                    let _ = supervisor.exit.send(Some(format!("lost engine {engine}: it stopped answering (container {name})")));
                    Self::remove(&docker, &name).await;
                    return;
                }
                r = wait.next() => {
                    // A non-zero exit comes back as an error carrying the code.
                    let code = match r {
                        Some(Ok(w)) => format!("exit code {}", w.status_code),
                        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => format!("exit code {code}"),
                        // The engine itself is gone (killed, unreachable): say so, not "exited".
                        Some(Err(e)) => {
                            let _ = supervisor.exit.send(Some(format!("lost engine {engine} while container {name} ran: {e}")));
                            Self::remove(&docker, &name).await;
                            return;
                        }
                        None => "gone".into(),
                    };
                    let tail = tokio::time::timeout(Duration::from_secs(5), Self::log_tail(&docker, &name)).await.unwrap_or_default();
                    if tail.is_empty() {
                        format!("container {name} exited ({code})")
                    } else {
                        format!("container {name} exited ({code}): {tail}")
                    }
                }
                _ = supervisor.kill => {
                    let kill = docker.kill_container(&name, Some(KillContainerOptionsBuilder::new().signal("KILL").build()));
                    let _ = tokio::time::timeout(Duration::from_secs(15), kill).await;
                    "stopped".to_string()
                }
            };
            Self::remove(&docker, &name).await;
            let _ = supervisor.exit.send(Some(reason));
        });
        Box::new(instance)
    }
}
