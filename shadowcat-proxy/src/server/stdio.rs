//! The handlers' stdio side: a session's child, its requests' streams and
//! its GET stream.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::Shared;
use super::body::ProxyBody;
use super::rejection::Rejection;
use crate::mcp::jsonrpc::{self, Body as RpcBody};
use crate::mcp::protocol::ProtocolVersion;
use crate::session::SessionEntry;
use crate::stream::{PumpSource, StreamKind};
use crate::upstream::stdio::{BridgeError, ChildSession, Sent, StdioBridge};

impl Shared {
    /// A POST when the upstream is a stdio program.
    pub(super) async fn stdio_post(
        &self,
        bridge: &Arc<StdioBridge>,
        bytes: Bytes,
        msg: &RpcBody,
        session: Option<Arc<SessionEntry>>,
        version: ProtocolVersion,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let RpcBody::Single(m) = msg else {
            return Err(Rejection::bad_request(
                "a stdio server is sent one message per POST; batches are not supported here",
            ));
        };
        let (session, child) = match session {
            Some(session) => {
                let child = self.stdio_child(bridge, &session).await?;
                (session, child)
            }
            None => {
                bridge.check_room().map_err(|e| bridge_rejection(&e))?;
                self.check_session_room()?;
                let max = self.live().limits.max_sessions;
                let session = match self
                    .sessions
                    .create_bound(None, version, max, |key| {
                        self.new_binding(key, &http::HeaderMap::new())
                    })
                    .await
                {
                    Ok(s) => s,
                    Err(e) => return Err(self.create_failed(&e)),
                };
                let child = match bridge.spawn(&session.id).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(session_fp = %session.id.fingerprint(), error = %e, "could not start the stdio server");
                        self.forget(&session).await;
                        return Err(bridge_rejection(&e));
                    }
                };
                metrics::counter!("shadowcat_sessions_created_total").increment(1);
                tracing::debug!(session_fp = %session.id.fingerprint(), %version, "stdio session created");
                super::access::note(|n| n.session_fp = Some(session.id.fingerprint().to_string()));
                (session, child)
            }
        };
        let slot = if msg.has_request() {
            Some(self.stream_slot(&session)?)
        } else {
            None
        };
        match child.send(bytes).await {
            Ok(Sent::Request(queue)) => {
                let kind = StreamKind::Request(m.id.clone());
                let body = self.open_stream(PumpSource::Queue(queue), &session, slot, kind, None);
                Ok(self.stream_response(body, &session, None))
            }
            Ok(Sent::Accepted) => {
                let mut r = Response::new(ProxyBody::empty());
                *r.status_mut() = StatusCode::ACCEPTED;
                Ok(r)
            }
            Err(e) => Err(bridge_rejection(&e)),
        }
    }

    /// The child of a stdio session; 404 when it no longer runs here (it
    /// ended, or the proxy restarted: the server's state is gone).
    pub(super) async fn stdio_child(
        &self,
        bridge: &StdioBridge,
        session: &SessionEntry,
    ) -> Result<Arc<ChildSession>, Rejection> {
        if let Some(child) = bridge.child(&session.id) {
            child.touch();
            return Ok(child);
        }
        self.forget(session).await;
        Err(Rejection::new(
            StatusCode::NOT_FOUND,
            jsonrpc::SERVER_ERROR,
            "the stdio server of this session is no longer running; initialize a new session (without Mcp-Session-Id)",
        ))
    }

    /// A GET without `Last-Event-ID` on a stdio session: the session's GET
    /// stream, from the first event no client was sent.
    pub(super) fn stdio_get(
        &self,
        session: &Arc<SessionEntry>,
        child: &ChildSession,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let mut current = child.get_stream.lock();
        if let Some(stream) = current.upgrade()
            && let Ok(body) = stream.attach_unsent()
        {
            return Ok(self.stream_response(body, session, None));
        }
        let slot = self.stream_slot(session)?;
        let body = self.open_stream(
            PumpSource::Queue(Arc::clone(&child.get_queue)),
            session,
            Some(slot),
            StreamKind::Get,
            None,
        );
        *current = Arc::downgrade(body.shared());
        drop(current);
        Ok(self.stream_response(body, session, None))
    }
}

fn bridge_rejection(e: &BridgeError) -> Rejection {
    let (status, code) = match e {
        BridgeError::Full(_) | BridgeError::Stopping => {
            (StatusCode::SERVICE_UNAVAILABLE, jsonrpc::SERVER_ERROR)
        }
        BridgeError::Spawn(_) => (StatusCode::BAD_GATEWAY, jsonrpc::INTERNAL_ERROR),
        BridgeError::Gone(_) => (StatusCode::NOT_FOUND, jsonrpc::SERVER_ERROR),
        BridgeError::DuplicateId(_) | BridgeError::BadId => {
            (StatusCode::BAD_REQUEST, jsonrpc::INVALID_REQUEST)
        }
    };
    Rejection::new(status, code, e.to_string())
}
