//! The server's side of `[auth]` (the checks themselves are in
//! `crate::auth`): the protected-resource metadata paths, the bearer
//! check before any handler, the scope map, the session binding, what
//! goes upstream as `Authorization`, and relaying a passthrough
//! upstream's 401/403.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::Shared;
use super::body::ProxyBody;
use super::rejection::Rejection;
use crate::auth::{self, Auth, Caller, Denied, Reason, Refusal};
use crate::mcp::jsonrpc::{self, Body as RpcBody};
use crate::mcp::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::session::SessionEntry;
use crate::upstream::http::UpstreamBody;

fn rejection(r: Refusal) -> Rejection {
    let code = if r.status == StatusCode::SERVICE_UNAVAILABLE {
        jsonrpc::INTERNAL_ERROR
    } else {
        jsonrpc::SERVER_ERROR
    };
    let mut rej = Rejection::new(r.status, code, r.message);
    if let Some(c) = r.challenge {
        rej.headers.push((header::WWW_AUTHENTICATE, c));
    }
    rej
}

impl Shared {
    /// GET on a protected-resource metadata path.
    pub(super) async fn resource_metadata(
        &self,
        auth: &Auth,
        req: &Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if req.method() != Method::GET {
            let mut rej = Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                jsonrpc::METHOD_NOT_FOUND,
                "protected-resource metadata is read with GET",
            );
            rej.allow = Some("GET");
            return Err(rej);
        }
        let doc = auth.metadata().await.map_err(rejection)?;
        let mut out = Response::new(ProxyBody::full(doc));
        let h = out.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Public information, read by browser-based clients too.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        Ok(out)
    }

    /// Who sends the request: in `oauth` its token is checked here (401 or
    /// 403 before any handler); in passthrough its `Authorization` is
    /// taken along for the upstream.
    pub(super) async fn caller(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<Caller>>, Rejection> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        if auth.is_passthrough() {
            return Ok(Some(Arc::new(Caller::passthrough(
                headers.get(header::AUTHORIZATION).cloned(),
            ))));
        }
        match auth.authenticate(headers).await {
            Ok(c) => Ok(Some(Arc::new(c))),
            Err(d) => Err(rejection(auth.refuse(&d, headers))),
        }
    }

    /// The scope map, for every message of a POST (`oauth`).
    pub(super) fn check_calls(&self, msg: &RpcBody, headers: &HeaderMap) -> Result<(), Rejection> {
        let (Some(auth), Some(caller)) = (&self.auth, auth::caller()) else {
            return Ok(());
        };
        if !auth.is_oauth() {
            return Ok(());
        }
        for m in msg.messages() {
            let tool = if m.method.as_deref() == Some("tools/call") {
                m.name.as_deref()
            } else {
                None
            };
            if let Err(d) = auth.check_call(&caller, m.method.as_deref(), tool) {
                return Err(rejection(auth.refuse(&d, headers)));
            }
        }
        Ok(())
    }

    /// What goes upstream as `Authorization` for this request: the
    /// caller's (passthrough, token exchange), else the proxy's own.
    pub(super) fn upstream_authorization(&self) -> Option<HeaderValue> {
        auth::caller()
            .and_then(|c| c.upstream.clone())
            .or_else(|| self.bearer.current())
    }

    /// What a new session of this request is bound to.
    pub(super) fn new_binding(
        &self,
        key: &shadowcat_session::ResumeKey,
        headers: &HeaderMap,
    ) -> Option<String> {
        self.auth.as_ref()?.binding_for(key, headers)
    }

    /// Checks that `session` belongs to this request's caller. In `oauth`
    /// another principal gets 403. In passthrough another credential (a
    /// refreshed token, or a stolen session id) first has to be accepted
    /// by the upstream on this session: a `ping` with it; on 2xx the
    /// session is bound to it, else the upstream's refusal is relayed.
    pub(super) async fn check_binding(
        &self,
        session: &SessionEntry,
        headers: &HeaderMap,
    ) -> Result<(), Rejection> {
        let Some(auth) = &self.auth else {
            return Ok(());
        };
        let Some(expected) = auth.binding_for(&session.key, headers) else {
            return Ok(());
        };
        if session.binding().as_deref() == Some(expected.as_str()) {
            return Ok(());
        }
        if auth.is_oauth() {
            let d = Denied::invalid(
                Reason::Binding,
                "this session belongs to another user; initialize a new session (without Mcp-Session-Id)",
            );
            return Err(rejection(auth.refuse(&d, headers)));
        }
        let resp = self.send(self.ping(session)).await?;
        let status = resp.status();
        drop(resp);
        if status == StatusCode::NOT_FOUND && session.upstream_id.is_some() {
            tracing::info!(session_fp = %session.id.fingerprint(), "upstream no longer knows the session; removing it");
            self.forget(session).await;
            return Err(Rejection::new(
                StatusCode::NOT_FOUND,
                jsonrpc::SERVER_ERROR,
                "the session expired upstream; initialize a new one (without Mcp-Session-Id)",
            ));
        }
        if !status.is_success() {
            let d = Denied::invalid(
                Reason::Binding,
                format!(
                    "the upstream did not accept this credential on the session (HTTP {status}); initialize a new session"
                ),
            );
            return Err(rejection(auth.refuse(&d, headers)));
        }
        if let Err(e) = self.sessions.rebind(session, expected).await {
            metrics::counter!("shadowcat_store_errors_total", "op" => "rebind").increment(1);
            tracing::warn!(session_fp = %session.id.fingerprint(), error = %e, "could not store the session's new credential binding");
            return Err(super::unavailable(&e));
        }
        metrics::counter!("shadowcat_auth_rebinds_total").increment(1);
        tracing::info!(session_fp = %session.id.fingerprint(), "the upstream accepted a new credential; session rebound");
        Ok(())
    }

    /// A `ping` on `session` with the caller's credential.
    fn ping(&self, session: &SessionEntry) -> Request<Full<Bytes>> {
        let body = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":"shadowcat-credential-check","method":"ping"}"#,
        );
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.config.upstream.clone();
        let h = req.headers_mut();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(session.version.as_str()) {
            h.insert(MCP_PROTOCOL_VERSION, v);
        }
        if let Some(uid) = &session.upstream_id {
            h.insert(MCP_SESSION_ID, uid.clone());
        }
        if let Some(v) = self.upstream_authorization() {
            h.insert(header::AUTHORIZATION, v);
        }
        req
    }

    /// A passthrough upstream's 401/403, relayed with its challenge
    /// pointing at the proxy's metadata.
    pub(super) fn upstream_refused(&self, auth: &Auth, resp: Response<UpstreamBody>) -> Rejection {
        let status = resp.status();
        metrics::counter!("shadowcat_auth_failures_total", "reason" => Reason::Upstream.label())
            .increment(1);
        tracing::info!(%status, "the upstream refused the client's credential; relaying its challenge");
        let mut rej = Rejection::new(
            status,
            jsonrpc::SERVER_ERROR,
            format!(
                "the upstream MCP server refused the credential (HTTP {status}); authorize with the authorization server named in {}",
                auth.metadata_url()
            ),
        );
        for c in resp.headers().get_all(header::WWW_AUTHENTICATE) {
            rej.headers.push((
                header::WWW_AUTHENTICATE,
                auth::passthrough::rewrite_challenge(c, auth.metadata_url()),
            ));
        }
        rej
    }
}
