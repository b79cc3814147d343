//! Where a session's QEMU process runs. The session only sees the runtime directory (sockets,
//! screendumps) and an exit signal; the Docker backend plugs in beside the local one.

pub mod docker;
pub mod local;
pub mod pool;

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use thiserror::Error;
use tokio::sync::{oneshot, watch};

use crate::vm::link::Link;
use crate::vm::spec::{RuntimeFiles, VmSpec};

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("could not start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    /// A long Engine API call (a push, an upload, a commit) that made no progress for the stall
    /// bound: `what` names the call, the source says how far it got and which side stopped.
    #[error("{what}")]
    Stalled {
        what: String,
        #[source]
        source: docker::transfer::Stalled,
    },
    /// Names the operation and the path; the OS error is its source.
    #[error(transparent)]
    Io(#[from] crate::storage::IoError),
}

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// The QEMU build this backend runs; ready states are keyed by it.
    fn qemu_version(&self) -> &str;
    /// The Docker image sessions run from, if any: reclaim keeps it while they do.
    fn runtime_image(&self) -> Option<String> {
        None
    }
    /// Whether QEMU sees this host's files: the runtime dir, the image cache, RAM templates.
    /// Where it does not (a remote engine), the VM starts from what its image carries, makes its
    /// disk overlay itself (over [`VmSpec::backing`]), and cannot save checkpoints on this host.
    fn files_on_host(&self) -> bool {
        true
    }
    fn launch<'a>(
        &'a self,
        session_id: &'a str,
        spec: &'a VmSpec,
        files: &'a RuntimeFiles,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, BackendError>>;
    /// Whether [`Backend::prepare`] makes starts faster here (Docker: a started container
    /// waiting for QEMU's command line); the local backend has nothing to prepare.
    fn prepares_ahead(&self) -> bool {
        false
    }
    /// Prepares, in the background, what a later `launch` of session `session_id` with a spec
    /// like `spec` needs, in `files` (a runtime dir made for it). Replaces the last prepared one.
    fn prepare(&self, _session_id: String, _spec: &VmSpec, _files: RuntimeFiles) {}
    /// The id of a session prepared for a spec like `spec`, taken: its next `launch` uses it.
    fn take_prepared(&self, _spec: &VmSpec) -> Option<String> {
        None
    }
    /// Gives up a prepared session taken by a start that failed before `launch`.
    fn release(&self, _session_id: &str) {}
    /// Removes whatever was prepared and not launched, and prepares nothing more.
    fn discard_prepared(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

/// A running VM. Dropping it kills the VM.
pub trait Instance: Send + Sync {
    /// Becomes `Some(reason)` when the VM is gone, whoever ended it.
    fn exited(&self) -> watch::Receiver<Option<String>>;
    /// How to reach the VM's QMP, guest agent and files.
    fn link(&self) -> Arc<dyn Link>;
    fn stop(&mut self) -> BoxFuture<'_, ()>;
}

/// The [`Instance`] every backend hands out: the exit reason its supervising task publishes, and
/// a kill switch that task listens on. Dropping it pulls the switch too.
pub struct Supervised {
    link: Arc<dyn Link>,
    exit: watch::Receiver<Option<String>>,
    kill: Option<oneshot::Sender<()>>,
}

/// The supervising task's ends: publish the exit reason on `exit`; `kill` resolves when the
/// session wants the VM gone (or the [`Supervised`] was dropped).
pub struct Supervisor {
    pub exit: watch::Sender<Option<String>>,
    pub kill: oneshot::Receiver<()>,
}

pub fn supervised(link: Arc<dyn Link>) -> (Supervised, Supervisor) {
    let (exit_tx, exit_rx) = watch::channel(None);
    let (kill_tx, kill_rx) = oneshot::channel();
    (
        Supervised {
            link,
            exit: exit_rx,
            kill: Some(kill_tx),
        },
        Supervisor {
            exit: exit_tx,
            kill: kill_rx,
        },
    )
}

impl Instance for Supervised {
    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }

    fn link(&self) -> Arc<dyn Link> {
        self.link.clone()
    }

    fn stop(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if let Some(kill) = self.kill.take() {
                let _ = kill.send(());
            }
            let _ = self.exit.wait_for(Option::is_some).await;
        }
        .boxed()
    }
}
