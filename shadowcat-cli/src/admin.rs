//! The admin listener, on its own address so it is never exposed with the
//! proxy:
//! - `GET /healthz` (liveness) and `GET /readyz` (readiness: store,
//!   writer breaker, listener), both open to load balancers;
//! - `GET /metrics` (Prometheus text);
//! - the admin API (JSON; schema: `shadowcat_proxy::admin`):
//!   `GET /sessions?limit=&after=&min_idle_secs=&upstream=`,
//!   `GET /sessions/{id}`, `DELETE /sessions/{id}`, `GET /streams`.
//!
//! Everything but the health checks needs `Authorization: Bearer TOKEN`
//! when a token is configured; off loopback a token is required (the proxy
//! refuses to start without one). Denied requests are logged and counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use serde::Serialize;
use shadowcat_proxy::admin::{Admin, AdminError, SessionQuery};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::CliError;

/// How often histograms and summaries are rolled over.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// Accept errors are logged at most this often (all are counted).
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// Installs the Prometheus recorder as the global `metrics` recorder and
/// starts its upkeep task.
pub(crate) fn install_metrics() -> Result<(PrometheusHandle, JoinHandle<()>), CliError> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| CliError::Config(format!("cannot install the metrics recorder: {e}")))?;
    let h = handle.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            h.run_upkeep();
        }
    });
    Ok((handle, upkeep))
}

/// Binds the admin address.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, CliError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Admin { addr, source })
}

/// What the admin listener serves.
pub(crate) struct AdminState {
    pub(crate) metrics: PrometheusHandle,
    pub(crate) admin: Admin,
    /// The bearer token the API requires; replaced on reload.
    pub(crate) token: RwLock<Option<Arc<str>>>,
}

/// Serves the admin endpoints until the task is aborted.
pub(crate) fn serve(listener: TcpListener, state: Arc<AdminState>) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin listening (/healthz, /readyz, /metrics, /sessions, /streams)");
        }
        let mut last_logged: Option<tokio::time::Instant> = None;
        let mut unlogged = 0u64;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    metrics::counter!("shadowcat_accept_errors_total", "listener" => "admin")
                        .increment(1);
                    unlogged += 1;
                    if last_logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                        tracing::warn!(error = %e, errors = unlogged, "admin accept failed");
                        last_logged = Some(tokio::time::Instant::now());
                        unlogged = 0;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(respond(req, &state, peer).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
    })
}

/// Samples the tokio runtime into gauges just before a scrape, so the
/// number of live tasks is visible (it must not grow with the event rate).
fn runtime_gauges() {
    let rt = tokio::runtime::Handle::current().metrics();
    metrics::gauge!("shadowcat_tokio_tasks_alive").set(rt.num_alive_tasks() as f64);
    metrics::gauge!("shadowcat_tokio_workers").set(rt.num_workers() as f64);
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    resp
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            reply(status, "application/json", body)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the answer: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message });
    reply(status, "application/json", format!("{body}\n"))
}

/// Compares without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `None` when the request may go on; else the refusal.
fn check_token(
    req: &Request<Incoming>,
    state: &AdminState,
    peer: SocketAddr,
) -> Option<Response<Full<Bytes>>> {
    let token = state.token.read().clone()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let reason = match given {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => return None,
        Some(_) => "wrong_token",
        None => "no_token",
    };
    metrics::counter!("shadowcat_admin_denied_total", "reason" => reason).increment(1);
    tracing::warn!(%peer, method = %req.method(), path = req.uri().path(), reason, "admin request denied");
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "the admin API needs Authorization: Bearer <the --admin-token value>",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"shadowcat-admin\""),
    );
    Some(resp)
}

async fn respond(
    req: Request<Incoming>,
    state: &AdminState,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            let r = state.admin.readiness().await;
            let status = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            return json(status, &r);
        }
        _ => {}
    }
    if let Some(denied) = check_token(&req, state, peer) {
        return denied;
    }
    let query = req.uri().query().unwrap_or("");
    let result = match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            runtime_gauges();
            return reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            );
        }
        (&Method::GET, "/streams") => return json(StatusCode::OK, &state.admin.streams()),
        (&Method::GET, "/sessions") => match session_query(query) {
            Ok(q) => state
                .admin
                .sessions(&q)
                .await
                .map(|p| json(StatusCode::OK, &p)),
            Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
        },
        (method, p) if p.starts_with("/sessions/") => {
            let id = percent_decode(&p["/sessions/".len()..]);
            match *method {
                Method::GET => state.admin.session(&id).await.map(|s| match s {
                    Some(s) => json(StatusCode::OK, &s),
                    None => error(StatusCode::NOT_FOUND, "no such session"),
                }),
                Method::DELETE => {
                    let who = format!("admin API from {peer}");
                    state.admin.delete_session(&id, &who).await.map(|found| {
                        if found {
                            json(StatusCode::OK, &serde_json::json!({ "deleted": id }))
                        } else {
                            error(StatusCode::NOT_FOUND, "no such session")
                        }
                    })
                }
                _ => return error(StatusCode::METHOD_NOT_ALLOWED, "use GET or DELETE"),
            }
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz, /metrics, /sessions, /sessions/{id} or /streams",
            );
        }
    };
    match result {
        Ok(resp) => resp,
        Err(AdminError::BadRequest(msg)) => error(StatusCode::BAD_REQUEST, &msg),
        Err(e @ AdminError::Store(_)) => {
            tracing::warn!(error = %e, path, "admin request failed");
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

fn session_query(query: &str) -> Result<SessionQuery, String> {
    let mut q = SessionQuery {
        limit: 100,
        ..SessionQuery::default()
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "limit" => {
                q.limit = v
                    .parse()
                    .map_err(|_| format!("limit {v:?} is not a number"))?
            }
            "after" => q.after = Some(v),
            "min_idle_secs" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("min_idle_secs {v:?} is not a number"))?;
                q.min_idle = Some(Duration::from_secs(secs));
            }
            "upstream" => q.upstream = Some(v),
            _ => {
                return Err(format!(
                    "unknown parameter {k:?}: use limit, after, min_idle_secs or upstream"
                ));
            }
        }
    }
    Ok(q)
}

/// Decodes `%XX` escapes (and `+` as a space); invalid escapes stay as
/// they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q =
            session_query("limit=5&after=abc&min_idle_secs=60&upstream=http%3A%2F%2Fx").unwrap();
        assert_eq!(q.limit, 5);
        assert_eq!(q.after.as_deref(), Some("abc"));
        assert_eq!(q.min_idle, Some(Duration::from_secs(60)));
        assert_eq!(q.upstream.as_deref(), Some("http://x"));
        assert!(session_query("limit=x").is_err());
        assert!(session_query("nope=1").is_err());
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
