//! Containers started ahead of the sessions that will use them.
//!
//! Creating and starting a container costs the engine ~200 ms, most of what a Docker start
//! adds to a local one. So the next session's container is created and started while nobody
//! waits, with its runtime dir bound as usual, running a shim that blocks on a FIFO there; a
//! start writes QEMU's command line into the FIFO (well under a millisecond) and the shim
//! execs QEMU, which then runs as the container's first process exactly as in a container
//! made on demand. A session takes the prepared container only if it needs the same limits
//! ([`Key`]); anything else, or a prepared container that died, falls back to creating one.
//!
//! On an engine elsewhere there is no FIFO to share: the prepared container runs the guest
//! image with stdin open, its shim reads the command line from stdin, and a start attaches to
//! the container, writes it and closes stdin (`hand_over_stdin`).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::query_parameters::{AttachContainerOptionsBuilder, CreateContainerOptionsBuilder};
use bollard::Docker;
use futures::future::{BoxFuture, FutureExt, Shared};

use super::DockerBackend;
use crate::storage;
use crate::vm::spec::{RuntimeFiles, VmSpec};

/// The FIFO in the runtime dir the shim reads QEMU's command line from (NUL-separated).
const FIFO: &str = "qemu-argv";
/// Reads the command line, then becomes QEMU.
const SHIM: &str = r#"mapfile -d '' -t argv < "$0" && exec "${argv[@]}""#;
/// The same, from stdin (an engine elsewhere).
const STDIN_SHIM: &str = r#"mapfile -d '' -t argv && exec "${argv[@]}""#;
/// How long a start waits for the shim to open the FIFO (it may still be starting).
const SHIM_WAIT: Duration = Duration::from_millis(500);

/// What a session container depends on: its limits, and whether its screendump dir on tmpfs
/// is bound. A prepared container fits a session with the same.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    memory_mb: u32,
    cpus: u32,
    network: bool,
    shm: bool,
    /// On an engine elsewhere: the guest image the container runs.
    image: Option<String>,
}

impl Key {
    /// A session like `spec` whose runtime dir is `files` (made), or is yet to be made; on an
    /// engine elsewhere (`image`: its guest image) nothing of this host is bound.
    fn of(spec: &VmSpec, files: Option<&RuntimeFiles>, image: Option<String>) -> Self {
        Key {
            memory_mb: spec.memory_mb,
            cpus: spec.cpus,
            network: spec.network,
            shm: image.is_none()
                && match files {
                    Some(f) => f.shm_in_use(),
                    None => crate::vm::spec::shm_root().is_some(),
                },
            image,
        }
    }
}

struct Warm {
    key: Key,
    files: RuntimeFiles,
    /// Resolves once the container runs (or could not be made to).
    started: Shared<BoxFuture<'static, Result<(), String>>>,
}

#[derive(Default)]
pub(super) struct Pool {
    /// Prepared, not yet taken; and whether the pool is closed (its server is stopping).
    next: Mutex<(Option<(String, Warm)>, bool)>,
    /// Taken by a session start that has not launched yet.
    taken: Mutex<HashMap<String, Warm>>,
    /// Removals under way, awaited when the pool closes.
    discarding: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pool {
    pub(super) fn take(&self, spec: &VmSpec, image: Option<String>) -> Option<String> {
        let mut next = self.next.lock().expect("warm pool poisoned");
        let wanted = Key::of(spec, None, image);
        if next.0.as_ref().is_none_or(|(_, w)| w.key != wanted) {
            return None;
        }
        let (id, warm) = next.0.take()?;
        self.taken
            .lock()
            .expect("warm pool poisoned")
            .insert(id.clone(), warm);
        Some(id)
    }

    /// The taken session `id`'s prepared container, no longer taken.
    fn untake(&self, id: &str) -> Option<Warm> {
        self.taken.lock().expect("warm pool poisoned").remove(id)
    }
}

impl DockerBackend {
    /// Creates and starts session `id`'s container in the background, waiting for QEMU's
    /// command line; replaces (and removes) the one prepared before.
    pub(super) fn prepare_warm(&self, id: String, spec: &VmSpec, files: RuntimeFiles) {
        let config = if self.remote {
            let shim = ["/bin/bash", "-c", STDIN_SHIM].map(String::from).to_vec();
            let mut c = self.container_config(&id, spec, &self.guest_tag(spec), Vec::new(), shim);
            (c.open_stdin, c.stdin_once, c.attach_stdin) = (Some(true), Some(true), Some(true));
            c
        } else {
            if let Err(e) = mkfifo(&files.dir.join(FIFO)) {
                tracing::warn!(error = %e, "cannot prepare a container ahead");
                let _ = storage::remove_session_dirs(&files);
                return;
            }
            let fifo = files.dir.join(FIFO).display().to_string();
            let shim = ["/bin/bash", "-c", SHIM, &fifo].map(String::from).to_vec();
            self.container_config(&id, spec, &self.image, self.host_binds(&files), shim)
        };
        let docker = self.docker.clone();
        let name = format!("deskvm-{id}");
        let started = async move {
            let opts = CreateContainerOptionsBuilder::new().name(&name).build();
            docker
                .create_container(Some(opts), config)
                .await
                .map_err(|e| e.to_string())?;
            docker
                .start_container(&name, None)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
        .shared();
        // Driven now, not when a start first awaits it.
        tokio::spawn(started.clone());
        let warm = Warm {
            key: Key::of(
                spec,
                Some(&files),
                self.remote.then(|| self.guest_tag(spec)),
            ),
            files,
            started,
        };
        let old = {
            let mut next = self.warm.next.lock().expect("warm pool poisoned");
            if next.1 {
                // Closed while this was being prepared: it goes at once.
                Some((id, warm))
            } else {
                next.0.replace((id, warm))
            }
        };
        if let Some((id, old)) = old {
            self.discard_later(id, old, true);
        }
    }

    /// A start that took `session_id` failed before launching it: its container goes (its
    /// runtime dir is the start's to remove).
    pub(super) fn release_warm(&self, session_id: &str) {
        if let Some(warm) = self.warm.untake(session_id) {
            self.discard_later(session_id.to_string(), warm, false);
        }
    }

    fn discard_later(&self, id: String, warm: Warm, with_dir: bool) {
        let docker = self.docker.clone();
        let task = tokio::spawn(async move { discard(&docker, &id, warm, with_dir).await });
        let mut pending = self.warm.discarding.lock().expect("warm pool poisoned");
        pending.retain(|t| !t.is_finished());
        pending.push(task);
    }

    /// Hands QEMU's command line to the container prepared for `session_id`, if it was taken
    /// and runs: true when QEMU is starting in it.
    pub(super) async fn launch_warm(
        &self,
        session_id: &str,
        argv: &[String],
        files: &RuntimeFiles,
    ) -> bool {
        let Some(warm) = self.warm.untake(session_id) else {
            return false;
        };
        let name = format!("deskvm-{session_id}");
        let handed = match warm.started.await {
            Ok(()) if self.remote => hand_over_stdin(&self.docker, &name, argv).await,
            Ok(()) => hand_over(&files.dir.join(FIFO), argv).await,
            Err(e) => Err(e),
        };
        match handed {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, session = session_id, "the container prepared for this session is not usable; creating another");
                Self::remove(&self.docker, &name).await;
                false
            }
        }
    }

    /// Closes the pool and removes the prepared containers no session used (and the runtime
    /// dir of the one not taken; a taken one's belongs to its session), awaiting removals
    /// already under way. With `engine_answers` false (a remote engine gone silent) it asks the
    /// engine nothing: each request would wait for its timeout, and the janitor of the next start
    /// with that engine removes the containers (this instance's, and dead by then).
    pub(super) async fn discard_warm(&self, engine_answers: bool) {
        let next = {
            let mut next = self.warm.next.lock().expect("warm pool poisoned");
            next.1 = true;
            next.0.take()
        };
        if !engine_answers {
            tracing::warn!(engine = %self.engine.name, "engine not answering: its prepared containers are left to the next start's janitor");
            if let Some((_, warm)) = next {
                let _ = storage::remove_session_dirs(&warm.files);
            }
            return;
        }
        let taken: Vec<_> = self
            .warm
            .taken
            .lock()
            .expect("warm pool poisoned")
            .drain()
            .collect();
        for (id, warm) in taken {
            discard(&self.docker, &id, warm, false).await;
        }
        if let Some((id, warm)) = next {
            discard(&self.docker, &id, warm, true).await;
        }
        let pending: Vec<_> = self
            .warm
            .discarding
            .lock()
            .expect("warm pool poisoned")
            .drain(..)
            .collect();
        for task in pending {
            let _ = task.await;
        }
    }
}

async fn discard(docker: &Docker, id: &str, warm: Warm, with_dir: bool) {
    // A create still in flight would land after the removal.
    let _ = warm.started.await;
    DockerBackend::remove(docker, &format!("deskvm-{id}")).await;
    if with_dir {
        let _ = storage::remove_session_dirs(&warm.files);
    }
}

fn nul_separated(argv: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for a in argv {
        bytes.extend_from_slice(a.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// Writes `argv` NUL-separated to the prepared container's stdin and closes it (the engine
/// closes the container's stdin when its one attached client ends: `stdin_once`).
async fn hand_over_stdin(docker: &Docker, name: &str, argv: &[String]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let opts = AttachContainerOptionsBuilder::new()
        .stdin(true)
        .stream(true)
        .build();
    let attached = docker
        .attach_container(name, Some(opts))
        .await
        .map_err(|e| format!("attaching to {name}: {e}"))?;
    let mut input = attached.input;
    input
        .write_all(&nul_separated(argv))
        .await
        .map_err(|e| format!("writing to {name}: {e}"))?;
    input
        .shutdown()
        .await
        .map_err(|e| format!("closing {name}'s stdin: {e}"))
}

/// Writes `argv` NUL-separated into the FIFO once the shim has it open for reading.
async fn hand_over(fifo: &Path, argv: &[String]) -> Result<(), String> {
    let bytes = nul_separated(argv);
    let start = Instant::now();
    loop {
        // Non-blocking: with no reader this fails (ENXIO) instead of waiting forever.
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo);
        match opened {
            // A pipe holds 64 KiB; a command line is a few: one write, no partial one.
            Ok(mut f) => {
                return f
                    .write_all(&bytes)
                    .map_err(|e| format!("writing {}: {e}", fifo.display()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && start.elapsed() < SHIM_WAIT => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(format!("opening {}: {e}", fifo.display())),
        }
    }
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
