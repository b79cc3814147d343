//! The QEMU guest agent over virtio-serial: commands and files inside the guest without any
//! guest network.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qapi::futures::{QapiService, QgaStreamTokio};
use qapi::qga;
use qapi::ExecuteError;
use thiserror::Error;
use tokio::io::WriteHalf;

use super::link::{Conn, Link, Socket};

type Writer = QgaStreamTokio<WriteHalf<Conn>>;

/// Bytes per guest-file-read/-write: 1 MiB is 1.4 MB of base64 per message, well inside what
/// the agent accepts, and few enough round trips that the virtio-serial link stays busy.
const FILE_CHUNK: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum QgaError {
    #[error("guest agent at {path} did not answer within {secs} s")]
    Unreachable { path: PathBuf, secs: u64 },
    #[error("guest agent {command} failed: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
    #[error("guest agent connection lost during {command}")]
    Lost {
        command: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("guest command did not exit within {ms} ms")]
    ExecTimeout { ms: u64 },
    #[error("stopped waiting for the guest command after {ms} ms: the client cancelled the call (the command may still run in the guest)")]
    Cancelled { ms: u64 },
}

pub struct Qga {
    svc: QapiService<Writer>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qga {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    #[serde(skip)]
    pub stdout_bytes: Vec<u8>,
}

/// CPU time of the whole guest (see [`Qga::cpu_times`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy_ms: u64,
    pub all_ms: u64,
    pub cpus: u32,
}

impl Qga {
    /// Connects and synchronizes (guest-sync flushes anything a previous client left behind).
    /// The agent may not be up yet while the guest boots, so this retries until `timeout`.
    pub async fn connect(link: &dyn Link, timeout: Duration) -> Result<Self, QgaError> {
        let deadline = Instant::now() + timeout;
        let unreachable = || QgaError::Unreachable {
            path: Socket::Qga.path(link.files()),
            secs: timeout.as_secs(),
        };
        loop {
            if let Ok(conn) = link.open(Socket::Qga).await {
                let (svc, reader) = QgaStreamTokio::open(conn).spawn_tokio();
                let qga = Qga { svc, reader };
                let id =
                    (std::process::id() as i32) ^ (Instant::now().elapsed().subsec_nanos() as i32);
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(3));
                if let Ok(Ok(())) = tokio::time::timeout(left, qga.svc.guest_sync(id)).await {
                    return Ok(qga);
                }
            }
            if Instant::now() >= deadline {
                return Err(unreachable());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn execute<C>(&self, command: C) -> Result<C::Ok, QgaError>
    where
        C: qapi::Command + qga::QgaCommand + Send + 'static,
        C::Ok: Send,
    {
        match super::qmp::finish_alone(self.svc.execute(command)).await {
            Ok(ok) => Ok(ok),
            Err(ExecuteError::Qapi(e)) => Err(QgaError::Command {
                command: C::NAME,
                message: e.desc,
            }),
            Err(ExecuteError::Io(source)) => Err(QgaError::Lost {
                command: C::NAME,
                source,
            }),
        }
    }

    /// Runs `sh -c script` in the guest as root with DISPLAY=:0 and waits for it.
    /// Runs `script` with `sh -c`; stops waiting (between status polls, never mid-request) when
    /// `cancel` fires.
    pub async fn sh(
        &self,
        script: &str,
        timeout: Duration,
        cancel: Option<&tokio_util::sync::CancellationToken>,
    ) -> Result<ExecOutput, QgaError> {
        self.sh_polled(script, timeout, cancel, Duration::from_millis(100))
            .await
    }

    /// [`Qga::sh`], polling for the command's end at most `max_poll` apart (the wait doubles
    /// from 5 ms): a short command on a typing call's path is polled closely.
    pub async fn sh_polled(
        &self,
        script: &str,
        timeout: Duration,
        cancel: Option<&tokio_util::sync::CancellationToken>,
        max_poll: Duration,
    ) -> Result<ExecOutput, QgaError> {
        self.run(script, None, timeout, cancel, max_poll).await
    }

    /// [`Qga::sh`] with `input` on the command's stdin (text that must not pass through a
    /// command line: it would be visible in `ps` and limited in size).
    pub async fn sh_input(
        &self,
        script: &str,
        input: Vec<u8>,
        timeout: Duration,
    ) -> Result<ExecOutput, QgaError> {
        let poll = Duration::from_millis(100);
        self.run(script, Some(input), timeout, None, poll).await
    }

    async fn run(
        &self,
        script: &str,
        input: Option<Vec<u8>>,
        timeout: Duration,
        cancel: Option<&tokio_util::sync::CancellationToken>,
        max_poll: Duration,
    ) -> Result<ExecOutput, QgaError> {
        let started = Instant::now();
        let pid = self
            .execute(qga::guest_exec {
                path: "/bin/sh".into(),
                arg: Some(vec!["-c".into(), script.into()]),
                env: Some(vec![
                    "DISPLAY=:0".into(),
                    "HOME=/root".into(),
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ]),
                input_data: input,
                capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
            })
            .await?
            .pid;
        let deadline = Instant::now() + timeout;
        let mut poll = Duration::from_millis(5);
        loop {
            let st = self.execute(qga::guest_exec_status { pid }).await?;
            if st.exited {
                let out = st.out_data.unwrap_or_default();
                return Ok(ExecOutput {
                    exit_code: st.exitcode.unwrap_or_else(|| 128 + st.signal.unwrap_or(0)),
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&st.err_data.unwrap_or_default()).into_owned(),
                    stdout_bytes: out,
                });
            }
            if Instant::now() > deadline {
                return Err(QgaError::ExecTimeout {
                    ms: timeout.as_millis() as u64,
                });
            }
            if cancel.is_some_and(|c| c.is_cancelled()) {
                return Err(QgaError::Cancelled {
                    ms: started.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(max_poll);
        }
    }

    /// The guest's CPU time since boot, summed over its CPUs, in milliseconds: (busy, all),
    /// and the number of CPUs (`guest-get-cpustats`, agent 7.1+).
    pub async fn cpu_times(&self) -> Result<CpuTimes, QgaError> {
        let stats = self.execute(qga::guest_get_cpustats {}).await?;
        let mut t = CpuTimes::default();
        for qga::GuestCpuStats::linux(c) in &stats {
            let waiting = c.idle + c.iowait.unwrap_or(0);
            let busy = c.user
                + c.nice
                + c.system
                + c.irq.unwrap_or(0)
                + c.softirq.unwrap_or(0)
                + c.steal.unwrap_or(0);
            t.busy_ms += busy;
            t.all_ms += busy + waiting;
            t.cpus += 1;
        }
        Ok(t)
    }

    /// Writes `data` to `path` in the guest (created or truncated, as root), in chunks the
    /// agent takes in one message each.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), QgaError> {
        let handle = self
            .execute(qga::guest_file_open {
                path: path.into(),
                mode: Some("w".into()),
            })
            .await?;
        let mut written = Ok(());
        for chunk in data.chunks(FILE_CHUNK) {
            let r = self
                .execute(qga::guest_file_write {
                    handle,
                    buf_b64: chunk.to_vec(),
                    count: Some(chunk.len() as i64),
                })
                .await;
            match r {
                Ok(w) if w.count as usize == chunk.len() => {}
                Ok(w) => {
                    written = Err(QgaError::Command {
                        command: "guest-file-write",
                        message: format!("wrote {} of {} bytes (disk full?)", w.count, chunk.len()),
                    });
                    break;
                }
                Err(e) => {
                    written = Err(e);
                    break;
                }
            }
        }
        let closed = self.execute(qga::guest_file_close { handle }).await;
        written.and(closed.map(drop))
    }

    /// Reads `path` from the guest, at most `max` bytes (a longer file is an error).
    pub async fn read_file(&self, path: &str, max: usize) -> Result<Vec<u8>, QgaError> {
        let handle = self
            .execute(qga::guest_file_open {
                path: path.into(),
                mode: Some("r".into()),
            })
            .await?;
        let mut out = Vec::new();
        let read = loop {
            let r = self
                .execute(qga::guest_file_read {
                    handle,
                    count: Some(FILE_CHUNK as i64),
                })
                .await;
            match r {
                Ok(r) => {
                    out.extend_from_slice(&r.buf_b64);
                    if out.len() > max {
                        break Err(QgaError::Command {
                            command: "guest-file-read",
                            message: format!("the file grew past {max} bytes while it was read"),
                        });
                    }
                    if r.eof || r.count == 0 {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let closed = self.execute(qga::guest_file_close { handle }).await;
        read.and(closed.map(drop)).map(|()| out)
    }

    /// Sets the guest clock from the host's (a resumed ready state wakes up in the past).
    pub async fn sync_clock(&self) -> Result<(), QgaError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        self.execute(qga::guest_set_time { time: Some(now) })
            .await
            .map(drop)
    }
}
