//! DELETE: ends the session upstream and here.

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::rejection::Rejection;
use super::{Shared, no_content, stateless_no};
use crate::mcp::protocol::ProtocolVersion;

impl Shared {
    pub(super) async fn delete(
        &self,
        req: Request<Incoming>,
        version: Option<ProtocolVersion>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if version.is_some_and(ProtocolVersion::is_stateless) {
            return Err(stateless_no(&Method::DELETE));
        }
        let headers = req.headers();
        let session = self.require_session(headers).await?;
        // The session ends here whatever the upstream says: keeping it would
        // leak it.
        self.forget(&session).await;
        metrics::counter!("shadowcat_sessions_deleted_total").increment(1);
        if let Some(bridge) = self.bridge() {
            bridge.stop(&session.id);
        }
        if session.upstream_id.is_none() {
            return Ok(no_content());
        }
        let up = self.upstream_request(Method::DELETE, headers, Some(&session), Bytes::new());
        let answer = match self.send(up).await {
            Ok(resp) => self.relay(resp, None, None, "delete").await,
            Err(rej) => Err(rej),
        };
        match answer {
            Ok(resp) => Ok(resp),
            Err(rej) => {
                tracing::warn!(session_fp = %session.id.fingerprint(), status = %rej.status, "upstream DELETE failed; the proxy session is removed anyway");
                Ok(no_content())
            }
        }
    }
}
