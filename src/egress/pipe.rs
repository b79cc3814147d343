//! What the proxy and the forwards share about one connection: the accept loop whose tasks end
//! with it, the record that becomes the connection's one [`Decision`], and the byte pump that
//! joins it to its target while counting.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::{Decision, Sink};

/// Open connections one listener serves at once. QEMU forks one `socat` on the host per guest
/// connection: past this many, new ones are closed at once instead of piling up processes.
const MAX_OPEN: usize = 64;

/// Runs `each` on every connection `listener` accepts, each in a task of its own. The tasks
/// live in a set this future owns, so when the caller aborts it (the session stops) every open
/// connection ends with it, and still records its decision.
pub(crate) async fn accept_loop<F, Fut>(listener: UnixListener, mut each: F)
where
    F: FnMut(UnixStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if tasks.len() >= MAX_OPEN => {
                    tracing::debug!("egress: {MAX_OPEN} connections open; closing a new one");
                    drop(stream);
                }
                Ok((stream, _)) => {
                    tasks.spawn(each(stream));
                }
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to close rather than spin.
                    tracing::debug!("egress: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set holds only open ones.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// The decision of one connection in the making. It goes to the sink when dropped: at the
/// connection's end, or when its task is aborted, so there is exactly one either way.
pub(crate) struct Record {
    sink: Sink,
    pub(crate) d: Decision,
    started: Option<Instant>,
}

impl Record {
    /// Denied until something decides otherwise: a connection that ends before a decision
    /// reached nothing.
    pub(crate) fn new(sink: Sink, via: &'static str) -> Self {
        Record {
            sink,
            d: Decision {
                decision: "denied",
                via,
                host: String::new(),
                port: 0,
                sni: None,
                reason: Some("the connection ended before a decision".into()),
                bytes_up: 0,
                bytes_down: 0,
                ms: 0,
            },
            started: None,
        }
    }

    /// `ms` counts from here.
    pub(crate) fn start(&mut self) {
        self.started = Some(Instant::now());
    }

    pub(crate) fn target(&mut self, host: &str, port: u16) {
        self.d.host = host.to_string();
        self.d.port = port;
    }

    pub(crate) fn allow(&mut self) {
        self.d.decision = "allowed";
        self.d.reason = None;
    }

    pub(crate) fn deny(&mut self, reason: impl Into<String>) {
        self.d.decision = "denied";
        self.d.reason = Some(reason.into());
    }

    /// A reason that leaves the decision as it is (an allowed connection that failed).
    pub(crate) fn note(&mut self, reason: impl Into<String>) {
        self.d.reason = Some(reason.into());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let ms = self.started.map_or(0, |t| t.elapsed().as_millis());
        self.d.ms = u64::try_from(ms).unwrap_or(u64::MAX);
        (self.sink)(self.d.clone());
    }
}

/// When a joined connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// A tunnel: each direction runs to its own end and passes a half-close on.
    BothClose,
    /// One plain HTTP request sent with `Connection: close`: at most `body` more bytes of the
    /// client's (the rest of its body) reach the target, and the target's end is the end, so
    /// no second request on the connection reaches the target unchecked.
    TargetCloses { body: u64 },
}

/// Copies both ways between `client` and `target`, adding to `up` (towards the target) and
/// `down` as bytes go, so the counts hold even when an error or an abort cuts it short
/// (`tokio::io::copy_bidirectional` returns no counts with its error). An error either way
/// ends both.
pub(crate) async fn join<C, T>(
    client: &mut C,
    target: &mut T,
    until: Until,
    up: &mut u64,
    down: &mut u64,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut target_r, mut target_w) = tokio::io::split(target);
    let limit = match until {
        Until::TargetCloses { body } => Some(body),
        Until::BothClose => None,
    };
    let to_target = copy(&mut client_r, &mut target_w, up, limit);
    let to_client = copy(&mut target_r, &mut client_w, down, None);
    tokio::pin!(to_target, to_client);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut to_target, if !up_done => {
                up_done = true;
                if r.is_err() {
                    break;
                }
            }
            r = &mut to_client, if !down_done => {
                down_done = true;
                if r.is_err() || matches!(until, Until::TargetCloses { .. }) {
                    break;
                }
            }
        }
    }
}

/// One direction: reads until end of file, then shuts the writer down (the half-close); with
/// a `limit`, stops after that many bytes and leaves the writer open (the target still
/// answers on it).
async fn copy<R, W>(
    r: &mut R,
    w: &mut W,
    count: &mut u64,
    limit: Option<u64>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = limit;
    loop {
        let want = match left {
            Some(0) => return Ok(()),
            Some(l) => buf.len().min(usize::try_from(l).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = r.read(&mut buf[..want]).await?;
        if n == 0 {
            return match limit {
                Some(_) => Ok(()),
                None => w.shutdown().await,
            };
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        *count += n as u64;
        if let Some(l) = &mut left {
            *l -= n as u64;
        }
    }
}

/// What the room's tests share: a sink that keeps what it is given, and a scratch directory.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::egress::{Decision, Sink};

    pub(crate) type Seen = Arc<Mutex<Vec<Decision>>>;

    pub(crate) fn collector() -> (Sink, Seen) {
        let seen: Seen = Arc::default();
        let kept = seen.clone();
        let sink: Sink = Arc::new(move |d: Decision| kept.lock().unwrap().push(d));
        (sink, seen)
    }

    /// Waits (up to 5 s) until `n` decisions came, and returns them: a connection's task
    /// records its decision a moment after the client sees the end.
    pub(crate) async fn decisions(seen: &Seen, n: usize) -> Vec<Decision> {
        for _ in 0..500 {
            if seen.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.lock().unwrap().clone()
    }

    pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("deskvm-{tag}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
