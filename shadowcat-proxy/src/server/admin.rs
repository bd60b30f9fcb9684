//! The operator's view of a running proxy ([`Admin`]): its sessions and
//! their streams, ending a session, and readiness. The CLI serves it as
//! JSON on the admin listener; the types here are that JSON's schema.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::HeaderValue;
use serde::Serialize;
use shadowcat_session::{BreakerState, Session, SessionId, StoreError, UnixMillis, now_millis};

use super::guard::HostCheck;
use super::{Live, Shared};
use crate::ReverseProxyConfig;
pub use crate::stream::StreamView;

/// Most sessions one `sessions` call reads from the store while filtering.
const MAX_SCAN: usize = 10_000;
/// How long the readiness check waits for the store.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle on a running proxy for operators
/// ([`crate::ReverseProxy::admin`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

/// Which sessions [`Admin::sessions`] returns.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Start after this id (the previous page's `next`).
    pub after: Option<String>,
    /// Most sessions returned (at most 1,000).
    pub limit: usize,
    /// Only sessions unused for at least this long.
    pub min_idle: Option<Duration>,
    /// Only sessions whose upstream contains this text.
    pub upstream: Option<String>,
}

/// One session in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    /// The id the client holds.
    pub id: String,
    /// What this instance's logs call it (`session_fp`).
    pub fingerprint: String,
    /// The upstream it is bound to (URL or command).
    pub upstream: String,
    /// Its protocol revision.
    pub protocol_version: String,
    /// When it was created (Unix milliseconds).
    pub created_at_ms: UnixMillis,
    /// Its last use on any instance (Unix milliseconds).
    pub last_activity_ms: UnixMillis,
    /// Milliseconds since its last use.
    pub idle_ms: u64,
    /// Streams with a persisted resumption point.
    pub persisted_streams: usize,
    /// Whether this instance holds it in memory.
    pub cached_here: bool,
    /// Streams with a client attached on this instance.
    pub live_streams: u32,
}

/// A page of sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionPage {
    /// The sessions, ascending by id.
    pub sessions: Vec<SessionSummary>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next: Option<String>,
}

/// Where a stream resumes upstream, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResumePoint {
    /// The upstream's last event id, if it sends ids.
    pub upstream_event_id: Option<String>,
    /// The last sequence number sent to the client.
    pub client_seq: u64,
}

/// One stream of a session: what this instance holds of it (if any) and
/// its persisted resumption point (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamDetail {
    /// The stream number.
    pub stream: u32,
    /// What this instance holds now; absent when it holds nothing.
    pub here: Option<StreamView>,
    /// The persisted upstream resumption point.
    pub resume_point: Option<ResumePoint>,
}

/// One session in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionDetail {
    /// The listing's fields.
    #[serde(flatten)]
    pub summary: SessionSummary,
    /// Whether the upstream issued its own session id (never shown).
    pub upstream_session: bool,
    /// Its streams, by number.
    pub streams: Vec<StreamDetail>,
}

/// One live stream of this instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveStream {
    /// Its session.
    pub session: String,
    /// The stream.
    #[serde(flatten)]
    pub view: StreamView,
}

/// Every stream this instance holds, and the buffer budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamsReport {
    /// The streams, by session then stream number.
    pub streams: Vec<LiveStream>,
    /// Bytes buffered by all streams now.
    pub buffered_bytes: usize,
    /// `max_buffered_bytes`.
    pub buffered_bytes_limit: usize,
}

/// Whether the proxy should get traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// True when every check passed.
    pub ready: bool,
    /// What is not ready, for a person (empty when ready).
    pub not_ready: Vec<String>,
}

/// What [`Admin::reload`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Settings that changed and apply from the next request on.
    pub applied: Vec<String>,
    /// Settings that changed but apply only after a restart (not applied).
    pub need_restart: Vec<String>,
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The session store failed.
    #[error("the session store failed: {0}")]
    Store(#[from] StoreError),
    /// The request was malformed.
    #[error("{0}")]
    BadRequest(String),
}

impl Admin {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    fn summary(&self, s: &Session, now: UnixMillis) -> SessionSummary {
        let cached = self.shared.sessions.peek(s.id.as_str());
        SessionSummary {
            id: s.id.as_str().to_owned(),
            fingerprint: s.id.fingerprint().to_string(),
            upstream: s.upstream.clone(),
            protocol_version: s.protocol_version.clone(),
            created_at_ms: s.created_at,
            last_activity_ms: s.last_activity,
            idle_ms: now.saturating_sub(s.last_activity),
            persisted_streams: s.streams.len(),
            cached_here: cached.is_some(),
            live_streams: cached.map_or(0, |e| e.open_streams.load(Ordering::Relaxed)),
        }
    }

    /// A page of sessions from the store, filtered.
    pub async fn sessions(&self, q: &SessionQuery) -> Result<SessionPage, AdminError> {
        let limit = q.limit.clamp(1, 1000);
        let mut after = match &q.after {
            Some(a) => Some(parse_id(a)?),
            None => None,
        };
        let store = self.shared.sessions.store();
        let now = now_millis();
        let mut out = Vec::new();
        let mut scanned = 0;
        loop {
            let page = store.list(after.as_ref(), limit).await?;
            scanned += page.sessions.len();
            for s in &page.sessions {
                if q.min_idle.is_some_and(|d| {
                    u128::from(now.saturating_sub(s.last_activity)) < d.as_millis()
                }) {
                    continue;
                }
                if q.upstream
                    .as_deref()
                    .is_some_and(|u| !s.upstream.contains(u))
                {
                    continue;
                }
                out.push(self.summary(s, now));
                if out.len() == limit {
                    return Ok(SessionPage {
                        sessions: out,
                        next: Some(s.id.as_str().to_owned()),
                    });
                }
            }
            match page.next {
                Some(next) if !page.sessions.is_empty() && scanned < MAX_SCAN => {
                    after = Some(next);
                }
                Some(next) if !page.sessions.is_empty() => {
                    return Ok(SessionPage {
                        sessions: out,
                        next: Some(next.as_str().to_owned()),
                    });
                }
                _ => {
                    return Ok(SessionPage {
                        sessions: out,
                        next: None,
                    });
                }
            }
        }
    }

    /// One session with its streams; `None` when the store has no such
    /// session.
    pub async fn session(&self, id: &str) -> Result<Option<SessionDetail>, AdminError> {
        let id = parse_id(id)?;
        let Some(s) = self.shared.sessions.store().get(&id).await? else {
            return Ok(None);
        };
        let mut streams: Vec<StreamDetail> = s
            .streams
            .iter()
            .map(|p| StreamDetail {
                stream: p.stream.0,
                here: None,
                resume_point: Some(ResumePoint {
                    upstream_event_id: p.point.upstream_event_id.clone(),
                    client_seq: p.point.client_seq,
                }),
            })
            .collect();
        if let Some(entry) = self.shared.sessions.peek(id.as_str()) {
            for stream in entry.streams.all() {
                let view = stream.view();
                match streams.iter_mut().find(|d| d.stream == view.stream) {
                    Some(d) => d.here = Some(view),
                    None => streams.push(StreamDetail {
                        stream: view.stream,
                        here: Some(view),
                        resume_point: None,
                    }),
                }
            }
        }
        streams.sort_by_key(|d| d.stream);
        Ok(Some(SessionDetail {
            summary: self.summary(&s, now_millis()),
            upstream_session: s.upstream_session_id.is_some(),
            streams,
        }))
    }

    /// Ends session `id`: upstream (DELETE, or its stdio server stops),
    /// in the store (so every instance drops it within its revalidation
    /// interval) and here. `requester` says who asked, for the log.
    /// False when the store had no such session.
    pub async fn delete_session(&self, id: &str, requester: &str) -> Result<bool, AdminError> {
        let id = parse_id(id)?;
        let Some(s) = self.shared.sessions.store().get(&id).await? else {
            return Ok(false);
        };
        let removed = self.shared.sessions.remove(&id).await?;
        metrics::counter!("shadowcat_sessions_deleted_total").increment(1);
        if let Some(bridge) = &self.shared.stdio {
            bridge.stop(&id);
        }
        let upstream = match s.upstream_session_id.as_deref().map(HeaderValue::from_str) {
            Some(Ok(up)) if self.shared.stdio.is_none() => {
                self.shared
                    .ender
                    .end_now(id.clone(), up, &s.protocol_version)
                    .await
            }
            Some(Err(_)) => "invalid upstream session id",
            _ => "none",
        };
        tracing::info!(
            session_fp = %id.fingerprint(),
            requester,
            upstream,
            "session deleted through the admin API"
        );
        Ok(removed)
    }

    /// Applies what can change while running from `new`: the limits read
    /// per request (`max_body_bytes`, `body_read_timeout`,
    /// `body_idle_timeout`, `max_response_bytes`,
    /// `upstream_response_timeout`, `max_sessions`,
    /// `max_streams_per_session`, `max_last_event_id_len`), the allowed
    /// origins and hosts, and the TLS listener's certificate and key (read
    /// again: new handshakes use them; a file that does not load keeps the
    /// old certificate, logged and counted in
    /// `shadowcat_tls_reloads_total{result="error"}`). Open streams and
    /// requests in flight keep going; the next request sees the new
    /// values. Other changed limits are reported as needing a restart and
    /// not applied.
    pub fn reload(&self, new: &ReverseProxyConfig) -> ReloadReport {
        let shared = &self.shared;
        let mut report = ReloadReport::default();
        let mut live = self.shared.live.write();
        let old = &live.limits;
        let n = &new.limits;
        let mut limits = old.clone();
        macro_rules! live_fields {
            ($($f:ident),*) => {$(
                if format!("{:?}", old.$f) != format!("{:?}", n.$f) {
                    report.applied.push(format!("{}={:?}", stringify!($f), n.$f));
                    limits.$f = n.$f.clone();
                }
            )*};
        }
        macro_rules! fixed_fields {
            ($($f:ident),*) => {$(
                if format!("{:?}", old.$f) != format!("{:?}", n.$f) {
                    report.need_restart.push(stringify!($f).to_owned());
                }
            )*};
        }
        live_fields!(
            max_body_bytes,
            body_read_timeout,
            body_idle_timeout,
            max_response_bytes,
            upstream_response_timeout,
            max_sessions,
            max_streams_per_session,
            max_last_event_id_len
        );
        fixed_fields!(
            tls_handshake_timeout,
            h2_max_concurrent_streams,
            tls_max_record_bytes,
            max_header_bytes,
            max_connections,
            max_headers,
            upstream_connect_timeout,
            max_session_creates_per_minute,
            max_rate_limited_clients,
            upstream_delete_queue,
            upstream_deletes_in_flight,
            upstream_delete_timeout,
            keepalive_interval,
            header_read_timeout,
            replay,
            max_buffered_bytes,
            upstream_read_buffer,
            upstream_max_idle_connections,
            client_send_buffer,
            listen_backlog,
            detached_linger,
            max_kept_complete_streams,
            reconnect,
            max_cached_sessions,
            session_revalidate_interval,
            session_idle_timeout
        );
        let mut origins = live.origins.clone();
        if live.origins != new.allowed_origins {
            report.applied.push("allowed_origins".into());
            origins = new.allowed_origins.clone();
        }
        let hosts = HostCheck::new(new, shared.bound);
        if format!("{:?}", live.hosts) != format!("{hosts:?}") {
            report.applied.push("allowed_hosts".into());
        }
        *live = Arc::new(Live {
            limits,
            origins,
            hosts,
        });
        drop(live);
        match (&shared.listener_tls, &new.tls) {
            // Read again whether or not the paths changed: a renewed
            // certificate keeps its file names.
            (Some(tls), Some(files)) => {
                if let Ok(true) = tls.reload(files) {
                    report.applied.push("tls_certificate".into());
                }
            }
            (None, None) => {}
            _ => report.need_restart.push("tls".into()),
        }
        if format!("{:?}", shared.config.upstream_tls) != format!("{:?}", new.upstream_tls) {
            report.need_restart.push("upstream_tls".into());
        }
        if !report.applied.is_empty() {
            metrics::counter!("shadowcat_config_reloads_total").increment(1);
        }
        report
    }

    /// Every stream this instance holds.
    pub fn streams(&self) -> StreamsReport {
        let mut streams = Vec::new();
        for entry in self.shared.sessions.cached_entries() {
            for s in entry.streams.all() {
                streams.push(LiveStream {
                    session: entry.id.as_str().to_owned(),
                    view: s.view(),
                });
            }
        }
        streams.sort_by(|a, b| (&a.session, a.view.stream).cmp(&(&b.session, b.view.stream)));
        let budget = &self.shared.env.budget;
        StreamsReport {
            streams,
            buffered_bytes: budget.used(),
            buffered_bytes_limit: budget.limit(),
        }
    }

    /// Ready when the store answers, the writer's breaker is closed and
    /// the listener accepts (not draining).
    pub async fn readiness(&self) -> Readiness {
        let shared = &self.shared;
        let mut not_ready = Vec::new();
        if *shared.closing.borrow() || !shared.accepting.load(Ordering::Acquire) {
            not_ready.push("listener: not accepting (draining or not started)".to_owned());
        }
        if let Some(w) = &shared.writer {
            let breaker = w.stats().breaker;
            if breaker != BreakerState::Closed {
                not_ready.push(format!(
                    "writer: the store circuit breaker is {breaker:?} after repeated write failures"
                ));
            }
        }
        let probe = &shared.probe_id;
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, shared.sessions.store().get(probe)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => not_ready.push(format!("store: {e}")),
            Err(_) => not_ready.push(format!("store: no answer within {STORE_PROBE_TIMEOUT:?}")),
        }
        Readiness {
            ready: not_ready.is_empty(),
            not_ready,
        }
    }
}

fn parse_id(id: &str) -> Result<SessionId, AdminError> {
    SessionId::parse(id).map_err(|e| AdminError::BadRequest(format!("session id {id:?}: {e}")))
}
