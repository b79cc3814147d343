//! The exec channel: QMP, the guest agent and QEMU's files reached through Docker exec sessions
//! with attached stdin/stdout, which is all a remote engine offers without a bind mount or a
//! published port. Each socket is one exec running `socat` to the in-container unix socket;
//! files come back through one long-lived exec that answers a path with its size and bytes,
//! lz4-compressed: a 3 MB screendump of a desktop shrinks to a few percent in ~4 ms, and the
//! exec stream (engine, TLS, frames) is what bounds a screenshot here.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::vm::link::{Conn, Link, Socket};
use crate::vm::spec::RuntimeFiles;

/// Waits for QEMU to make the socket (it does ~50 ms after exec), then bridges it to stdio.
/// QEMU listens with a backlog of one: `retry` rides out a connect that finds it full (several
/// live viewers connecting at once).
const BRIDGE: &str = r#"until [ -S "$0" ]; do sleep 0.005; done; exec socat -b 262144 - UNIX-CONNECT:"$0",retry=100,interval=0.01"#;
/// One line per request (a path); answers with the size of its lz4 frame in decimal and the
/// frame, -1 when the file cannot be read, -2 when the image lacks lz4. Its scratch file is its own (`$$`): a reader
/// left behind by a cancelled read must not write into the next one's.
const READER: &str = r#"command -v lz4 >/dev/null || { echo -2; exit 1; }; z=/dev/shm/.deskvm-read-$$.lz4; trap 'rm -f "$z"' EXIT; while IFS= read -r p; do if [ -f "$p" ] && lz4 -1 -q -f "$p" "$z" && s=$(stat -c %s "$z"); then echo "$s"; head -c "$s" "$z"; else echo -1; fi; done"#;
/// Larger than any screendump's frame (a 1920x1200 PPM is 6.9 MB before compression).
const MAX_FRAME: i64 = 64 << 20;

type Input = Pin<Box<dyn AsyncWrite + Send>>;
type Output = Pin<Box<dyn AsyncRead + Send>>;

/// Runs `cmd` in `container` with stdin and stdout attached; stderr goes to the debug log.
pub async fn attach(
    docker: &Docker,
    container: &str,
    cmd: Vec<String>,
) -> io::Result<(Input, Output)> {
    let opts = CreateExecOptions {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(cmd),
        ..Default::default()
    };
    let exec = docker
        .create_exec(container, opts)
        .await
        .map_err(io::Error::other)?;
    let start = StartExecOptions {
        detach: false,
        tty: false,
        // Frames of a 3 MB screendump: fewer, larger reads.
        output_capacity: Some(256 * 1024),
    };
    match docker
        .start_exec(&exec.id, Some(start))
        .await
        .map_err(io::Error::other)?
    {
        StartExecResults::Attached { output, input } => {
            let stdout = output.filter_map(|item| async move {
                match item {
                    Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
                    Ok(LogOutput::StdErr { message }) => {
                        tracing::debug!(stderr = %String::from_utf8_lossy(&message).trim(), "exec channel");
                        None
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(io::Error::other(e))),
                }
            });
            let reader = tokio_util::io::StreamReader::new(Box::pin(stdout));
            Ok((input, Box::pin(reader)))
        }
        StartExecResults::Detached => Err(io::Error::other("the engine detached an attached exec")),
    }
}

struct FileReader {
    input: Input,
    output: BufReader<Output>,
}

impl FileReader {
    async fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        let mut line = path.to_string_lossy().into_owned();
        line.push('\n');
        self.input.write_all(line.as_bytes()).await?;
        self.input.flush().await?;
        let mut size = String::new();
        if self.output.read_line(&mut size).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file channel closed",
            ));
        }
        let size: i64 = size
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("the file channel answered {size:?}")))?;
        if size > MAX_FRAME {
            return Err(io::Error::other(format!(
                "the file channel announced {size} bytes"
            )));
        }
        if size == -2 {
            return Err(io::Error::other(
                "the container's image has no lz4 (a runtime image of an older recipe: rebuild it with `deskvm setup`, then `deskvm image push`)",
            ));
        }
        if size < 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found in the container", path.display()),
            ));
        }
        let mut frame = vec![0; size as usize];
        self.output.read_exact(&mut frame).await?;
        let mut bytes = Vec::with_capacity(frame.len() * 16);
        std::io::Read::read_to_end(
            &mut lz4_flex::frame::FrameDecoder::new(frame.as_slice()),
            &mut bytes,
        )?;
        Ok(bytes)
    }
}

/// A stream that fails once `token` is cancelled: the engine went quiet (a partition resets
/// nothing, so reads would otherwise wait forever) and every channel of its sessions is cut.
/// It wakes one task: wrap each direction of a stream that two tasks share on its own.
pub struct Severable<T> {
    inner: T,
    token: CancellationToken,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Severable<T> {
    pub fn new(inner: T, token: &CancellationToken) -> Self {
        Severable {
            inner,
            token: token.clone(),
            cut: Box::pin(token.clone().cancelled_owned()),
        }
    }

    fn severed(&mut self, cx: &mut Context<'_>) -> bool {
        // Polled every time so the waker is registered; checked first, so a finished future
        // is never polled again.
        self.token.is_cancelled() || self.cut.as_mut().poll(cx).is_ready()
    }
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the engine stopped answering")
}

impl<T: AsyncRead + Unpin> AsyncRead for Severable<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.severed(cx) {
            return Poll::Ready(Err(lost()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Severable<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.severed(cx) {
            return Poll::Ready(Err(lost()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.severed(cx) {
            return Poll::Ready(Err(lost()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// QEMU in a container of an engine that shares no filesystem with this host.
pub struct ExecLink {
    docker: Docker,
    container: String,
    files: RuntimeFiles,
    screen: PathBuf,
    reader: tokio::sync::Mutex<Option<FileReader>>,
    /// Cancelled when the engine stops answering (`DockerBackend::watch_engine`).
    lost: CancellationToken,
}

impl ExecLink {
    pub fn new(
        docker: Docker,
        container: String,
        files: RuntimeFiles,
        screen: PathBuf,
        lost: CancellationToken,
    ) -> Self {
        ExecLink {
            docker,
            container,
            files,
            screen,
            reader: Default::default(),
            lost,
        }
    }
}

impl Link for ExecLink {
    fn files(&self) -> &RuntimeFiles {
        &self.files
    }

    fn screen(&self) -> PathBuf {
        self.screen.clone()
    }

    fn open(&self, socket: Socket) -> BoxFuture<'_, io::Result<Conn>> {
        let path = socket.path(&self.files).to_string_lossy().into_owned();
        async move {
            let cmd = ["bash", "-c", BRIDGE, &path].map(String::from).to_vec();
            let (input, output) = attach(&self.docker, &self.container, cmd).await?;
            // One cut per direction: qapi and the view bridge read and write from different
            // tasks, and a cut remembers only the last task that polled it. With one for both,
            // the cut woke the writer (waiting on its reply, never polling again) and left the
            // reader asleep on a connection nothing would ever answer.
            let joined = tokio::io::join(
                Severable::new(output, &self.lost),
                Severable::new(input, &self.lost),
            );
            Ok(Box::new(joined) as Conn)
        }
        .boxed()
    }

    fn read<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, io::Result<Vec<u8>>> {
        async move {
            let mut slot = self.reader.lock().await;
            // Taken out while in use: a read cancelled halfway leaves no half-read answer behind.
            let mut reader = match slot.take() {
                Some(r) => r,
                None => {
                    let cmd = ["bash", "-c", READER].map(String::from).to_vec();
                    let (input, output) = attach(&self.docker, &self.container, cmd).await?;
                    FileReader {
                        input: Box::pin(Severable::new(input, &self.lost)),
                        output: BufReader::with_capacity(
                            256 * 1024,
                            Box::pin(Severable::new(output, &self.lost)),
                        ),
                    }
                }
            };
            let result = reader.read(path).await;
            // A broken channel is made anew on the next read; a missing file is only an answer.
            if !matches!(&result, Err(e) if e.kind() != io::ErrorKind::NotFound) {
                *slot = Some(reader);
            }
            result
        }
        .boxed()
    }

    fn kind(&self) -> &'static str {
        "exec"
    }
}
