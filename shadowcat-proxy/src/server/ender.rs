//! Ending sessions upstream. A session that leaves the store for
//! idleness (the idle sweeper's report, [`ExpiryHook`]) or that the proxy
//! refuses after the upstream created it (`max_sessions` reached) gets a
//! DELETE upstream with the upstream's `Mcp-Session-Id` and the configured
//! credentials, so the upstream frees it too; an expired stdio session's
//! server is stopped.
//!
//! Bounded: at most [`MAX_DELETES_QUEUED`] wait (more are dropped, counted
//! and logged), at most [`MAX_DELETES_IN_FLIGHT`] run at once, each within
//! [`DELETE_TIMEOUT`]. One task reads the queue; each DELETE runs on a task
//! of its own (never on the per-event path). Every outcome is counted in
//! `shadowcat_upstream_session_deletes_total{result}`: `ok` (2xx), `gone`
//! (404: the upstream had forgotten it), `not_allowed` (405: the upstream
//! does not let clients end sessions), `refused` (another status),
//! `failed` (no connection or a broken exchange), `timeout`, `dropped`
//! (queue full), `other_upstream` (the session was made for another
//! upstream, by an instance configured differently: not ours to end).
//! Failures are logged at warn.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use shadowcat_session::{ExpiredSession, ExpiryHook, SessionId};
use tokio::sync::{Semaphore, mpsc};

use crate::mcp::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::session::Sessions;
use crate::upstream::http::UpstreamPool;
use crate::upstream::stdio::StdioBridge;

/// Default [`crate::Limits::upstream_delete_queue`]: DELETEs waiting to be
/// sent.
pub(crate) const MAX_DELETES_QUEUED: usize = 10_000;
/// Default [`crate::Limits::upstream_deletes_in_flight`].
pub(crate) const MAX_DELETES_IN_FLIGHT: usize = 16;
/// Default [`crate::Limits::upstream_delete_timeout`]: longest one DELETE
/// may take, connection included.
pub(crate) const DELETE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most response body bytes read (and dropped) so the connection can be
/// reused.
const MAX_DRAINED: usize = 64 << 10;

/// One DELETE to send.
#[derive(Debug)]
struct Ending {
    /// The proxy's id, for logs (none when the proxy never stored it).
    session: Option<SessionId>,
    upstream_id: HeaderValue,
    version: Option<HeaderValue>,
}

/// Sends upstream DELETEs for sessions that ended without one.
#[derive(Debug)]
pub(crate) struct SessionEnder {
    queue: mpsc::Sender<Ending>,
    /// What sessions made by this proxy record as their upstream.
    label: String,
    /// An HTTP upstream (false: a stdio program, no DELETE to send).
    http: bool,
    sessions: Weak<Sessions>,
    stdio: Option<Weak<StdioBridge>>,
    /// Shared with the queue's task.
    upstream: Arc<Upstream>,
}

/// What the sender needs.
#[derive(Debug)]
struct Upstream {
    pool: Arc<UpstreamPool>,
    uri: http::Uri,
    bearer: crate::auth::Credential,
    timeout: Duration,
}

impl SessionEnder {
    /// An ender for the upstream at `uri` (or the stdio `bridge`); starts
    /// its queue task.
    pub(crate) fn start(
        pool: Arc<UpstreamPool>,
        uri: http::Uri,
        bearer: crate::auth::Credential,
        sessions: &Arc<Sessions>,
        stdio: Option<&Arc<StdioBridge>>,
        limits: &crate::Limits,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::channel(limits.upstream_delete_queue.max(1));
        let upstream = Arc::new(Upstream {
            pool,
            uri,
            bearer,
            timeout: limits.upstream_delete_timeout,
        });
        tokio::spawn(run(
            rx,
            Arc::clone(&upstream),
            limits.upstream_deletes_in_flight.max(1),
        ));
        Arc::new(SessionEnder {
            upstream,
            queue,
            label: sessions.upstream_label().to_owned(),
            http: stdio.is_none(),
            sessions: Arc::downgrade(sessions),
            stdio: stdio.map(Arc::downgrade),
        })
    }

    /// Queues a DELETE of the upstream session `upstream_id`; false when
    /// the queue is full (counted, not logged: the caller logs).
    fn queue(&self, ending: Ending) -> bool {
        match self.queue.try_send(ending) {
            Ok(()) => true,
            Err(_) => {
                count("dropped");
                false
            }
        }
    }

    /// Ends the upstream session `upstream_id` of `session` now (an
    /// operator asked); returns what came of it (the metric's label).
    pub(crate) async fn end_now(
        &self,
        session: SessionId,
        upstream_id: HeaderValue,
        version: &str,
    ) -> &'static str {
        let ending = Ending {
            session: Some(session),
            upstream_id,
            version: HeaderValue::from_str(version).ok(),
        };
        send(&self.upstream, ending).await
    }

    /// Ends upstream a session the proxy refused to keep (the store was
    /// full once the upstream had created it).
    pub(crate) fn end_refused(&self, upstream_id: HeaderValue, version: &str) {
        let ending = Ending {
            session: None,
            upstream_id,
            version: HeaderValue::from_str(version).ok(),
        };
        if !self.queue(ending) {
            tracing::warn!(
                queued = self.queue.max_capacity(),
                "could not queue the DELETE of a refused upstream session: the queue is full"
            );
        }
    }
}

impl ExpiryHook for SessionEnder {
    fn expired(&self, sessions: Vec<ExpiredSession>) {
        let cache = self.sessions.upgrade();
        let bridge = self.stdio.as_ref().and_then(Weak::upgrade);
        let mut dropped = 0usize;
        for s in sessions {
            if let Some(cache) = &cache {
                cache.forget_gone(&s.id);
            }
            if let Some(bridge) = &bridge {
                bridge.stop(&s.id);
            }
            if s.upstream != self.label {
                count("other_upstream");
                tracing::debug!(session_fp = %s.id.fingerprint(), upstream = %s.upstream, "an expired session of another upstream: not ended here");
                continue;
            }
            let Some(up) = s.upstream_session_id.as_deref() else {
                continue;
            };
            if !self.http {
                continue;
            }
            let Ok(upstream_id) = HeaderValue::from_str(up) else {
                count("failed");
                tracing::warn!(session_fp = %s.id.fingerprint(), "an expired session's upstream id is not a header value; not ended upstream");
                continue;
            };
            let ending = Ending {
                session: Some(s.id),
                upstream_id,
                version: HeaderValue::from_str(&s.protocol_version).ok(),
            };
            if !self.queue(ending) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                queued = self.queue.max_capacity(),
                "expired sessions not ended upstream: the DELETE queue is full"
            );
        }
    }
}

fn count(result: &'static str) {
    metrics::counter!("shadowcat_upstream_session_deletes_total", "result" => result).increment(1);
}

/// Reads the queue: each DELETE on its own task, at most
/// [`MAX_DELETES_IN_FLIGHT`] at once. Ends when the ender is dropped.
async fn run(mut rx: mpsc::Receiver<Ending>, upstream: Arc<Upstream>, in_flight: usize) {
    let permits = Arc::new(Semaphore::new(in_flight));
    while let Some(ending) = rx.recv().await {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let upstream = Arc::clone(&upstream);
        tokio::spawn(async move {
            let _ = send(&upstream, ending).await;
            drop(permit);
        });
    }
}

/// Sends one DELETE; returns what came of it (counted under that label).
async fn send(upstream: &Upstream, ending: Ending) -> &'static str {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::DELETE;
    *req.uri_mut() = upstream.uri.clone();
    let h = req.headers_mut();
    h.insert(MCP_SESSION_ID, ending.upstream_id);
    if let Some(v) = ending.version {
        h.insert(MCP_PROTOCOL_VERSION, v);
    }
    if let Some(bearer) = upstream.bearer.current() {
        h.insert(header::AUTHORIZATION, bearer);
    }
    let exchange = async {
        let resp = upstream.pool.request(req).await?;
        let status = resp.status();
        // Read the (small) answer so the connection can be reused.
        let _ = Limited::new(resp.into_body(), MAX_DRAINED).collect().await;
        Ok::<_, crate::upstream::http::UpstreamError>(status)
    };
    let session_fp = ending.session.as_ref().map(|s| s.fingerprint().to_string());
    let session_fp = session_fp.as_deref();
    let result = match tokio::time::timeout(upstream.timeout, exchange).await {
        Ok(Ok(status)) if status.is_success() => "ok",
        Ok(Ok(StatusCode::NOT_FOUND)) => "gone",
        Ok(Ok(StatusCode::METHOD_NOT_ALLOWED)) => {
            tracing::debug!(
                session_fp,
                "the upstream does not let clients end sessions (405)"
            );
            "not_allowed"
        }
        Ok(Ok(status)) => {
            tracing::warn!(session_fp, %status, "the upstream refused to end a session");
            "refused"
        }
        Ok(Err(e)) => {
            tracing::warn!(session_fp, error = %e, "could not end a session upstream");
            "failed"
        }
        Err(_) => {
            tracing::warn!(session_fp, timeout = ?upstream.timeout, "ending a session upstream timed out");
            "timeout"
        }
    };
    count(result);
    result
}
