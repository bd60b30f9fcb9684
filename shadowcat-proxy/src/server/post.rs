//! POST: a client message, answered with JSON or a resumable SSE stream;
//! `initialize` creates the session; the stateless revision passes through.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use std::net::IpAddr;
use std::sync::Arc;

use super::access;
use super::body::ProxyBody;
use super::listen;
use super::ratelimit::{ClientAddr, retry_secs};
use super::rejection::Rejection;
use super::{Shared, accepts, unavailable};
use crate::mcp::jsonrpc::{self, Body as RpcBody};
use crate::mcp::protocol::ProtocolVersion;
use crate::mcp::{MCP_METHOD, MCP_SESSION_ID, is_sse, media_type_is};
use crate::session::{CreateError, FULL_MEMO};
use crate::stream::StreamKind;
use crate::stream::StreamSlot;

impl Shared {
    pub(super) async fn post(
        &self,
        req: Request<Incoming>,
        version: Option<ProtocolVersion>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let (parts, body) = req.into_parts();
        let client = parts.extensions.get::<ClientAddr>().map(|c| c.0.ip());
        if !media_type_is(&parts.headers, &header::CONTENT_TYPE, "application/json") {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                jsonrpc::INVALID_REQUEST,
                "Content-Type must be application/json",
            ));
        }
        if !(accepts(&parts.headers, "application/json")
            && accepts(&parts.headers, "text/event-stream"))
        {
            return Err(Rejection::new(
                StatusCode::NOT_ACCEPTABLE,
                jsonrpc::INVALID_REQUEST,
                "Accept must list both application/json and text/event-stream",
            ));
        }
        let bytes = self.read_body(body).await?;
        let msg = jsonrpc::parse_body(&bytes)
            .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
        if let Some(first) = msg.messages().first() {
            access::note(|n| {
                n.mcp_method.clone_from(&first.method);
                if first.method.as_deref() == Some("tools/call") {
                    n.tool.clone_from(&first.name);
                }
            });
        }
        let rpc_id = match &msg {
            RpcBody::Single(m) => m.id.clone(),
            RpcBody::Batch(_) => None,
        };
        self.check_calls(&msg, &parts.headers)
            .map_err(|r| r.with_id(rpc_id.clone()))?;
        let stateless = version.is_some_and(ProtocolVersion::is_stateless)
            || msg
                .messages()
                .iter()
                .any(|m| m.meta_version.as_deref() == Some(ProtocolVersion::V2026_07_28.as_str()));
        if stateless && self.bridge().is_some() {
            return Err(Rejection::bad_request(
                "protocol 2026-07-28 (stateless) is not served through a stdio or legacy HTTP+SSE server, which keeps per-session state; use protocol 2025-11-25 or earlier",
            )
            .with_id(rpc_id));
        }
        if stateless {
            return self
                .abortable(self.post_stateless(&parts.headers, bytes, &msg, version))
                .await
                .map_err(|r| r.with_id(rpc_id));
        }
        self.abortable(self.post_stateful(&parts.headers, bytes, &msg, version, client))
            .await
            .map_err(|r| r.with_id(rpc_id))
    }

    pub(super) async fn post_stateful(
        &self,
        headers: &HeaderMap,
        bytes: Bytes,
        msg: &RpcBody,
        version: Option<ProtocolVersion>,
        client: Option<IpAddr>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let is_init = msg.is_initialize();
        if msg
            .messages()
            .iter()
            .any(|m| m.method.as_deref() == Some("initialize"))
            && !is_init
        {
            return Err(Rejection::bad_request(
                "initialize must be sent alone, as a request, not in a batch",
            ));
        }
        if is_init && let Some(ip) = client {
            self.check_create_rate(ip)?;
        }
        let session = if is_init {
            None
        } else {
            Some(self.require_session(headers).await?)
        };
        let effective = version
            .or_else(|| session.as_ref().map(|s| s.version))
            .or_else(|| {
                msg.messages()[0]
                    .requested_version
                    .as_deref()
                    .and_then(ProtocolVersion::parse)
                    .filter(|_| is_init)
            })
            .unwrap_or(ProtocolVersion::ASSUMED);
        if matches!(msg, RpcBody::Batch(_)) && !effective.allows_batch() {
            return Err(Rejection::bad_request(format!(
                "JSON-RPC batch arrays are allowed only in protocol 2025-03-26; this request speaks {effective}; send one message per POST"
            )));
        }
        if let Some(bridge) = self.bridge() {
            return self
                .stdio_post(bridge, bytes, msg, session, effective)
                .await;
        }
        if is_init {
            return self.initialize(headers, bytes, effective).await;
        }
        let session = session.expect("non-initialize requests have a session");
        let slot = if msg.has_request() {
            Some(self.stream_slot(&session)?)
        } else {
            None
        };
        let up = self.upstream_request(Method::POST, headers, Some(&session), bytes);
        let resp = self.send(up).await?;
        let kind = StreamKind::Request(match msg {
            RpcBody::Single(m) => m.id.clone(),
            RpcBody::Batch(_) => None,
        });
        self.after_upstream(resp, &session, slot, kind, "post")
            .await
    }

    pub(super) async fn initialize(
        &self,
        headers: &HeaderMap,
        bytes: Bytes,
        version: ProtocolVersion,
    ) -> Result<Response<ProxyBody>, Rejection> {
        self.check_session_room()?;
        let init_id = match jsonrpc::parse_body(&bytes) {
            Ok(RpcBody::Single(m)) => m.id,
            _ => None,
        };
        let up = self.upstream_request(Method::POST, headers, None, bytes.clone());
        let resp = self.send(up).await?;
        if !resp.status().is_success() {
            if matches!(resp.status().as_u16(), 400 | 404 | 405)
                && let Some(bridge) = self.legacy_probe(resp.status()).await
            {
                drop(resp);
                let msg = jsonrpc::parse_body(&bytes).map_err(|e| {
                    Rejection::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
                })?;
                return self.stdio_post(&bridge, bytes, &msg, None, version).await;
            }
            return self.relay(resp, None, None, "initialize").await;
        }

        let upstream_id = match resp.headers().get(&MCP_SESSION_ID) {
            None => None,
            Some(v) if shadowcat_session::SessionId::parse(v.to_str().unwrap_or("")).is_ok() => {
                // A copy: a clone would keep the whole upstream read buffer
                // it was parsed from alive for the session's life.
                Some(http::HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone()))
            }
            Some(_) => {
                metrics::counter!("shadowcat_upstream_errors_total", "kind" => "session_id")
                    .increment(1);
                tracing::warn!("upstream sent a malformed Mcp-Session-Id");
                return Err(Rejection::new(
                    StatusCode::BAD_GATEWAY,
                    jsonrpc::INTERNAL_ERROR,
                    "the upstream MCP server sent an invalid Mcp-Session-Id",
                ));
            }
        };
        // A JSON answer is read (and checked) before the session exists.
        let answer = if is_sse(resp.headers()) {
            Err(resp)
        } else {
            Ok(self.read_answer(resp).await?)
        };
        let max = self.live().limits.max_sessions;
        let session = match self
            .sessions
            .create_bound(upstream_id.clone(), version, max, |key| {
                self.new_binding(key, headers)
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // The upstream made a session the proxy will not keep:
                // end it there.
                if let Some(up) = upstream_id {
                    self.ender.end_refused(up, version.as_str());
                }
                return Err(self.create_failed(&e));
            }
        };
        metrics::counter!("shadowcat_sessions_created_total").increment(1);
        tracing::debug!(session_fp = %session.id.fingerprint(), %version, "session created");
        access::note(|n| n.session_fp = Some(session.id.fingerprint().to_string()));
        let resp = match answer {
            Ok(mut out) => {
                if let Ok(v) = HeaderValue::from_str(session.id.as_str()) {
                    out.headers_mut().insert(MCP_SESSION_ID, v);
                }
                return Ok(out);
            }
            Err(resp) => resp,
        };
        let slot = StreamSlot::acquire(
            &session.open_streams,
            self.live().limits.max_streams_per_session,
        );
        self.relay(
            resp,
            Some((&session, StreamKind::Request(init_id))),
            slot,
            "initialize",
        )
        .await
    }

    pub(super) async fn post_stateless(
        &self,
        headers: &HeaderMap,
        bytes: Bytes,
        msg: &RpcBody,
        version: Option<ProtocolVersion>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let mismatch =
            |m: String| Rejection::new(StatusCode::BAD_REQUEST, jsonrpc::HEADER_MISMATCH, m);
        let RpcBody::Single(m) = msg else {
            return Err(Rejection::bad_request(
                "protocol 2026-07-28 allows one message per POST, not a batch",
            ));
        };
        let v26 = ProtocolVersion::V2026_07_28.as_str();
        if version != Some(ProtocolVersion::V2026_07_28) {
            return Err(mismatch(format!(
                "the body's _meta says protocol {v26} but MCP-Protocol-Version is {}; send the same version in both",
                version.map_or("absent", ProtocolVersion::as_str)
            )));
        }
        if let Some(meta) = &m.meta_version
            && meta != v26
        {
            return Err(mismatch(format!(
                "MCP-Protocol-Version is {v26} but the body's _meta says {meta:?}; send the same version in both"
            )));
        }
        if let (Some(h), Some(method)) = (headers.get(&MCP_METHOD), &m.method)
            && h.as_bytes() != method.as_bytes()
        {
            return Err(mismatch(format!(
                "Mcp-Method is {:?} but the body's method is {method:?}",
                String::from_utf8_lossy(h.as_bytes())
            )));
        }
        let up = self.upstream_request(Method::POST, headers, None, bytes.clone());
        // A listen request's headers, to send it again if its stream drops.
        let listen_headers = (m.kind == jsonrpc::Kind::Request
            && m.method.as_deref() == Some(listen::LISTEN))
        .then(|| up.headers().clone());
        let resp = self.send(up).await?;
        // No session and no resumption: the stream is the request's. When
        // the client drops it, the upstream body is dropped with it, which
        // closes the upstream request: that is the cancellation.
        if let (Some(up_headers), Some(id)) = (listen_headers, &m.id)
            && is_sse(resp.headers())
            && let Some(listen) = listen::Listen::new(
                id.clone(),
                &bytes,
                up_headers,
                Arc::clone(&self.env),
                self.live().limits.max_response_bytes,
            )
        {
            let (parts, body) = resp.into_parts();
            return Ok(self.forward_sse(parts, body, None, "listen", Some(listen)));
        }
        self.relay(resp, None, None, "stateless").await
    }

    /// With `upstream_transport = auto`, after the Streamable HTTP
    /// initialize got `status`: does a `GET` of the upstream URL open a
    /// legacy HTTP+SSE stream? If so the upstream is legacy from now on.
    async fn legacy_probe(
        &self,
        status: StatusCode,
    ) -> Option<std::sync::Arc<crate::upstream::stdio::StdioBridge>> {
        let bridge = self.legacy_up.as_ref()?;
        let link = bridge.legacy_link()?;
        match crate::upstream::legacy::probe(link).await {
            Ok(()) => {
                if !self
                    .legacy_found
                    .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    metrics::counter!("shadowcat_legacy_upstream_detected_total").increment(1);
                    tracing::info!(upstream = %self.config.upstream, %status, "the upstream refused the Streamable HTTP initialize and serves legacy HTTP+SSE (2024-11-05); using that from now on");
                }
                Some(std::sync::Arc::clone(bridge))
            }
            Err(e) => {
                tracing::debug!(upstream = %self.config.upstream, %status, error = %e, "no legacy HTTP+SSE stream at the upstream either");
                None
            }
        }
    }

    /// 503 when a create found the store full within [`FULL_MEMO`]: the
    /// initialize goes neither upstream nor to the store. The exact bound
    /// is the store's, at create.
    pub(super) fn check_session_room(&self) -> Result<(), Rejection> {
        if self.sessions.recently_full() {
            metrics::counter!("shadowcat_sessions_refused_total", "limit" => "max_sessions")
                .increment(1);
            return Err(full(self.live().limits.max_sessions));
        }
        Ok(())
    }

    /// 429 when `ip` created `max_session_creates_per_minute` sessions in
    /// the last minute.
    fn check_create_rate(&self, ip: IpAddr) -> Result<(), Rejection> {
        let Some(limit) = &self.create_limit else {
            return Ok(());
        };
        let Err(limited) = limit.check(ip, tokio::time::Instant::now()) else {
            return Ok(());
        };
        metrics::counter!("shadowcat_session_create_limited_total").increment(1);
        let secs = retry_secs(limited.retry_after);
        let per_minute = limit.per_minute();
        if limited.first {
            tracing::warn!(client = %ip, per_minute, "a client reached the session creation limit; its initializes get 429 (logged once a minute per client)");
        }
        Err(Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            jsonrpc::SERVER_ERROR,
            format!(
                "this client created {per_minute} sessions in the last minute, the limit (max_session_creates_per_minute); reuse a session or retry in {secs} s"
            ),
        )
        .with_retry_after(secs))
    }

    /// The client's answer to a failed create, logged and counted.
    pub(super) fn create_failed(&self, e: &CreateError) -> Rejection {
        match e {
            CreateError::Full(max) => {
                metrics::counter!("shadowcat_sessions_refused_total", "limit" => "max_sessions")
                    .increment(1);
                tracing::warn!(
                    max_sessions = max,
                    "the store holds max_sessions sessions; initialize refused"
                );
                full(*max)
            }
            e => {
                metrics::counter!("shadowcat_store_errors_total", "op" => "create").increment(1);
                tracing::warn!(error = %e, "could not create a session");
                unavailable(e)
            }
        }
    }
}

/// 503 for `max_sessions` reached.
fn full(max: u64) -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        jsonrpc::SERVER_ERROR,
        format!(
            "the proxy holds {max} sessions, its limit (max_sessions); end unused sessions (DELETE) or raise max_sessions, then retry"
        ),
    )
    .with_retry_after(FULL_MEMO.as_secs())
}
