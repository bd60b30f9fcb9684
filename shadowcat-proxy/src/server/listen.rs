//! Resilient `subscriptions/listen` (MCP 2026-07-28).
//!
//! A listen request's SSE stream carries the server's change notifications
//! for as long as it is open; the protocol has no resumption, so when the
//! upstream's stream drops without the listen's result (an abrupt close),
//! a direct client has to listen again itself. Through Shadowcat it does
//! not: the client's stream stays open (with keep-alive comments) while the
//! proxy sends the same listen request upstream again, with the same
//! parameters and headers and a new JSON-RPC id, paced by the transport's
//! [`ReconnectPolicy`] (capped, jittered backoff; `retry:` honoured).
//!
//! Everything from a re-listened stream reaches the client under the
//! client's own id: the response's `id` and every message's
//! `_meta["io.modelcontextprotocol/subscriptionId"]`. The new stream's
//! acknowledgement is not forwarded when it acknowledges what the first
//! did (the client already holds it). Then, because notifications sent
//! while no stream was open are lost and the protocol cannot say which,
//! the client gets one *refresh signal* per notification kind the
//! acknowledgement names (`…/list_changed` for each list, one
//! `notifications/resources/updated` per subscribed resource): each means
//! "this may have changed, read it again", so a lost one costs the client
//! nothing.
//!
//! When the listen cannot be re-established (the policy gave up, or the
//! upstream refused with a status retrying will not change) the client
//! gets a JSON-RPC error for its id naming the cause, then the stream
//! ends. All of it runs inside the client body's state machine: no task,
//! and closing the client's stream drops the upstream request (or a
//! pending re-listen) with it, which is the cancellation.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use shadowcat_transport::sse::OutgoingEvent;
use shadowcat_transport::{Decision, Failure, ReconnectPolicy};
use tokio::time::{Instant, Sleep};

use crate::collect::{ReadLimits, read_whole};
use crate::mcp::jsonrpc;
use crate::mcp::{is_sse, media_type_is};
use crate::stream::StreamEnv;
use crate::upstream::http::UpstreamBody;

/// The method whose stream is re-established when it drops.
pub(crate) const LISTEN: &str = "subscriptions/listen";
/// The `_meta` key naming the subscription (the listen request's id).
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// The first message of every listen stream.
const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
/// Filter flags and the notification each one opts in to.
const LIST_SIGNALS: [(&str, &str); 3] = [
    ("toolsListChanged", "notifications/tools/list_changed"),
    ("promptsListChanged", "notifications/prompts/list_changed"),
    (
        "resourcesListChanged",
        "notifications/resources/list_changed",
    ),
];
/// A listen stream acknowledged and open at least this long counts as
/// healthy when it drops: the reconnect policy's attempts start over. A
/// stream that drops sooner (an upstream that acknowledges and closes)
/// uses up attempts, so it is given up on instead of hammered.
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// The parts of a message a listen stream looks at.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<IgnoredAny>,
    #[serde(default, deserialize_with = "present")]
    result: bool,
    #[serde(default, deserialize_with = "present")]
    error: bool,
}

/// True for a field that is there (even `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// Ids of re-listen requests: unique in this process.
static NEXT_RELISTEN: AtomicU64 = AtomicU64::new(1);

type Connecting = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// The upstream's answer to a re-listen.
enum Answer {
    /// A new event stream.
    Stream(UpstreamBody),
    /// A JSON-RPC answer instead of a stream (relayed, then the end).
    Json(Bytes),
    /// A status that is neither: retried or given up on by the policy.
    Refused {
        status: u16,
        retry_after: Option<Duration>,
        /// The upstream's JSON-RPC error message, or what it sent.
        detail: String,
    },
    /// No answer (connect error, timeout).
    Unreachable(String),
}

enum Phase {
    /// Reading an upstream stream.
    Reading,
    /// Waiting out the backoff.
    Waiting(Pin<Box<Sleep>>),
    /// A re-listen request is out.
    Connecting(Connecting),
    /// Answered, or given up: nothing more comes from upstream.
    Over,
}

/// What a re-listen came to.
pub(crate) enum Relisten {
    /// A new upstream stream to read.
    Stream(UpstreamBody),
    /// The last event was written into the output; the stream ends.
    Over,
}

/// Why the upstream stream stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stopped {
    /// It ended without the listen's result.
    Ended,
    /// The connection failed.
    Broken,
    /// Its SSE was malformed or broke a decoder limit.
    Malformed,
}

impl Stopped {
    fn label(self) -> &'static str {
        match self {
            Stopped::Ended => "ended",
            Stopped::Broken => "broken",
            Stopped::Malformed => "malformed",
        }
    }
}

/// One listen stream's re-listen state, held by its client body.
pub(crate) struct Listen {
    client_id: Value,
    /// The listen request as sent upstream; its `id` changes per re-listen.
    request: Map<String, Value>,
    /// The upstream request's headers (the allowlist and credentials).
    headers: HeaderMap,
    env: Arc<StreamEnv>,
    /// Most bytes read of an upstream's non-SSE answer to a re-listen (an
    /// error to quote, or a JSON answer to relay): `max_response_bytes`.
    max_answer: usize,
    policy: ReconnectPolicy,
    phase: Phase,
    /// The id the current upstream stream answers to, once it is not the
    /// client's.
    upstream_id: Option<Value>,
    /// The first acknowledgement's `notifications`.
    acked: Option<Value>,
    /// When the upstream stream dropped; cleared by the next
    /// acknowledgement.
    dropped_at: Option<Instant>,
    /// When the current upstream stream was acknowledged.
    acked_at: Option<Instant>,
    /// Events written toward the client (for the body's count).
    pub(crate) events: u64,
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen")
            .field("client_id", &self.client_id)
            .field("upstream_id", &self.upstream_id)
            .field("over", &matches!(self.phase, Phase::Over))
            .finish_non_exhaustive()
    }
}

impl Listen {
    /// The re-listen state for a listen request `body` (with JSON-RPC id
    /// `client_id`) that went upstream with `headers`; an upstream's
    /// non-SSE answer to a re-listen is read up to `max_answer` bytes.
    /// `None` when the body is not a JSON object.
    pub(crate) fn new(
        client_id: Value,
        body: &[u8],
        headers: HeaderMap,
        env: Arc<StreamEnv>,
        max_answer: usize,
    ) -> Option<Self> {
        let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        metrics::counter!("shadowcat_listen_streams_total").increment(1);
        Some(Listen {
            client_id,
            request,
            headers,
            max_answer,
            policy: ReconnectPolicy::new(env.reconnect),
            env,
            phase: Phase::Reading,
            upstream_id: None,
            acked: None,
            dropped_at: None,
            acked_at: None,
            events: 0,
        })
    }

    /// True once nothing more comes from upstream.
    pub(crate) fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Over)
    }

    /// True while a re-listen is pending (no upstream stream to read).
    pub(crate) fn is_relistening(&self) -> bool {
        matches!(self.phase, Phase::Waiting(_) | Phase::Connecting(_))
    }

    /// The upstream sent `retry:`; it paces the re-listens.
    pub(crate) fn server_retry(&mut self, ms: u64) {
        self.policy.set_server_retry(Duration::from_millis(ms));
    }

    /// Writes what the client gets for one upstream event (`data`, with
    /// the event's own `id` and `event` name when it had them) into `out`:
    /// the event as is, rewritten to the client's id, nothing (a repeated
    /// acknowledgement), or more (the refresh signals after a re-listen).
    pub(crate) fn forward(
        &mut self,
        data: &Bytes,
        id: Option<&str>,
        name: Option<&str>,
        out: &mut BytesMut,
    ) {
        // A look without building a tree (no allocation for a plain
        // method name): most events need nothing more.
        let Ok(peek) = serde_json::from_slice::<Peek<'_>>(data) else {
            self.put(data, id, name, out);
            return;
        };
        if peek.method.is_none() && peek.id.is_some() && (peek.result || peek.error) {
            // The listen's result (a graceful end) or error: the last word.
            self.phase = Phase::Over;
        }
        let is_ack = peek.method.as_deref() == Some(ACKNOWLEDGED);
        if self.upstream_id.is_none() && !is_ack {
            self.put(data, id, name, out);
            return;
        }
        let Ok(mut msg) = serde_json::from_slice::<Value>(data) else {
            self.put(data, id, name, out);
            return;
        };
        let rewritten = self.restore_ids(&mut msg);
        let mut signals = None;
        if is_ack {
            let filter = msg
                .pointer("/params/notifications")
                .cloned()
                .unwrap_or(Value::Null);
            self.acked_at = Some(Instant::now());
            match self.dropped_at.take() {
                // A re-listen's acknowledgement: the gap is over.
                Some(dropped) => {
                    metrics::histogram!("shadowcat_listen_gap_seconds")
                        .record(dropped.elapsed().as_secs_f64());
                    if self.acked.as_ref() == Some(&filter) {
                        // The client holds this acknowledgement already.
                        self.write_signals(&filter, out);
                        return;
                    }
                    tracing::info!(acknowledged = %filter, "the re-listen acknowledged other notifications than before; forwarding its acknowledgement");
                    self.acked = Some(filter.clone());
                    signals = Some(filter);
                }
                None => {
                    if self.acked.is_none() {
                        self.acked = Some(filter);
                    }
                }
            }
        }
        if rewritten {
            let bytes = serde_json::to_vec(&msg).expect("a JSON value serializes");
            self.put(&bytes, id, name, out);
        } else {
            self.put(data, id, name, out);
        }
        if let Some(filter) = signals {
            self.write_signals(&filter, out);
        }
    }

    /// Relays the upstream's JSON answer to a re-listen as the listen's
    /// answer, under the client's id (whatever id the upstream put on
    /// it, `null` included: it answered the re-listen), and ends.
    fn answer(&mut self, bytes: &Bytes, out: &mut BytesMut) {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut msg) if msg.get("result").is_some() || msg.get("error").is_some() => {
                self.restore_ids(&mut msg);
                msg["id"] = self.client_id.clone();
                let body = serde_json::to_vec(&msg).expect("a JSON value serializes");
                self.put(&body, None, None, out);
                self.phase = Phase::Over;
            }
            _ => self.decide(
                Failure::Status {
                    status: StatusCode::BAD_GATEWAY.as_u16(),
                    retry_after: None,
                },
                "a JSON body that is not a JSON-RPC response",
                out,
            ),
        }
    }

    /// Puts the client's id back where the upstream has the re-listen's:
    /// the message's `id` and its `_meta` subscription id. True when
    /// something changed.
    fn restore_ids(&self, msg: &mut Value) -> bool {
        let Some(up) = &self.upstream_id else {
            return false;
        };
        let mut changed = false;
        if msg.get("id") == Some(up) {
            msg["id"] = self.client_id.clone();
            changed = true;
        }
        for part in ["params", "result"] {
            if let Some(meta) = msg
                .get_mut(part)
                .and_then(|p| p.get_mut("_meta"))
                .and_then(Value::as_object_mut)
                && meta.get(SUBSCRIPTION_ID) == Some(up)
            {
                meta.insert(SUBSCRIPTION_ID.to_owned(), self.client_id.clone());
                changed = true;
            }
        }
        changed
    }

    /// One refresh signal per notification kind `filter` names.
    fn write_signals(&mut self, filter: &Value, out: &mut BytesMut) {
        let meta = json!({ SUBSCRIPTION_ID: self.client_id });
        let mut sent = 0u64;
        for (flag, method) in LIST_SIGNALS {
            if filter.get(flag) == Some(&Value::Bool(true)) {
                let msg = json!({"jsonrpc": "2.0", "method": method, "params": {"_meta": meta}});
                self.put(
                    &serde_json::to_vec(&msg).expect("serializes"),
                    None,
                    None,
                    out,
                );
                sent += 1;
            }
        }
        let uris = filter
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for uri in uris.iter().filter(|u| u.is_string()) {
            let msg = json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                "params": {"uri": uri, "_meta": meta}});
            self.put(
                &serde_json::to_vec(&msg).expect("serializes"),
                None,
                None,
                out,
            );
            sent += 1;
        }
        metrics::counter!("shadowcat_listen_refresh_signals_total").increment(sent);
    }

    fn put(&mut self, data: &[u8], id: Option<&str>, name: Option<&str>, out: &mut BytesMut) {
        let mut ev = OutgoingEvent::new().data(data);
        if let Some(id) = id {
            ev = ev.id(id);
        }
        if let Some(name) = name {
            ev = ev.event(name);
        }
        // Decoded ids and names hold no line break or NUL.
        let _ = ev.encode(out);
        self.events += 1;
    }

    /// The upstream stream stopped before the listen's result: schedule a
    /// re-listen, or write the error that ends the client's stream.
    pub(crate) fn dropped(&mut self, why: Stopped, detail: &str, out: &mut BytesMut) {
        metrics::counter!("shadowcat_listen_drops_total", "cause" => why.label()).increment(1);
        if self
            .acked_at
            .take()
            .is_some_and(|at| at.elapsed() >= HEALTHY_AFTER)
        {
            self.policy.on_healthy();
        }
        if self.dropped_at.is_none() {
            self.dropped_at = Some(Instant::now());
        }
        tracing::warn!(
            cause = why.label(),
            detail,
            "the upstream listen stream dropped; listening again"
        );
        self.decide(Failure::EndedEarly, "", out);
    }

    /// Polls a pending re-listen (backoff, then the request).
    pub(crate) fn poll_relisten(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
    ) -> Poll<Relisten> {
        loop {
            match &mut self.phase {
                Phase::Reading => return Poll::Pending,
                Phase::Over => return Poll::Ready(Relisten::Over),
                Phase::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.phase = Phase::Connecting(self.send());
                }
                Phase::Connecting(fut) => {
                    let answer = ready!(fut.as_mut().poll(cx));
                    match answer {
                        Answer::Stream(body) => {
                            self.phase = Phase::Reading;
                            return Poll::Ready(Relisten::Stream(body));
                        }
                        Answer::Json(bytes) => {
                            tracing::warn!(
                                "the upstream answered the re-listen with JSON, not a stream; relaying it and ending the stream"
                            );
                            metrics::counter!("shadowcat_listen_gave_up_total", "cause" => "answered")
                                .increment(1);
                            self.answer(&bytes, out);
                        }
                        Answer::Refused {
                            status,
                            retry_after,
                            detail,
                        } => self.decide(
                            Failure::Status {
                                status,
                                retry_after,
                            },
                            &detail,
                            out,
                        ),
                        Answer::Unreachable(detail) => self.decide(Failure::Connect, &detail, out),
                    }
                }
            }
        }
    }

    /// Asks the policy about `failure`: wait and re-listen, or give up
    /// with an error for the client naming the cause.
    fn decide(&mut self, failure: Failure, detail: &str, out: &mut BytesMut) {
        let why = match self.policy.on_failure(failure) {
            Decision::Retry { delay, attempt } => {
                tracing::debug!(?delay, attempt, %failure, detail, "re-listening after the backoff");
                self.phase = Phase::Waiting(Box::pin(tokio::time::sleep(delay)));
                return;
            }
            Decision::SessionExpired => (
                "rejected",
                "upstream answered HTTP 404; not retrying".to_owned(),
            ),
            Decision::GiveUp(g) => (
                match g {
                    shadowcat_transport::GiveUp::AttemptsExhausted { .. } => "attempts",
                    shadowcat_transport::GiveUp::Rejected { .. } => "rejected",
                },
                g.to_string(),
            ),
        };
        let (label, reason) = why;
        let mut cause = format!(
            "the upstream's subscriptions/listen stream dropped and Shadowcat could not listen again: {reason}"
        );
        if !detail.is_empty() {
            cause.push_str(&format!(" (the upstream said: {detail})"));
        }
        cause.push_str("; notifications sent since the drop were not received; send subscriptions/listen again");
        metrics::counter!("shadowcat_listen_gave_up_total", "cause" => label).increment(1);
        tracing::warn!(cause, "giving up on a listen stream");
        let body = jsonrpc::error_body(Some(&self.client_id), jsonrpc::SERVER_ERROR, &cause);
        self.put(&body, None, None, out);
        self.phase = Phase::Over;
    }

    /// Sends the listen request again, with a new id.
    fn send(&mut self) -> Connecting {
        let n = NEXT_RELISTEN.fetch_add(1, Ordering::Relaxed);
        let id = Value::String(format!("shadowcat-relisten-{n}"));
        self.request.insert("id".to_owned(), id.clone());
        self.upstream_id = Some(id);
        let body = serde_json::to_vec(&self.request).expect("a JSON object serializes");
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.env.uri.clone();
        *req.headers_mut() = self.headers.clone();
        metrics::counter!("shadowcat_listen_relistens_total").increment(1);
        tracing::debug!(
            attempt = self.policy.attempts(),
            "sending subscriptions/listen again"
        );
        let pool = Arc::clone(&self.env.pool);
        let budget = Arc::clone(&self.env.budget);
        let timeout = self.env.response_timeout;
        let max = self.max_answer;
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let resp = match tokio::time::timeout_at(deadline, pool.request(req)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    return Answer::Unreachable(format!("the upstream could not be reached: {e}"));
                }
                Err(_) => {
                    return Answer::Unreachable(format!(
                        "the upstream did not answer within {timeout:?}"
                    ));
                }
            };
            let status = resp.status();
            if status.is_success() && is_sse(resp.headers()) {
                return Answer::Stream(resp.into_body());
            }
            let json = media_type_is(resp.headers(), &header::CONTENT_TYPE, "application/json");
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let limits = ReadLimits {
                max,
                budget: Some(budget),
                deadline,
                idle: timeout,
            };
            let body = read_whole(resp.into_body(), limits).await;
            match body {
                Ok(bytes) if status.is_success() && json && !bytes.is_empty() => {
                    Answer::Json(bytes)
                }
                Ok(bytes) => Answer::Refused {
                    status: if status.is_success() {
                        // Neither a stream nor JSON: nothing to listen on.
                        StatusCode::BAD_GATEWAY.as_u16()
                    } else {
                        status.as_u16()
                    },
                    retry_after,
                    detail: refusal_detail(status, json, &bytes),
                },
                Err(e) => Answer::Refused {
                    status: status.as_u16(),
                    retry_after,
                    detail: format!("HTTP {status}, body unreadable: {e}"),
                },
            }
        })
    }
}

/// What an upstream's refusal said: its JSON-RPC error message when it
/// sent one, else its status (and content type).
fn refusal_detail(status: StatusCode, json: bool, body: &[u8]) -> String {
    if json
        && let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Some(msg) = v.pointer("/error/message").and_then(Value::as_str)
    {
        let msg: String = msg.chars().take(300).collect();
        return format!("HTTP {status}: {msg}");
    }
    if status.is_success() {
        return format!("HTTP {status} with neither an event stream nor JSON");
    }
    format!("HTTP {status}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(upstream_id: Option<&str>) -> Listen {
        let pool = crate::upstream::http::UpstreamPool::new(
            &"http://127.0.0.1:9/mcp".parse().unwrap(),
            Duration::from_secs(1),
            8192,
        );
        let (_tx, closing) = tokio::sync::watch::channel(false);
        let env = Arc::new(StreamEnv {
            pool,
            uri: "http://127.0.0.1:9/mcp".parse().unwrap(),
            bearer: crate::auth::Credential::None,
            response_timeout: Duration::from_secs(1),
            reconnect: Default::default(),
            replay: Default::default(),
            budget: Arc::new(crate::stream::budget::Budget::new(1 << 20)),
            linger: Duration::from_secs(1),
            lingering: Default::default(),
            max_kept: 1,
            keepalive: Duration::from_secs(1),
            closing,
            cluster: None,
        });
        let body = br#"{"jsonrpc":"2.0","id":"c1","method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true}}}"#;
        let mut l = Listen::new(json!("c1"), body, HeaderMap::new(), env, 1 << 16).unwrap();
        l.upstream_id = upstream_id.map(|u| json!(u));
        l
    }

    fn datas(out: &BytesMut) -> Vec<Value> {
        std::str::from_utf8(out)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn first_stream_passes_bytes_unchanged() {
        let mut l = listen(None);
        let mut out = BytesMut::new();
        let raw = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"c1"}}}"#);
        l.forward(&raw, Some("e1"), None, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains(std::str::from_utf8(&raw).unwrap()), "{text}");
        assert!(text.starts_with("id: e1\n"), "{text}");
        assert!(!l.is_over());
    }

    #[test]
    fn relistened_ids_become_the_clients() {
        let mut l = listen(Some("shadowcat-relisten-7"));
        let mut out = BytesMut::new();
        let note = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"shadowcat-relisten-7"}}}"#);
        l.forward(&note, None, None, &mut out);
        let result = Bytes::from_static(br#"{"jsonrpc":"2.0","id":"shadowcat-relisten-7","result":{"_meta":{"io.modelcontextprotocol/subscriptionId":"shadowcat-relisten-7"},"resultType":"complete"}}"#);
        l.forward(&result, None, None, &mut out);
        let got = datas(&out);
        assert_eq!(got[0]["params"]["_meta"][SUBSCRIPTION_ID], "c1");
        assert_eq!(got[1]["id"], "c1");
        assert_eq!(got[1]["result"]["_meta"][SUBSCRIPTION_ID], "c1");
        assert!(l.is_over(), "the result ends the listen");
    }

    #[test]
    fn a_repeated_acknowledgement_becomes_refresh_signals() {
        let mut l = listen(None);
        let mut out = BytesMut::new();
        let ack = |id: &str| {
            Bytes::from(
                json!({"jsonrpc":"2.0","method":ACKNOWLEDGED,"params":{
                "_meta":{SUBSCRIPTION_ID: id},
                "notifications":{"toolsListChanged":true,"resourceSubscriptions":["file:///a","file:///b"]}}})
                .to_string(),
            )
        };
        l.forward(&ack("c1"), None, None, &mut out);
        assert_eq!(
            datas(&out).len(),
            1,
            "the first acknowledgement goes through"
        );
        out.clear();
        l.dropped_at = Some(Instant::now());
        l.upstream_id = Some(json!("shadowcat-relisten-1"));
        l.forward(&ack("shadowcat-relisten-1"), None, None, &mut out);
        let got = datas(&out);
        let methods: Vec<_> = got.iter().map(|m| m["method"].as_str().unwrap()).collect();
        assert_eq!(
            methods,
            [
                "notifications/tools/list_changed",
                "notifications/resources/updated",
                "notifications/resources/updated"
            ]
        );
        assert_eq!(got[1]["params"]["uri"], "file:///a");
        assert!(
            got.iter()
                .all(|m| m["params"]["_meta"][SUBSCRIPTION_ID] == "c1")
        );
    }

    #[test]
    fn a_changed_acknowledgement_is_forwarded() {
        let mut l = listen(Some("r"));
        l.acked = Some(json!({"toolsListChanged":true,"promptsListChanged":true}));
        l.dropped_at = Some(Instant::now());
        let mut out = BytesMut::new();
        let ack = Bytes::from(
            json!({"jsonrpc":"2.0","method":ACKNOWLEDGED,"params":{
            "_meta":{SUBSCRIPTION_ID:"r"},"notifications":{"toolsListChanged":true}}})
            .to_string(),
        );
        l.forward(&ack, None, None, &mut out);
        let got = datas(&out);
        assert_eq!(got[0]["method"], ACKNOWLEDGED);
        assert_eq!(got[0]["params"]["_meta"][SUBSCRIPTION_ID], "c1");
        assert_eq!(got[1]["method"], "notifications/tools/list_changed");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn refusals_quote_the_upstream() {
        let d = refusal_detail(
            StatusCode::FORBIDDEN,
            true,
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"no"}}"#,
        );
        assert_eq!(d, "HTTP 403 Forbidden: no");
        assert_eq!(
            refusal_detail(StatusCode::FORBIDDEN, false, b"<html>"),
            "HTTP 403 Forbidden"
        );
    }
}
