//! Client connections: the `max_connections` cap (a connection over it
//! is answered 503 and closed rather than left waiting), accept errors
//! logged at most once a second, and the open-file limit check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::mcp::jsonrpc;

/// Counts one open client connection while it lives.
#[derive(Debug)]
pub(super) struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    pub(super) fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("shadowcat_connections_open").increment(1.0);
        OpenConnection(Arc::clone(open))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("shadowcat_connections_open").decrement(1.0);
    }
}

/// The whole answer to a connection over the cap.
pub(super) fn refusal_reply(max: usize) -> Bytes {
    let body = jsonrpc::error_body(
        None,
        jsonrpc::SERVER_ERROR,
        &format!(
            "the proxy has {max} client connections open, its limit (max_connections); retry shortly or reuse a connection"
        ),
    );
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Most refused connections given time to read their answer at once;
/// past it a refused connection gets what fits in its socket and is
/// closed at once.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is kept for its answer to be read.
const REFUSE_TIME: Duration = Duration::from_secs(1);

/// Answers a connection over the cap with 503 and closes it. The request
/// is read and dropped for up to [`REFUSE_TIME`] after the answer, so
/// closing does not reset the connection before the client read it.
pub(super) fn refuse(
    mut stream: TcpStream,
    peer: SocketAddr,
    reply: &Bytes,
    refusing: &Arc<AtomicUsize>,
) {
    metrics::counter!("shadowcat_connections_refused_total").increment(1);
    tracing::debug!(%peer, "connection over max_connections refused (503)");
    if refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::Relaxed);
        let _ = stream.try_write(reply);
        return;
    }
    let reply = reply.clone();
    let refusing = Arc::clone(refusing);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSE_TIME, async {
            stream.write_all(&reply).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        refusing.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Closes a TLS connection over the cap at once: no plain 503 can be
/// written before a handshake, and a handshake is the work the cap saves.
pub(super) fn refuse_tls(stream: TcpStream, peer: SocketAddr) {
    metrics::counter!("shadowcat_connections_refused_total").increment(1);
    tracing::debug!(%peer, "TLS connection over max_connections closed");
    drop(stream);
}

/// Accept errors, logged at most once a second with how many were not.
#[derive(Debug, Default)]
pub(super) struct AcceptErrors {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    pub(super) fn failed(&mut self, e: &std::io::Error) {
        metrics::counter!("shadowcat_accept_errors_total").increment(1);
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, not_logged = self.suppressed, "accept failed (further failures within a second are counted, not logged)");
        self.last_logged = Some(now);
        self.suppressed = 0;
    }
}

/// Warns when `max_connections` is above the process's open-file limit.
pub(super) fn warn_on_file_limit(max_connections: usize) {
    let Some(limit) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_file_limit(&text))
    else {
        return;
    };
    if max_connections as u64 > limit {
        tracing::warn!(
            max_connections,
            open_file_limit = limit,
            "max_connections is above the open-file limit: past the limit, connections fail to be accepted instead of getting 503; raise the limit (ulimit -n) or lower max_connections (each proxied request may also hold an upstream connection)"
        );
    }
}

/// The soft "Max open files" limit in `/proc/self/limits` text.
fn open_file_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_open_file_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63446                63446                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(open_file_limit(text), Some(1024));
        assert_eq!(
            open_file_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(open_file_limit(""), None);
    }

    #[test]
    fn the_refusal_is_a_whole_http_answer() {
        let r = refusal_reply(7);
        let text = std::str::from_utf8(&r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_connections")
        );
    }
}
