//! GET: the session's server-to-client stream, or a resume after a
//! client's `Last-Event-ID` (from the replay buffer, else from the upstream
//! after the carried or persisted upstream event id).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::rejection::Rejection;
use super::{Shared, accepts, stateless_no};
use crate::event_id::ClientEventId;
use crate::mcp::jsonrpc;
use crate::mcp::protocol::ProtocolVersion;
use crate::mcp::{LAST_EVENT_ID, is_sse};
use crate::session::SessionEntry;
use crate::stream::log_reader::{LogBody, READ_COUNT, TakeoverParts};
use crate::stream::{PumpSource, StreamKind};

/// The encoded event starts with the id line of `id`.
fn carries_id(event: &[u8], id: &str) -> bool {
    event
        .strip_prefix(b"id: ")
        .and_then(|rest| rest.strip_prefix(id.as_bytes()))
        .is_some_and(|rest| rest.first() == Some(&b'\n'))
}

impl Shared {
    pub(super) async fn get(
        &self,
        req: Request<Incoming>,
        version: Option<ProtocolVersion>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if version.is_some_and(ProtocolVersion::is_stateless) {
            return Err(stateless_no(&Method::GET));
        }
        let headers = req.headers();
        if !accepts(headers, "text/event-stream") {
            return Err(Rejection::new(
                StatusCode::NOT_ACCEPTABLE,
                jsonrpc::INVALID_REQUEST,
                "a GET stream needs Accept: text/event-stream",
            ));
        }
        let mut resume = None;
        if let Some(last) = headers.get(&LAST_EVENT_ID) {
            let max = self.live().limits.max_last_event_id_len;
            if last.len() > max {
                return Err(Rejection::bad_request(format!(
                    "Last-Event-ID is longer than the limit of {max} bytes"
                )));
            }
            let Ok(text) = last.to_str() else {
                return Err(Rejection::bad_request(
                    "Last-Event-ID must be visible ASCII",
                ));
            };
            let id = ClientEventId::parse(text).map_err(|e| {
                Rejection::bad_request(format!(
                    "Last-Event-ID {text:?} is not an event id this proxy issued: {e}"
                ))
            })?;
            resume = Some((text.to_owned(), id));
        }
        let session = self.require_session(headers).await?;
        let child = match self.bridge() {
            Some(bridge) => Some(self.stdio_child(bridge, &session).await?),
            None => None,
        };
        if let Some((text, id)) = resume {
            if let Err(e) = id.verify(&session.key, &session.id) {
                metrics::counter!("shadowcat_resume_rejected_total").increment(1);
                tracing::info!(session_fp = %session.id.fingerprint(), last_event_id = %text, "Last-Event-ID rejected");
                return Err(Rejection::bad_request(format!(
                    "Last-Event-ID {text:?} is not valid here: {e}; open a new stream without it"
                )));
            }
            return self.resume(&session, id, &text).await;
        }
        if let Some(child) = child {
            return self.stdio_get(&session, &child);
        }
        let slot = self.stream_slot(&session)?;
        let up = self.upstream_request(Method::GET, headers, Some(&session), Bytes::new());
        let resp = self.send(up).await?;
        self.after_upstream(resp, &session, Some(slot), StreamKind::Get, "get")
            .await
    }

    /// A client resumes a stream after its event `id`: from this
    /// instance's replay buffer when it still holds the events after it,
    /// else from the upstream after the upstream event id carried in `id`.
    pub(super) async fn resume(
        &self,
        session: &Arc<SessionEntry>,
        id: ClientEventId,
        text: &str,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let started = std::time::Instant::now();
        // Why this instance cannot replay it: (metric label, cause).
        let mut not_held = (
            "not_here",
            "this instance does not hold the stream (the proxy restarted, another instance served it, or it was released)".to_owned(),
        );
        if let Some(stream) = session.streams.get(id.stream) {
            match stream.attach(id.seq.saturating_add(1)) {
                Ok(body) => {
                    super::access::note(|n| n.resume = Some("buffer"));
                    metrics::counter!("shadowcat_client_resumes_total", "from" => "buffer")
                        .increment(1);
                    tracing::debug!(session_fp = %session.id.fingerprint(), stream = id.stream, seq = id.seq, "client resumes from the replay buffer");
                    return Ok(self.stream_response(body, session, None));
                }
                Err(why) => {
                    tracing::debug!(session_fp = %session.id.fingerprint(), stream = id.stream, seq = id.seq, ?why, "replay buffer does not reach back; resuming from the replay log or the upstream");
                    not_held = (why.limit(), why.cause(&self.env));
                    if let Some(resp) = self.resume_from_log(session, &id, text).await? {
                        return Ok(resp);
                    }
                    stream.release();
                }
            }
        } else if let Some(resp) = self.resume_from_log(session, &id, text).await? {
            return Ok(resp);
        }
        let (limit, held_cause) = not_held;
        let gap = |status: StatusCode, cause: String| {
            metrics::counter!("shadowcat_resume_gaps_total", "limit" => limit).increment(1);
            tracing::warn!(session_fp = %session.id.fingerprint(), last_event_id = %text, %cause, limit, "client stream cannot be resumed");
            Rejection::new(
                status,
                jsonrpc::SERVER_ERROR,
                format!("cannot resume after Last-Event-ID {text:?}: {cause}"),
            )
        };
        let up_id = match id.upstream.clone() {
            Some(up) => up,
            // Too long to carry: the persisted point, when it is exactly
            // where the client stopped.
            None => match self.persisted_point(session, &id).await {
                Some(up) => up,
                None => {
                    return Err(gap(
                        StatusCode::GONE,
                        format!(
                            "{held_cause}; the id carries no upstream event id, and the store holds none for event {} of the stream",
                            id.seq
                        ),
                    ));
                }
            },
        };
        let slot = self.stream_slot(session)?;
        let req = self.env.resume_request(
            session.upstream_id.as_ref(),
            session.version,
            Some(&up_id),
            crate::auth::caller()
                .and_then(|c| c.upstream.clone())
                .as_ref(),
        );
        let resp = match self.send(req).await {
            Ok(r) => r,
            Err(rej) => return Err(gap(rej.status, rej.message.into_owned())),
        };
        let status = resp.status();
        if status == StatusCode::NOT_FOUND && session.upstream_id.is_some() {
            return self
                .after_upstream(resp, session, None, StreamKind::Get, "resume")
                .await;
        }
        if !status.is_success() || !is_sse(resp.headers()) {
            return Err(gap(
                StatusCode::BAD_GATEWAY,
                format!(
                    "{held_cause}; the upstream could not resume its stream after event {up_id:?} (HTTP {status})"
                ),
            ));
        }
        let kind = if id.is_get_stream() {
            StreamKind::Get
        } else {
            StreamKind::Request(None)
        };
        let body = self.open_stream(
            PumpSource::Upstream(resp.into_body()),
            session,
            Some(slot),
            kind,
            Some(up_id),
        );
        super::access::note(|n| n.resume = Some("upstream"));
        metrics::counter!("shadowcat_client_resumes_total", "from" => "upstream").increment(1);
        metrics::histogram!("shadowcat_resume_seconds").record(started.elapsed().as_secs_f64());
        tracing::debug!(session_fp = %session.id.fingerprint(), "client resumes from the upstream");
        Ok(self.stream_response(body, session, None))
    }

    /// Serves the client from the shared replay log when it holds the
    /// client's event (the same id) and what follows; `None` when there is
    /// no log, or it does not reach back that far.
    async fn resume_from_log(
        &self,
        session: &Arc<SessionEntry>,
        id: &ClientEventId,
        text: &str,
    ) -> Result<Option<Response<ProxyBody>>, Rejection> {
        let Some(cluster) = self.env.cluster.clone() else {
            return Ok(None);
        };
        let log = cluster.log(&session.id, id.stream);
        // Retried for up to the log wait: right after a Redis restart the
        // old connection fails and Redis answers LOADING for a while.
        let deadline = tokio::time::Instant::now() + cluster.config.wait;
        let mut backoff = std::time::Duration::from_millis(25);
        let probe = loop {
            match log.probe(id.seq, READ_COUNT).await {
                Ok(p) => break Ok(p),
                Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::info!(session_fp = %session.id.fingerprint(), stream = id.stream, error = %e, "replay log read failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_millis(400));
                }
                Err(e) => break Err(e),
            }
        };
        let probe = match probe {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(session_fp = %session.id.fingerprint(), stream = id.stream, error = %e, "could not read the replay log; resuming without it");
                return Ok(None);
            }
        };
        let holds = probe
            .entries
            .first()
            .is_some_and(|e| e.seq == id.seq && carries_id(&e.data, text));
        if !holds {
            tracing::debug!(session_fp = %session.id.fingerprint(), stream = id.stream, seq = id.seq, last = ?probe.last_seq, "the replay log does not hold the client's event");
            return Ok(None);
        }
        let slot = self.stream_slot(session)?;
        let watch = cluster
            .config
            .notifier
            .watch(log.channel(), std::time::Duration::from_secs(1))
            .await;
        let parts = TakeoverParts {
            env: Arc::clone(&self.env),
            session: session.id.clone(),
            key: session.key,
            upstream_session: session.upstream_id.clone(),
            version: session.version,
            authorization: crate::auth::caller().and_then(|c| c.upstream.clone()),
            registry: Arc::clone(&session.streams),
            writer: self.writer.clone(),
            stream: id.stream,
        };
        let body = LogBody::new(
            cluster,
            log,
            watch,
            id.seq,
            probe.entries,
            parts,
            Some(slot),
        );
        super::access::note(|n| n.resume = Some("log"));
        metrics::counter!("shadowcat_client_resumes_total", "from" => "log").increment(1);
        tracing::debug!(session_fp = %session.id.fingerprint(), stream = id.stream, seq = id.seq, "client resumes from the replay log");
        Ok(Some(self.sse_response(ProxyBody::log(body), session, None)))
    }

    /// The upstream event id persisted for `id`'s stream, if the stored
    /// point is exactly the client's event (an older point would skip
    /// events, a newer one repeat them).
    pub(super) async fn persisted_point(
        &self,
        session: &SessionEntry,
        id: &ClientEventId,
    ) -> Option<String> {
        let stored = match self.sessions.store().get(&session.id).await {
            Ok(s) => s?,
            Err(e) => {
                metrics::counter!("shadowcat_store_errors_total", "op" => "get").increment(1);
                tracing::warn!(session_fp = %session.id.fingerprint(), error = %e, "could not read the stored resumption point");
                return None;
            }
        };
        let point = &stored
            .streams
            .iter()
            .find(|p| p.stream.0 == id.stream)?
            .point;
        if point.client_seq != id.seq {
            tracing::debug!(session_fp = %session.id.fingerprint(), stream = id.stream, stored = point.client_seq, wanted = id.seq, "stored resumption point is not the client's");
            return None;
        }
        point.upstream_event_id.clone()
    }
}
