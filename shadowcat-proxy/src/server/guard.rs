//! Checks on a request's head before any handler runs: its size, its
//! `Host` (DNS-rebinding defence) and every `Origin`.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap};
use http::{Request, StatusCode};

use super::rejection::Rejection;
use crate::config::{OriginPolicy, ReverseProxyConfig};
use crate::mcp::jsonrpc;

/// The size of a request head as the limit counts it: the request line
/// (method, target, version, CRLF) plus, per header, name, value and 4
/// bytes (`: ` and CRLF), plus the blank line. Whitespace around header
/// values is not kept by the parser and not counted.
pub(super) fn head_bytes<B>(req: &Request<B>) -> usize {
    let target = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path().len(), |pq| pq.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len())
        + req.uri().scheme_str().map_or(0, |s| s.len() + 3);
    // "METHOD SP target SP HTTP/1.1 CRLF"
    let line = req.method().as_str().len() + 1 + target + 1 + 8 + 2;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    line + headers + 2
}

/// 431 when the head is over `max` bytes.
pub(super) fn check_head<B>(req: &Request<B>, max: usize) -> Result<(), Rejection> {
    let n = head_bytes(req);
    if n <= max {
        return Ok(());
    }
    metrics::counter!("shadowcat_requests_refused_total", "limit" => "max_header_bytes")
        .increment(1);
    let mut rej = Rejection::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        jsonrpc::INVALID_REQUEST,
        format!(
            "the request line and headers take {n} bytes, over the limit of {max} (max_header_bytes); send fewer or shorter headers"
        ),
    );
    rej.close = true;
    Err(rej)
}

/// Which `Host` values are accepted, if any check applies.
#[derive(Debug, Clone)]
pub(super) struct HostCheck {
    /// The bound IP address as it appears in a `Host` header.
    bound: String,
    /// Configured names, lowercase.
    extra: Vec<String>,
}

const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl HostCheck {
    /// The check for `config`: on when it listens on loopback or names
    /// allowed hosts; else `None`.
    pub(super) fn new(config: &ReverseProxyConfig, bound: SocketAddr) -> Option<Self> {
        if !bound.ip().is_loopback() && config.allowed_hosts.is_empty() {
            return None;
        }
        let bound = match bound.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Some(HostCheck {
            bound,
            extra: config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        })
    }

    /// True when `host` (a `Host` header value) names an allowed host,
    /// with any port or none.
    pub(super) fn allows(&self, host: &[u8]) -> bool {
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        let name = match host.rsplit_once(':') {
            // `[::1]:8080` or `name:8080`; a bare IPv6 literal has no port.
            Some((name, port))
                if !port.is_empty()
                    && port.len() <= 5
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!name.contains(':') || name.ends_with(']')) =>
            {
                name
            }
            _ => host,
        };
        LOOPBACK_NAMES
            .iter()
            .copied()
            .chain(std::iter::once(self.bound.as_str()))
            .chain(self.extra.iter().map(String::as_str))
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }

    /// 403 unless the request's one `Host` header is allowed. An HTTP/2
    /// request names its host in `:authority` (`authority`) instead; that
    /// is checked when there is no `Host`.
    pub(super) fn check(
        &self,
        headers: &HeaderMap,
        authority: Option<&str>,
    ) -> Result<(), Rejection> {
        let mut all = headers.get_all(header::HOST).iter();
        let refuse = |what: String| {
            metrics::counter!("shadowcat_requests_refused_total", "limit" => "allowed_hosts")
                .increment(1);
            Err(Rejection::new(
                StatusCode::FORBIDDEN,
                jsonrpc::SERVER_ERROR,
                format!(
                    "{what}; this proxy answers to localhost, 127.0.0.1, [::1]{} (start it with --allowed-host NAME for another name)",
                    self.extra
                        .iter()
                        .fold(String::new(), |acc, h| acc + ", " + h)
                ),
            ))
        };
        match (all.next(), all.next()) {
            (Some(host), None) if self.allows(host.as_bytes()) => Ok(()),
            (Some(host), None) => refuse(format!(
                "Host {:?} is not allowed",
                String::from_utf8_lossy(host.as_bytes())
            )),
            (None, _) => match authority {
                Some(a) if self.allows(a.as_bytes()) => Ok(()),
                Some(a) => refuse(format!("Host {a:?} is not allowed")),
                None => refuse("the request has no Host header".into()),
            },
            (Some(_), Some(_)) => refuse("the request has more than one Host header".into()),
        }
    }
}

/// 403 unless every `Origin` header is allowed.
pub(super) fn check_origins(policy: &OriginPolicy, headers: &HeaderMap) -> Result<(), Rejection> {
    for origin in headers.get_all(header::ORIGIN) {
        if !policy.allows(origin.as_bytes()) {
            metrics::counter!("shadowcat_requests_refused_total", "limit" => "allowed_origins")
                .increment(1);
            return Err(Rejection::new(
                StatusCode::FORBIDDEN,
                jsonrpc::SERVER_ERROR,
                format!(
                    "Origin {:?} is not allowed; start the proxy with --allowed-origin for it",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check(bind: &str, extra: &[&str]) -> Option<HostCheck> {
        let mut c = ReverseProxyConfig::new("http://127.0.0.1:1/mcp".parse().unwrap());
        c.allowed_hosts = extra.iter().map(|s| (*s).to_owned()).collect();
        HostCheck::new(&c, bind.parse().unwrap())
    }

    #[test]
    fn hosts_on_loopback() {
        let c = check("127.0.0.1:8080", &[]).expect("on for loopback");
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(c.allows(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "evil.com",
            "evil.com:8080",
            "localhost.evil.com",
            "127.0.0.1.nip.io:8080",
            "localhost:80x",
            "localhost:",
            "::1",
            "",
        ] {
            assert!(!c.allows(bad.as_bytes()), "{bad}");
        }
        let c = check("127.0.0.2:8080", &["mcp.example"]).unwrap();
        assert!(c.allows(b"127.0.0.2:8080"), "the bound address");
        assert!(c.allows(b"MCP.example:443"));
        let c = check("[::1]:8080", &[]).unwrap();
        assert!(c.allows(b"[::1]:8080"));
    }

    #[test]
    fn hosts_elsewhere_only_when_configured() {
        assert!(check("0.0.0.0:8080", &[]).is_none());
        let c = check("0.0.0.0:8080", &["mcp.example"]).unwrap();
        assert!(c.allows(b"mcp.example:8080"));
        assert!(!c.allows(b"other.example"));
    }

    #[test]
    fn host_header_count() {
        let c = check("127.0.0.1:8080", &[]).unwrap();
        let mut h = HeaderMap::new();
        assert!(c.check(&h, None).is_err(), "no Host");
        assert!(
            c.check(&h, Some("localhost:8080")).is_ok(),
            "HTTP/2 :authority"
        );
        assert!(c.check(&h, Some("evil.example")).is_err());
        h.append(header::HOST, HeaderValue::from_static("localhost"));
        assert!(c.check(&h, None).is_ok());
        h.append(header::HOST, HeaderValue::from_static("localhost"));
        assert!(c.check(&h, None).is_err(), "two Host headers");
    }

    #[test]
    fn every_origin_is_checked() {
        let p = OriginPolicy::Loopback;
        let mut h = HeaderMap::new();
        assert!(check_origins(&p, &h).is_ok());
        h.append(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:1"),
        );
        assert!(check_origins(&p, &h).is_ok());
        h.append(header::ORIGIN, HeaderValue::from_static("http://evil.com"));
        assert!(check_origins(&p, &h).is_err());
    }

    #[test]
    fn head_size() {
        let req = Request::builder()
            .uri("/mcp?a=1")
            .header("x-a", "12345")
            .body(())
            .unwrap();
        // "GET /mcp?a=1 HTTP/1.1\r\n" + "x-a: 12345\r\n" + "\r\n"
        assert_eq!(head_bytes(&req), 23 + 12 + 2);
        assert!(check_head(&req, 37).is_ok());
        assert_eq!(check_head(&req, 36).unwrap_err().status, 431);
    }
}
