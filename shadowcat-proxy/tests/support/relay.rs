//! Network chaos for the tests: a TCP relay on loopback that cuts each
//! connection after a seeded random number of bytes toward the client, and
//! a client connection that reads slowly (small reads with a pause).

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;

use super::WAIT;
use super::sse::Rng;

/// A relay from a loopback port to `target`. Each connection is cut on
/// both sides with a reset once a budget of bytes, drawn per connection,
/// went from `target` to the client.
pub(crate) struct CutRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// Client addresses whose connection was cut.
    cut: Mutex<HashSet<SocketAddr>>,
    cuts: AtomicU64,
}

impl CutRelay {
    /// Starts relaying to `target`; budgets are uniform in `min..=max`
    /// bytes, drawn from `rng` in the order connections arrive.
    pub(crate) async fn start(target: SocketAddr, mut rng: Rng, min: u64, max: u64) -> Self {
        assert!(0 < min && min <= max);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(Shared::default());
        let sh = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Dropped with the accept task: no connection outlives the relay.
            let mut conns = JoinSet::new();
            while let Ok((client, peer)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let budget = min + rng.next_u64() % (max - min + 1);
                conns.spawn(relay_one(client, peer, target, budget, Arc::clone(&sh)));
            }
        });
        CutRelay { addr, shared, task }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections cut so far.
    pub(crate) fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Whether the connection from `client` was cut by the relay.
    pub(crate) fn was_cut(&self, client: SocketAddr) -> bool {
        self.shared.cut.lock().contains(&client)
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_one(
    mut client: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    budget: u64,
    shared: Arc<Shared>,
) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    // With a zero linger, closing sends a reset: an abrupt cut.
    for s in [&client, &server] {
        let _ = s.set_zero_linger();
        let _ = s.set_nodelay(true);
    }
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = tokio::io::copy(&mut cr, &mut sw);
    let down = async {
        let mut left = budget;
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            if cw.write_all(&buf[..n]).await.is_err() {
                return false;
            }
            left -= n as u64;
            if left == 0 {
                return true;
            }
        }
    };
    // Either side ending ends both; only a spent budget is a cut.
    let cut = tokio::select! {
        _ = up => false,
        cut = down => cut,
    };
    if cut {
        shared.cut.lock().insert(peer);
        shared.cuts.fetch_add(1, Ordering::SeqCst);
    }
}

/// How a slow client reads: at most `chunk` bytes per read, `pause`
/// between reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) chunk: usize,
    pub(crate) pause: Duration,
}

/// A TCP stream whose reads follow a [`Pace`].
struct SlowReads {
    inner: TcpStream,
    pace: Pace,
    scratch: Vec<u8>,
    wait: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for SlowReads {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(wait) = &mut this.wait {
            ready!(wait.as_mut().poll(cx));
            this.wait = None;
        }
        let want = this.pace.chunk.min(buf.remaining());
        let mut small = ReadBuf::new(&mut this.scratch[..want]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
        if !small.filled().is_empty() {
            buf.put_slice(small.filled());
            this.wait = Some(Box::pin(tokio::time::sleep(this.pace.pause)));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SlowReads {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Sends `req` on a new HTTP/1.1 connection to `addr` that reads at
/// `pace`; returns the response head and the connection's local address.
pub(crate) async fn send_paced(
    addr: SocketAddr,
    pace: Pace,
    req: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, SocketAddr), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let io = SlowReads {
        inner: tcp,
        pace,
        scratch: vec![0; pace.chunk],
        wait: None,
    };
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // Ends with the connection.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .map_err(|_| format!("no response head within {WAIT:?}"))?
        .map_err(|e| format!("request failed: {e}"))?;
    Ok((resp, local))
}
