//! Where a session's QEMU process runs. The session only sees the runtime directory (sockets,
//! screendumps) and an exit signal; the Docker backend plugs in beside the local one.

pub mod docker;
pub mod local;

use futures::future::BoxFuture;
use thiserror::Error;
use tokio::sync::watch;

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
    #[error("I/O error in the session runtime dir")]
    Io(#[from] std::io::Error),
}

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// The QEMU build this backend runs; ready states are keyed by it.
    fn qemu_version(&self) -> &str;
    fn launch<'a>(
        &'a self,
        session_id: &'a str,
        spec: &'a VmSpec,
        files: &'a RuntimeFiles,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, BackendError>>;
}

/// A running VM. Dropping it kills the VM.
pub trait Instance: Send + Sync {
    /// Becomes `Some(reason)` when the VM is gone, whoever ended it.
    fn exited(&self) -> watch::Receiver<Option<String>>;
    fn stop(&mut self) -> BoxFuture<'_, ()>;
}
