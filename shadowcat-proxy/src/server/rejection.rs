//! [`Rejection`]: what a client is told when its request is refused.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde_json::Value;

use crate::mcp::jsonrpc;
use crate::server::body::ProxyBody;

/// A refused request: the status the spec names and a JSON-RPC error body
/// a person can act on.
#[derive(Debug, Clone)]
pub(super) struct Rejection {
    /// The HTTP status.
    pub status: StatusCode,
    /// The JSON-RPC error code.
    pub code: i64,
    /// What went wrong and what to do about it.
    pub message: Cow<'static, str>,
    /// The JSON-RPC id of the request, when known.
    pub id: Option<Value>,
    /// An `Allow` header (for 405).
    pub allow: Option<&'static str>,
    /// Close the connection after the answer (`Connection: close`).
    pub close: bool,
    /// More headers (e.g. an upstream's `Allow` or `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rejection {
    /// A rejection with `status`, JSON-RPC `code` and `message`.
    pub(super) fn new(
        status: StatusCode,
        code: i64,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            status,
            code,
            message: message.into(),
            id: None,
            allow: None,
            close: false,
            headers: Vec::new(),
        }
    }

    /// 400 with JSON-RPC "invalid request".
    pub(super) fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, jsonrpc::INVALID_REQUEST, message)
    }

    /// Adds `Retry-After: secs` (at least 1).
    pub(super) fn with_retry_after(mut self, secs: u64) -> Self {
        self.headers
            .push((header::RETRY_AFTER, HeaderValue::from(secs.max(1))));
        self
    }

    /// Sets the JSON-RPC id echoed in the error.
    pub(super) fn with_id(mut self, id: Option<Value>) -> Self {
        self.id = id;
        self
    }

    /// The HTTP response for this rejection.
    pub(super) fn into_response(self) -> Response<ProxyBody> {
        let body = jsonrpc::error_body(self.id.as_ref(), self.code, &self.message);
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.close {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        for (name, v) in self.headers {
            h.append(name, v);
        }
        resp
    }
}
