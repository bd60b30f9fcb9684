//! A paced TCP relay in front of the test upstream: what the upstream
//! sends toward Shadowcat flows at most `bytes_per_sec` per connection (a
//! token bucket with a small burst), so a long stream is still being read
//! upstream while the client is cut and owners are killed. Requests flow
//! unpaced.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bytes a connection may send at once after a pause: a JSON answer
/// passes whole, a long stream is paced.
const BURST: f64 = 4096.0;
/// Bytes read at a time from the upstream.
const READ_CHUNK: usize = 2048;

/// A running relay; stops accepting when dropped (open connections end
/// with their sockets).
#[derive(Debug)]
pub(crate) struct Relay {
    /// Where Shadowcat connects.
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Listens on a free loopback port and relays to `target`.
    pub(crate) async fn start(target: SocketAddr, bytes_per_sec: f64) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("relay bind: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("relay addr: {e}"))?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(relay(down, target, bytes_per_sec));
            }
        });
        Ok(Relay { addr, task })
    }
}

async fn relay(down: TcpStream, target: SocketAddr, rate: f64) {
    let Ok(up) = TcpStream::connect(target).await else {
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (mut down_r, mut down_w) = down.into_split();
    let (mut up_r, mut up_w) = up.into_split();
    let requests = async move {
        let _ = tokio::io::copy(&mut down_r, &mut up_w).await;
        let _ = up_w.shutdown().await;
    };
    let answers = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut tokens = BURST;
        let mut last = Instant::now();
        loop {
            let n = match up_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(BURST);
            last = now;
            tokens -= n as f64;
            if tokens < 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(-tokens / rate)).await;
            }
            if down_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = down_w.shutdown().await;
    };
    tokio::join!(requests, answers);
}
