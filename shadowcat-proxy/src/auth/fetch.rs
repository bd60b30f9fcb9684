//! The one way the auth layer talks to an authorization server (and, in
//! passthrough, fetches the upstream's metadata): one request, a JSON
//! answer read whole within `fetch_timeout` and `max_fetch_bytes`, over
//! the same pooled client as the upstream (one small pool per origin).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::time::Instant;

use crate::collect::{ReadError, ReadLimits, read_whole};
use crate::upstream::http::UpstreamPool;

/// Idle connections kept per authorization-server origin.
const IDLE_PER_ORIGIN: usize = 4;
/// Origins the fetcher keeps pools for (issuer, keys, token, upstream).
const MAX_ORIGINS: usize = 16;

/// Why a fetch failed; the text names the URL and never a credential.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {reason}")]
pub(crate) struct FetchError {
    pub(crate) url: String,
    pub(crate) reason: String,
    /// The HTTP status, when there was an answer.
    pub(crate) status: Option<StatusCode>,
}

/// An HTTP client for small JSON documents.
#[derive(Debug)]
pub(crate) struct Fetcher {
    pools: Mutex<HashMap<String, Arc<UpstreamPool>>>,
    timeout: Duration,
    max_bytes: usize,
}

impl Fetcher {
    pub(crate) fn new(timeout: Duration, max_bytes: usize) -> Self {
        Fetcher {
            pools: Mutex::new(HashMap::new()),
            timeout,
            max_bytes,
        }
    }

    /// GETs `url`; a 2xx JSON answer.
    pub(crate) async fn get_json(&self, url: &Uri) -> Result<Value, FetchError> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = url.clone();
        req.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            return Err(self.fail(url, format!("answered HTTP {status}"), Some(status)));
        }
        parse(url, status, &body)
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`) to `url`, with
    /// HTTP Basic client credentials when given; the status and the JSON
    /// answer (OAuth endpoints answer errors in JSON too).
    pub(crate) async fn post_form(
        &self,
        url: &Uri,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> Result<(StatusCode, Value), FetchError> {
        let mut req = Request::new(Full::new(Bytes::from(form_encode(form))));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = url.clone();
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some((id, secret)) = basic {
            // RFC 6749 §2.3.1: both parts form-encoded first.
            let pair = format!("{}:{}", form_escape(id), form_escape(secret));
            let mut v =
                HeaderValue::from_str(&format!("Basic {}", super::b64::encode(pair.as_bytes())))
                    .map_err(|_| {
                        self.fail(
                            url,
                            "the client credentials are not a valid header".into(),
                            None,
                        )
                    })?;
            v.set_sensitive(true);
            h.insert(header::AUTHORIZATION, v);
        }
        let (status, body) = self.send(req).await?;
        Ok((status, parse(url, status, &body)?))
    }

    fn fail(&self, url: &Uri, reason: String, status: Option<StatusCode>) -> FetchError {
        FetchError {
            url: url.to_string(),
            reason,
            status,
        }
    }

    fn pool(&self, url: &Uri) -> Result<Arc<UpstreamPool>, FetchError> {
        crate::upstream::http::check_upstream(url)
            .map_err(|e| self.fail(url, e.to_string(), None))?;
        let origin = format!(
            "{}://{}",
            url.scheme_str().unwrap_or("http"),
            url.authority().map_or("", |a| a.as_str())
        );
        let mut pools = self.pools.lock();
        if let Some(p) = pools.get(&origin) {
            return Ok(Arc::clone(p));
        }
        if pools.len() >= MAX_ORIGINS {
            pools.clear();
        }
        // An https authorization server is checked against the system's
        // roots.
        let tls = crate::tls::UpstreamTls::for_uri(url, &crate::tls::UpstreamTlsConfig::default())
            .map_err(|e| self.fail(url, e.to_string(), None))?;
        let pool = UpstreamPool::with_max_idle(url, self.timeout, 64 << 10, IDLE_PER_ORIGIN, tls);
        pools.insert(origin, Arc::clone(&pool));
        Ok(pool)
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), FetchError> {
        let url = req.uri().clone();
        let pool = self.pool(&url)?;
        let deadline = Instant::now() + self.timeout;
        let resp = match tokio::time::timeout_at(deadline, pool.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.fail(&url, e.to_string(), None)),
            Err(_) => {
                return Err(self.fail(
                    &url,
                    format!("no answer within {:?} (fetch_timeout)", self.timeout),
                    None,
                ));
            }
        };
        let status = resp.status();
        let limits = ReadLimits {
            budget: None,
            max: self.max_bytes,
            deadline,
            idle: self.timeout,
        };
        match read_whole(resp.into_body(), limits).await {
            Ok(b) => Ok((status, b)),
            Err(ReadError::TooLarge(max)) => Err(self.fail(
                &url,
                format!("the answer is larger than {max} bytes (max_fetch_bytes)"),
                Some(status),
            )),
            Err(ReadError::Deadline | ReadError::Idle(_)) => Err(self.fail(
                &url,
                format!(
                    "the answer did not arrive within {:?} (fetch_timeout)",
                    self.timeout
                ),
                Some(status),
            )),
            Err(ReadError::Body(e)) => {
                Err(self.fail(&url, format!("the answer was cut: {e}"), Some(status)))
            }
        }
    }
}

fn parse(url: &Uri, status: StatusCode, body: &[u8]) -> Result<Value, FetchError> {
    serde_json::from_slice(body).map_err(|e| FetchError {
        url: url.to_string(),
        reason: format!("the answer (HTTP {status}) is not JSON: {e}"),
        status: Some(status),
    })
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&form_escape(k));
        out.push('=');
        out.push_str(&form_escape(v));
    }
    out
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_encoding() {
        assert_eq!(
            super::form_encode(&[("grant_type", "client_credentials"), ("scope", "a b/c:d")]),
            "grant_type=client_credentials&scope=a+b%2Fc%3Ad"
        );
    }
}
