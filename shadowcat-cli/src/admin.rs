//! The admin listener: `GET /healthz` and `GET /metrics` (Prometheus
//! text), on its own address so it is never exposed with the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::CliError;

/// How often histograms and summaries are rolled over.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

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

/// Serves the admin endpoints until the task is aborted.
pub(crate) fn serve(listener: TcpListener, metrics: PrometheusHandle) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin listening (/healthz, /metrics)");
        }
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
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

fn respond(req: &Request<Incoming>, metrics: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        (&Method::GET, "/metrics") => {
            runtime_gauges();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(metrics.render()),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found: try /healthz or /metrics\n"),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    resp
}
