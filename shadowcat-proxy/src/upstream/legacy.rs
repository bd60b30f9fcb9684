//! A legacy HTTP+SSE (2024-11-05) MCP server as the reverse proxy's
//! upstream: one SSE connection per session (`GET` on the upstream URL,
//! whose `endpoint` event names where to POST), driven by one task.
//!
//! It is a "child" of the stdio bridge ([`super::stdio`]) whose stdin is
//! the POST endpoint and whose stdout is the SSE connection: the same
//! router puts each message on exactly one stream's queue (a response on
//! its request's stream, progress by token, the rest on the one request
//! in flight or the GET stream), so clients get sessions, resumable
//! streams and replay the server has none of.
//!
//! The task POSTs the client's messages in order and reads the SSE
//! connection between them. **When the SSE connection drops**, the legacy
//! protocol cannot resume it: every request sent upstream and not yet
//! answered ends with a JSON-RPC error naming the cause (it may or may not
//! have run: it is never sent twice). Once none is in flight, the session
//! is re-established: a new SSE connection, then `initialize` (the
//! client's own, its answer kept here) and `notifications/initialized`
//! replayed; messages the clients sent meanwhile wait and go after it.
//! When that fails under the reconnect policy, the session ends like a
//! stdio server that exited (its next request gets 404).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use shadowcat_transport::ReconnectConfig;
use shadowcat_transport::sse::{Decoder, SseItem};
use tokio::sync::mpsc;

use super::http::{UpstreamBody, UpstreamPool};
use super::stdio::ChildSession;

/// Longest `endpoint` URL accepted from the upstream (bytes).
const MAX_ENDPOINT_LEN: usize = 2048;

/// How to reach a legacy upstream.
#[derive(Debug)]
pub(crate) struct LegacyLink {
    pub(crate) pool: Arc<UpstreamPool>,
    /// The SSE URL (`GET`), e.g. `http://127.0.0.1:3001/sse`.
    pub(crate) uri: Uri,
    pub(crate) bearer: Option<HeaderValue>,
    /// Each connect, POST answer and the `endpoint` event must come
    /// within this.
    pub(crate) timeout: Duration,
    /// The `auto` probe (answer head and `endpoint` event) must finish
    /// within this (`upstream_connect_timeout`).
    pub(crate) probe_timeout: Duration,
    pub(crate) reconnect: ReconnectConfig,
}

/// One open SSE connection and where to POST.
pub(crate) struct Connection {
    body: UpstreamBody,
    decoder: Decoder,
    endpoint: Uri,
    /// Messages read with the `endpoint` event, not yet routed.
    early: Vec<Bytes>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// What one read of the SSE connection gave.
enum Read {
    Messages(Vec<Bytes>),
    Ended(String),
}

impl LegacyLink {
    /// Opens an SSE connection and reads up to its `endpoint` event.
    pub(crate) async fn open(&self) -> Result<Connection, String> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(b) = &self.bearer {
            req.headers_mut().insert(header::AUTHORIZATION, b.clone());
        }
        let resp = match tokio::time::timeout(self.timeout, self.pool.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("the legacy upstream could not be reached: {e}")),
            Err(_) => {
                return Err(format!(
                    "the legacy upstream did not answer within {:?}",
                    self.timeout
                ));
            }
        };
        if !resp.status().is_success() || !crate::mcp::is_sse(resp.headers()) {
            return Err(format!(
                "the upstream answered GET {} with HTTP {}, not an SSE stream",
                self.uri.path(),
                resp.status()
            ));
        }
        let mut conn = Connection {
            body: resp.into_body(),
            decoder: Decoder::default(),
            endpoint: self.uri.clone(),
            early: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, conn.body.frame()).await;
            let data = match frame {
                Err(_) => {
                    return Err(format!(
                        "the legacy upstream sent no endpoint event within {:?}",
                        self.timeout
                    ));
                }
                Ok(None) => {
                    return Err(
                        "the legacy upstream closed the stream before its endpoint event".into(),
                    );
                }
                Ok(Some(Err(e))) => return Err(format!("the legacy upstream's stream broke: {e}")),
                Ok(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            conn.decoder.push(data);
            let mut found = None;
            for item in conn.decoder.by_ref() {
                let SseItem::Event(ev) =
                    item.map_err(|e| format!("the legacy upstream's stream is malformed: {e}"))?
                else {
                    continue;
                };
                if found.is_none() {
                    if ev.event_type() == "endpoint" {
                        found = Some(ev.data);
                    }
                } else if ev.event_type() == "message" && !ev.data.is_empty() {
                    // Came with it: routed first.
                    conn.early.push(ev.data);
                }
            }
            if let Some(data) = found {
                conn.endpoint = self.endpoint(&data)?;
                return Ok(conn);
            }
        }
    }

    /// The POST URL named by an `endpoint` event: on the upstream's own
    /// origin (as the SDKs require).
    fn endpoint(&self, data: &[u8]) -> Result<Uri, String> {
        let text = std::str::from_utf8(data)
            .ok()
            .filter(|t| t.len() <= MAX_ENDPOINT_LEN && !t.is_empty())
            .ok_or("the legacy upstream's endpoint event is not a URL")?
            .trim();
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or("");
        let scheme = self.uri.scheme_str().unwrap_or("http");
        let full = if text.starts_with("http://") || text.starts_with("https://") {
            text.to_owned()
        } else if text.starts_with('/') {
            format!("{scheme}://{authority}{text}")
        } else {
            let path = self.uri.path();
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{scheme}://{authority}{dir}{text}")
        };
        let uri: Uri = full
            .parse()
            .map_err(|_| format!("the legacy upstream's endpoint {text:?} is not a URL"))?;
        if uri.authority().map(|a| a.as_str()) != Some(authority)
            || uri.scheme_str() != Some(scheme)
        {
            return Err(format!(
                "the legacy upstream's endpoint {text:?} is on another origin; refused"
            ));
        }
        Ok(uri)
    }

    /// POSTs one message to the endpoint; `Err` names why it was refused.
    async fn post(&self, endpoint: &Uri, msg: Bytes) -> Result<(), String> {
        let mut req = Request::new(Full::new(msg));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = endpoint.clone();
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(b) = &self.bearer {
            h.insert(header::AUTHORIZATION, b.clone());
        }
        let answer = tokio::time::timeout(self.timeout, async {
            let resp = self.pool.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Small (`Accepted`); read so the connection is reused.
            let _ = resp.into_body().collect().await;
            Ok::<_, String>(status)
        })
        .await;
        match answer {
            Ok(Ok(s)) if s.is_success() => Ok(()),
            Ok(Ok(s)) => Err(format!(
                "the legacy upstream refused the message (HTTP {s})"
            )),
            Ok(Err(e)) => Err(format!("the legacy upstream could not be reached: {e}")),
            Err(_) => Err(format!(
                "the legacy upstream did not accept the message within {:?}",
                self.timeout
            )),
        }
    }

    /// A new connection with the session's `initialize` and
    /// `notifications/initialized` replayed (the initialize's answer is
    /// kept here), under the reconnect policy.
    async fn reestablish(
        &self,
        cs: &ChildSession,
        init: Option<&Bytes>,
        initialized: Option<&Bytes>,
    ) -> Result<Connection, String> {
        let mut last = String::new();
        let mut delay = self.reconnect.base;
        for attempt in 0..self.reconnect.max_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.reconnect.cap);
            }
            match self.replay_init(cs, init, initialized).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn replay_init(
        &self,
        cs: &ChildSession,
        init: Option<&Bytes>,
        initialized: Option<&Bytes>,
    ) -> Result<Connection, String> {
        let mut conn = self.open().await?;
        for m in std::mem::take(&mut conn.early) {
            cs.route(m).await;
        }
        if let Some(init) = init {
            let id = serde_json::from_slice::<Value>(init)
                .ok()
                .and_then(|v| v.get("id").cloned());
            self.post(&conn.endpoint, init.clone()).await?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            'answer: loop {
                let read = tokio::time::timeout_at(deadline, conn.read())
                    .await
                    .map_err(|_| format!("the legacy upstream did not answer the replayed initialize within {:?}", self.timeout))?;
                match read {
                    Read::Ended(cause) => return Err(cause),
                    Read::Messages(msgs) => {
                        let mut answered = false;
                        for m in msgs {
                            let v = serde_json::from_slice::<Value>(&m).ok();
                            let is_answer = v.as_ref().is_some_and(|v| {
                                v.get("method").is_none() && v.get("id") == id.as_ref()
                            });
                            if !is_answer {
                                cs.route(m).await;
                            } else if v.as_ref().is_some_and(|v| v.get("error").is_some()) {
                                return Err(
                                    "the legacy upstream refused the replayed initialize".into()
                                );
                            } else {
                                answered = true;
                            }
                        }
                        if answered {
                            break 'answer;
                        }
                    }
                }
            }
        }
        if let Some(n) = initialized {
            self.post(&conn.endpoint, n.clone()).await?;
        }
        Ok(conn)
    }
}

impl Connection {
    /// The next messages on the connection, or why it ended.
    async fn read(&mut self) -> Read {
        loop {
            let data = match self.body.frame().await {
                None => return Read::Ended("the legacy upstream closed its SSE stream".into()),
                Some(Err(e)) => {
                    return Read::Ended(format!("the legacy upstream's SSE stream broke ({e})"));
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            self.decoder.push(data);
            let mut out = Vec::new();
            for item in self.decoder.by_ref() {
                match item {
                    Ok(SseItem::Event(ev))
                        if ev.event_type() == "message" && !ev.data.is_empty() =>
                    {
                        out.push(ev.data);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Read::Ended(format!(
                            "the legacy upstream's SSE stream is malformed ({e})"
                        ));
                    }
                }
            }
            if !out.is_empty() {
                return Read::Messages(out);
            }
        }
    }
}

/// Drives one session's legacy upstream until it is stopped (`None`) or
/// lost for good (`Some(cause)`). The SSE connection is read while a POST
/// is waited for, so a server that answers POSTs only once its stream is
/// read never deadlocks with the proxy.
pub(crate) async fn run(
    cs: Arc<ChildSession>,
    link: Arc<LegacyLink>,
    mut conn: Connection,
    mut rx: mpsc::Receiver<Bytes>,
) -> Option<String> {
    let mut init: Option<Bytes> = None;
    let mut initialized: Option<Bytes> = None;
    for m in std::mem::take(&mut conn.early) {
        cs.route(m).await;
    }
    loop {
        let dropped = tokio::select! {
            biased;
            () = cs.stop.notified() => return None,
            read = conn.read() => match read {
                Read::Messages(msgs) => {
                    for m in msgs {
                        cs.route(m).await;
                    }
                    None
                }
                Read::Ended(cause) => Some(cause),
            },
            msg = rx.recv() => {
                // Every sender gone: the session is over.
                let msg = msg?;
                remember(&msg, &mut init, &mut initialized);
                let endpoint = conn.endpoint.clone();
                let post = link.post(&endpoint, msg.clone());
                tokio::pin!(post);
                let mut dropped = None;
                let posted = loop {
                    tokio::select! {
                        biased;
                        posted = &mut post => break posted,
                        read = conn.read(), if dropped.is_none() => match read {
                            Read::Messages(msgs) => {
                                for m in msgs {
                                    cs.route(m).await;
                                }
                            }
                            Read::Ended(cause) => dropped = Some(cause),
                        },
                    }
                };
                if let Err(e) = posted {
                    metrics::counter!("shadowcat_upstream_errors_total", "kind" => "legacy_post").increment(1);
                    tracing::warn!(session_fp = %cs.id.fingerprint(), error = %e, "legacy upstream refused a message");
                    if let Some(answer) = refusal(&msg, &e) {
                        cs.route(answer).await;
                    }
                }
                dropped
            }
        };
        let Some(cause) = dropped else {
            continue;
        };
        metrics::counter!("shadowcat_legacy_upstream_drops_total").increment(1);
        let failed = cs.fail_in_flight(&format!(
            "{cause}; the legacy (2024-11-05) transport cannot resume, so this request's answer is lost; retry it"
        ));
        tracing::warn!(session_fp = %cs.id.fingerprint(), %cause, failed, "legacy upstream connection lost; re-establishing the session");
        match link
            .reestablish(&cs, init.as_ref(), initialized.as_ref())
            .await
        {
            Ok(c) => {
                metrics::counter!("shadowcat_legacy_upstream_reestablished_total").increment(1);
                tracing::info!(session_fp = %cs.id.fingerprint(), "legacy upstream session re-established");
                conn = c;
            }
            Err(e) => return Some(format!("{cause}; re-establishing the session failed: {e}")),
        }
    }
}

/// Keeps the session's `initialize` and `notifications/initialized` for a
/// re-establishment.
fn remember(msg: &Bytes, init: &mut Option<Bytes>, initialized: &mut Option<Bytes>) {
    if init.is_some() && initialized.is_some() {
        return;
    }
    let Ok(v) = serde_json::from_slice::<Value>(msg) else {
        return;
    };
    match v.get("method").and_then(Value::as_str) {
        Some("initialize") => *init = Some(msg.clone()),
        Some("notifications/initialized") => *initialized = Some(msg.clone()),
        _ => {}
    }
}

/// A refused request's JSON-RPC error (none for other messages).
fn refusal(msg: &Bytes, why: &str) -> Option<Bytes> {
    let v = serde_json::from_slice::<Value>(msg).ok()?;
    v.get("method")?;
    let id = v.get("id")?;
    Some(crate::mcp::jsonrpc::error_body(
        Some(id),
        crate::mcp::jsonrpc::INTERNAL_ERROR,
        why,
    ))
}

/// Does the upstream URL serve a legacy SSE stream (an `endpoint` event
/// first)? Bounded by `probe_timeout`.
pub(crate) async fn probe(link: &LegacyLink) -> Result<(), String> {
    match tokio::time::timeout(link.probe_timeout, link.open()).await {
        Ok(opened) => opened.map(drop),
        Err(_) => Err(format!(
            "no legacy stream within {:?} (upstream_connect_timeout)",
            link.probe_timeout
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(uri: &str) -> LegacyLink {
        let uri: Uri = uri.parse().unwrap();
        LegacyLink {
            pool: UpstreamPool::new(&uri, Duration::from_secs(1), 8192),
            uri,
            bearer: None,
            timeout: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            reconnect: ReconnectConfig::default(),
        }
    }

    #[tokio::test]
    async fn endpoints_resolve_on_the_upstream_origin_only() {
        let l = link("http://127.0.0.1:9/sse");
        assert_eq!(
            l.endpoint(b"/messages?sessionId=a").unwrap().to_string(),
            "http://127.0.0.1:9/messages?sessionId=a"
        );
        assert_eq!(
            l.endpoint(b"messages?x=1").unwrap().to_string(),
            "http://127.0.0.1:9/messages?x=1"
        );
        assert!(l.endpoint(b"http://127.0.0.1:9/m").is_ok());
        assert!(l.endpoint(b"http://evil.example/m").is_err());
        assert!(l.endpoint(b"").is_err());
    }

    #[test]
    fn refused_requests_get_an_error_with_their_id() {
        let e = refusal(
            &Bytes::from_static(br#"{"jsonrpc":"2.0","id":7,"method":"x"}"#),
            "no",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["id"], 7);
        assert!(
            refusal(
                &Bytes::from_static(br#"{"jsonrpc":"2.0","method":"n"}"#),
                "no"
            )
            .is_none()
        );
    }
}
