//! One QMP connection per VM, through the `qapi` crate. The service keeps one command in flight
//! per connection, so commands of a session are serialized here as well as in the session lane.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp;
use qapi::ExecuteError;
use thiserror::Error;
use tokio::io::WriteHalf;

use super::link::{Conn, Link, Socket};

type Writer = QmpStreamTokio<WriteHalf<Conn>>;

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("could not connect to QMP at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("QMP {command} failed: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
    #[error("QMP connection lost during {command} (QEMU exited?)")]
    Lost {
        command: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} did not finish within {secs} s")]
    Timeout { what: &'static str, secs: u64 },
}

/// The block device of the session disk (`-drive if=virtio` names its first one so).
pub const DISK_DEVICE: &str = "virtio0";

/// The longest the guest may stop at the end of a live save, as QEMU plans it.
const LIVE_DOWNTIME_MS: u64 = 50;

/// What a live save measured.
#[derive(Debug, Clone, Copy)]
pub struct LiveSave {
    /// The guest stopped at this instant or later: the pause is at most "now" minus it.
    pub stopped_no_earlier_than: Instant,
    /// How long QEMU kept the guest stopped to finish the stream.
    pub downtime_ms: u64,
    /// The guest dirtied memory too fast to converge and was stopped to finish the save.
    pub forced_stop: bool,
}

/// QMP commands whose arguments the `qapi` crate's schema types make awkward (unions with
/// `null`, structs of twenty optional fields): their name as a type, their arguments as JSON.
pub(super) trait RawName {
    const NAME: &'static str;
}

#[derive(serde::Serialize)]
#[serde(transparent)]
pub(super) struct Raw<N>(
    serde_json::Value,
    #[serde(skip)] std::marker::PhantomData<N>,
);

impl<N> Raw<N> {
    pub(super) fn new(args: serde_json::Value) -> Self {
        Raw(args, std::marker::PhantomData)
    }
}

impl<N: RawName + Send + Sync> qapi::Command for Raw<N> {
    type Ok = serde_json::Value;
    const NAME: &'static str = N::NAME;
    const ALLOW_OOB: bool = false;
}

impl<N: RawName + Send + Sync> qmp::QmpCommand for Raw<N> {}

macro_rules! raw_commands {
    ($($ty:ident = $name:literal),* $(,)?) => {$(
        pub(super) struct $ty;
        impl RawName for $ty {
            const NAME: &'static str = $name;
        }
    )*};
}

raw_commands! {
    MigrateSetParameters = "migrate-set-parameters",
    MigrateSetCapabilities = "migrate-set-capabilities",
    MigrateIncoming = "migrate-incoming",
    ChangeBackingFile = "change-backing-file",
    BlockdevAdd = "blockdev-add",
    BlockdevSnapshot = "blockdev-snapshot",
    VirtioQueueElement = "x-query-virtio-queue-element",
}

pub struct Qmp {
    svc: QapiService<Writer>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to QEMU's QMP socket through `link`, waiting for QEMU to create it.
    pub async fn connect(link: &dyn Link, timeout: Duration) -> Result<Self, QmpError> {
        let path = Socket::Qmp.path(link.files());
        let deadline = Instant::now() + timeout;
        let stream = loop {
            let attempt = async {
                let conn = link.open(Socket::Qmp).await?;
                QmpStreamTokio::open(conn).await?.negotiate().await
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let failed = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(s)) => break s,
                Ok(Err(e)) => e,
                Err(_) => io::Error::new(io::ErrorKind::TimedOut, "QEMU did not greet on QMP"),
            };
            if Instant::now() >= deadline {
                return Err(QmpError::Connect {
                    path,
                    source: failed,
                });
            }
            tracing::trace!(error = %failed, "QMP not up yet");
            // A failed connect costs a syscall; QEMU is up ~50 ms after exec. Through an exec
            // channel it costs the engine two requests (and the bridge waits for the socket
            // itself): slower retries there.
            let pause = if link.kind() == "host" { 5 } else { 100 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        };
        let (svc, reader) = stream.spawn_tokio();
        Ok(Qmp { svc, reader })
    }

    pub async fn execute<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::Command + qmp::QmpCommand + Send + 'static,
        C::Ok: Send,
    {
        match finish_alone(self.svc.execute(command)).await {
            Ok(ok) => Ok(ok),
            Err(ExecuteError::Qapi(e)) => Err(QmpError::Command {
                command: C::NAME,
                message: e.desc,
            }),
            Err(ExecuteError::Io(source)) => Err(QmpError::Lost {
                command: C::NAME,
                source,
            }),
        }
    }

    /// Writes the primary display to `path` as PPM (PNG in QEMU 7.1–7.2.2 was broken, and encoding
    /// in Rust keeps compression and scaling under our control).
    pub async fn screendump(&self, path: &Path) -> Result<(), QmpError> {
        self.execute(qmp::screendump {
            filename: path.to_string_lossy().into_owned(),
            format: Some(qmp::ImageFormat::ppm),
            device: None,
            head: None,
        })
        .await
        .map(drop)
    }

    pub async fn send_events(&self, events: Vec<qmp::InputEvent>) -> Result<(), QmpError> {
        self.execute(qmp::input_send_event {
            device: None,
            head: None,
            events,
        })
        .await
        .map(drop)
    }

    pub async fn status(&self) -> Result<qmp::RunState, QmpError> {
        Ok(self.execute(qmp::query_status {}).await?.status)
    }

    /// Waits for an incoming migration to finish loading, then lets the guest run.
    pub async fn resume_incoming(&self, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.status().await? {
                qmp::RunState::inmigrate | qmp::RunState::restore_vm => {}
                qmp::RunState::running => return Ok(()),
                _ => return self.execute(qmp::cont {}).await.map(drop),
            }
            if Instant::now() > deadline {
                return Err(QmpError::Timeout {
                    what: "loading the ready state",
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `x-ignore-shared`: RAM in a shared file is left out of saved states (and expected out of
    /// loaded ones) while on.
    pub async fn ignore_shared_memory(&self, on: bool) -> Result<(), QmpError> {
        self.execute(Raw::<MigrateSetCapabilities>::new(serde_json::json!({
            "capabilities": [{ "capability": "x-ignore-shared", "state": on }]
        })))
        .await
        .map(drop)
    }

    /// Loads a state into a VM started with `-incoming defer`, with `x-ignore-shared` on (a
    /// template clone; no command-line switch sets the capability).
    pub async fn load_deferred(&self, path: &Path) -> Result<(), QmpError> {
        self.ignore_shared_memory(true).await?;
        self.execute(Raw::<MigrateIncoming>::new(serde_json::json!({
            "uri": format!("file:{}", path.display())
        })))
        .await
        .map(drop)
    }

    /// Waits for an incoming state to be loaded, leaving the guest stopped.
    pub async fn wait_loaded(&self, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        while matches!(
            self.status().await?,
            qmp::RunState::inmigrate | qmp::RunState::restore_vm
        ) {
            if Instant::now() > deadline {
                return Err(QmpError::Timeout {
                    what: "loading the saved state",
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Starts writing the machine's state to the file `path`.
    async fn migrate_to(&self, path: &Path) -> Result<(), QmpError> {
        self.execute(qmp::migrate {
            uri: Some(format!("file:{}", path.display())),
            channels: None,
            detach: None,
            resume: None,
        })
        .await
        .map(drop)
    }

    /// Stops the guest and writes its whole state to `path`.
    pub async fn save_state(&self, path: &Path, timeout: Duration) -> Result<(), QmpError> {
        self.execute(qmp::stop {}).await?;
        self.migrate_to(path).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.execute(qmp::query_migrate {}).await?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => return Ok(()),
                Some(qmp::MigrationStatus::failed) | Some(qmp::MigrationStatus::cancelled) => {
                    return Err(QmpError::Command {
                        command: "migrate",
                        message: info.error_desc.unwrap_or_else(|| "migration failed".into()),
                    })
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(QmpError::Timeout {
                    what: "saving the ready state",
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the whole machine to `path` while the guest runs: QEMU sends RAM as the guest
    /// dirties it (pre-copy) and stops the guest only for the last dirty pages and the device
    /// state. A guest still dirtying pages after `converge` is stopped so the save finishes.
    /// Returns with the guest stopped (`postmigrate`, its disks flushed); `cont` resumes it.
    pub async fn save_state_live(
        &self,
        path: &Path,
        converge: Duration,
        timeout: Duration,
    ) -> Result<LiveSave, QmpError> {
        // A file takes the stream as fast as the host writes; QEMU's default cap (128 MiB/s)
        // would stretch the save, and its downtime estimate assumes that bandwidth.
        self.execute(Raw::<MigrateSetParameters>::new(serde_json::json!({
            "max-bandwidth": 1u64 << 40,
            "downtime-limit": LIVE_DOWNTIME_MS,
        })))
        .await?;
        self.migrate_to(path).await?;
        let started = Instant::now();
        let mut stop_sent: Option<Instant> = None;
        let mut last_active = started;
        loop {
            let asked = Instant::now();
            let info = self.execute(qmp::query_migrate {}).await?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => {
                    let downtime = Duration::from_millis(info.downtime.unwrap_or(0).max(0) as u64);
                    // The guest stopped `downtime` before completion, which came after the
                    // last poll that still saw the save running: the earliest it can have been.
                    let earliest = last_active.checked_sub(downtime).unwrap_or(last_active);
                    return Ok(LiveSave {
                        stopped_no_earlier_than: stop_sent.map_or(earliest, |s| s.max(earliest)),
                        downtime_ms: downtime.as_millis() as u64,
                        forced_stop: stop_sent.is_some(),
                    });
                }
                Some(qmp::MigrationStatus::failed) | Some(qmp::MigrationStatus::cancelled) => {
                    return Err(QmpError::Command {
                        command: "migrate",
                        message: info.error_desc.unwrap_or_else(|| "migration failed".into()),
                    })
                }
                _ => last_active = asked,
            }
            if stop_sent.is_none() && started.elapsed() > converge {
                stop_sent = Some(Instant::now());
                self.execute(qmp::stop {}).await?;
            }
            if started.elapsed() > timeout {
                let _ = self.execute(qmp::migrate_cancel {}).await;
                return Err(QmpError::Timeout {
                    what: "saving the machine state",
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Freezes the disk: `overlay` (a qcow2 file without an open backing) becomes the active
    /// layer above the current one, which QEMU keeps open read-only from then on. Writes after
    /// this land in `overlay` only. `node` must be unique in this QEMU process.
    pub async fn snapshot_disk(&self, overlay: &Path, node: &str) -> Result<(), QmpError> {
        self.execute(Raw::<BlockdevAdd>::new(serde_json::json!({
            "driver": "qcow2",
            "node-name": node,
            "discard": "unmap",
            "cache": { "direct": false, "no-flush": true },
            "file": { "driver": "file", "filename": overlay.to_string_lossy() },
            // The header names the layer below (the checkpoint's path); QEMU must not open it
            // there: blockdev-snapshot attaches the running layer instead.
            "backing": null,
        })))
        .await?;
        self.execute(Raw::<BlockdevSnapshot>::new(serde_json::json!({
            "node": DISK_DEVICE,
            "overlay": node,
        })))
        .await
        .map(drop)
    }

    /// Rewrites the backing file named in the header of layer `node` of the session disk
    /// (QEMU keeps the open chain as it is).
    pub async fn change_backing_file(&self, node: &str, backing: &Path) -> Result<(), QmpError> {
        self.execute(Raw::<ChangeBackingFile>::new(serde_json::json!({
            "device": DISK_DEVICE,
            "image-node-name": node,
            "backing-file": backing.to_string_lossy(),
        })))
        .await
        .map(drop)
    }

    /// Lets a stopped guest (or one whose state was just saved) run again.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute(qmp::cont {}).await?;
        Ok(())
    }

    /// Asks QEMU to quit; gives up after a few seconds (a VM on an engine that went silent
    /// never answers, and the caller stops it through its backend anyway).
    pub async fn quit(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.execute(qmp::quit {})).await;
    }
}

/// Runs one qapi exchange in a task of its own, so that a caller dropped midway (a call cut off
/// because its VM went) cannot break the next exchange. The guest agent has no out-of-band
/// mode: every command has id 0 and qapi keeps its writer locked until the reply, so a dropped
/// exchange would leave its reply slot behind and the next command panic on the duplicate id.
/// On QMP (numbered ids) a reply reaching a dropped slot ends qapi's reader, and every later
/// command would fail as disconnected. The task finishes the exchange, or fails when the stream
/// ends (qapi then drops every slot).
pub(super) async fn finish_alone<T: Send + 'static>(
    exchange: impl std::future::Future<Output = Result<T, ExecuteError>> + Send + 'static,
) -> Result<T, ExecuteError> {
    tokio::spawn(exchange)
        .await
        .unwrap_or_else(|e| Err(ExecuteError::Io(io::Error::other(e))))
}
