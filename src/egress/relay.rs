//! The forwards of host services into the guest: a guest connection to
//! `host.deskvm.internal:PORT` arrives (QEMU hands it over as a unix-socket connection) and is
//! joined to the one loopback service the session asked for. No policy is asked here: the
//! service was allowed when the session started (`--allow-forward`), and nothing the guest
//! sends can point a forward anywhere else.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpStream, UnixListener, UnixStream};

use super::pipe::{self, Record, Until};
use super::Sink;

/// A loopback service answers at once or not at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections (each one a guest connection to host.deskvm.internal:PORT, handed over
/// by QEMU) and joins each to `target` (a loopback TCP address on this host). One Decision per
/// connection (via "forward", decision "allowed", or "allowed" with reason "connect failed:
/// ..." when the service is down; the guest sees the connection closed). Runs until the caller
/// aborts the task; open connections end with it.
pub async fn serve_forward(listener: UnixListener, target: SocketAddr, sink: Sink) {
    pipe::accept_loop(listener, move |guest| forward(guest, target, sink.clone())).await
}

async fn forward(mut guest: UnixStream, target: SocketAddr, sink: Sink) {
    let mut rec = Record::new(sink, "forward");
    rec.target(&target.ip().to_string(), target.port());
    rec.allow();
    rec.start();
    let mut service = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return rec.note(format!("connect failed: {e}")),
        Err(_) => {
            let s = CONNECT_TIMEOUT.as_secs();
            return rec.note(format!("connect failed: no answer within {s} s"));
        }
    };
    let d = &mut rec.d;
    pipe::join(
        &mut guest,
        &mut service,
        Until::BothClose,
        &mut d.bytes_up,
        &mut d.bytes_down,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::egress::pipe::testing::{collector, decisions, scratch_dir};

    /// An echo service on 127.0.0.1 for any number of connections.
    async fn echo_service() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn joins_guest_connections_to_the_service() {
        let target = echo_service().await;
        let dir = scratch_dir("relay");
        let path = dir.join("forward.sock");
        let (sink, seen) = collector();
        let task = tokio::spawn(serve_forward(
            UnixListener::bind(&path).unwrap(),
            target,
            sink,
        ));

        // One that ends by itself: a half-close passes on, the echo closes, the guest sees it.
        let mut guest = UnixStream::connect(&path).await.unwrap();
        guest.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        guest.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        guest.shutdown().await.unwrap();
        let mut rest = Vec::new();
        guest.read_to_end(&mut rest).await.unwrap();
        let got = decisions(&seen, 1).await;
        assert_eq!(got.len(), 1);
        let d = &got[0];
        assert_eq!(
            (d.decision, d.via, d.host.as_str()),
            ("allowed", "forward", "127.0.0.1")
        );
        assert_eq!((d.port, d.bytes_up, d.bytes_down), (target.port(), 5, 5));
        assert_eq!(d.reason, None);

        // One still open when the forward stops: it ends too, and is recorded.
        let mut open = UnixStream::connect(&path).await.unwrap();
        open.write_all(b"abc").await.unwrap();
        let mut back = [0u8; 3];
        open.read_exact(&mut back).await.unwrap();
        task.abort();
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the open connection ends with the forward");
        let got = decisions(&seen, 2).await;
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].bytes_up, got[1].bytes_down), (3, 3));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_service_that_is_down_closes_the_guest_connection() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        drop(l);
        let dir = scratch_dir("relay-down");
        let path = dir.join("forward.sock");
        let (sink, seen) = collector();
        let task = tokio::spawn(serve_forward(
            UnixListener::bind(&path).unwrap(),
            target,
            sink,
        ));
        let mut guest = UnixStream::connect(&path).await.unwrap();
        let mut rest = Vec::new();
        guest.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let got = decisions(&seen, 1).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].decision, "allowed");
        let why = got[0].reason.clone().unwrap();
        assert!(why.starts_with("connect failed: "), "{why}");
        task.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
}
