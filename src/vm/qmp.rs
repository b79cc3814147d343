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
use tokio::net::UnixStream;

type Writer = QmpStreamTokio<WriteHalf<UnixStream>>;

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
    /// Connects to the QMP socket, waiting for QEMU to create it.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match QmpStreamTokio::open_uds(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::trace!(error = %e, "QMP not up yet");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.into(),
                        source,
                    })
                }
            }
        };
        let stream = stream
            .negotiate()
            .await
            .map_err(|source| QmpError::Connect {
                path: path.into(),
                source,
            })?;
        let (svc, reader) = stream.spawn_tokio();
        Ok(Qmp { svc, reader })
    }

    pub async fn execute<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::Command + qmp::QmpCommand,
    {
        match self.svc.execute(command).await {
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

    /// Stops the guest and writes its whole state to `path`.
    pub async fn save_state(&self, path: &Path, timeout: Duration) -> Result<(), QmpError> {
        self.execute(qmp::stop {}).await?;
        self.execute(qmp::migrate {
            uri: Some(format!("file:{}", path.display())),
            channels: None,
            detach: None,
            resume: None,
        })
        .await?;
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

    /// Lets a stopped guest (or one whose state was just saved) run again.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute(qmp::cont {}).await?;
        Ok(())
    }

    pub async fn quit(&self) {
        let _ = self.execute(qmp::quit {}).await;
    }
}
