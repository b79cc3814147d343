//! How deskvm reaches a running QEMU: byte streams to its QMP and guest-agent sockets, and the
//! files it writes (screendumps, the serial log). Where QEMU shares this host's filesystem (the
//! local backend, a container on this machine's engine) they are unix sockets and files in the
//! runtime dir ([`HostLink`]); on an engine that shares nothing but its API they are exec
//! sessions into the container (`backend::docker::exec`). Everything above sees only [`Link`].

use std::io;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};

use super::spec::RuntimeFiles;

/// A bidirectional byte stream to one of QEMU's sockets.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}
pub type Conn = Box<dyn Duplex>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Qmp,
    Qga,
    /// QEMU's VNC server (the live view).
    Vnc,
}

impl Socket {
    /// The socket's path as QEMU sees it.
    pub fn path(self, files: &RuntimeFiles) -> PathBuf {
        match self {
            Socket::Qmp => files.qmp(),
            Socket::Qga => files.qga(),
            Socket::Vnc => files.vnc(),
        }
    }
}

pub trait Link: Send + Sync {
    /// The runtime files as QEMU sees them (the paths in its command line).
    fn files(&self) -> &RuntimeFiles;
    /// Where QEMU writes screendumps.
    fn screen(&self) -> PathBuf {
        self.files().screen()
    }
    /// A new connection to `socket`; fails while QEMU has not made it yet.
    fn open(&self, socket: Socket) -> BoxFuture<'_, io::Result<Conn>>;
    /// The bytes of a file QEMU wrote.
    fn read<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, io::Result<Vec<u8>>>;
    /// `host` or `exec`: how the channel runs (for logs and the bench).
    fn kind(&self) -> &'static str;
}

/// QEMU's runtime dir is on this host.
pub struct HostLink(pub RuntimeFiles);

impl Link for HostLink {
    fn files(&self) -> &RuntimeFiles {
        &self.0
    }

    fn open(&self, socket: Socket) -> BoxFuture<'_, io::Result<Conn>> {
        let path = socket.path(&self.0);
        async move {
            // QEMU listens with a backlog of one: several viewers connecting at once find it
            // full, which a non-blocking unix connect reports as EAGAIN. QEMU takes the next
            // one within milliseconds.
            let mut tries = 0;
            loop {
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(s) => return Ok(Box::new(s) as Conn),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 100 => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        .boxed()
    }

    fn read<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, io::Result<Vec<u8>>> {
        tokio::fs::read(path).boxed()
    }

    fn kind(&self) -> &'static str {
        "host"
    }
}
