//! `shadowcat reverse`: open the store, start the writer, the proxy and
//! the admin listener; on SIGINT/SIGTERM drain, flush and exit 0 (a second
//! signal exits at once).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use parking_lot::RwLock;

use shadowcat_proxy::ReverseProxy;
use shadowcat_session::{BatchingWriter, IdleSweeper, WriterConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::AdminState;
use crate::cli::LogFormat;
use crate::error::CliError;
use crate::settings::{AdminBind, ReverseSettings};
use crate::store::StoreSpec;
use crate::{admin, logging};

/// Exit code when a second signal cuts the drain short.
const EXIT_INTERRUPTED: i32 = 130;

pub(crate) async fn reverse(
    settings: ReverseSettings,
    store_spec: String,
    log_format: LogFormat,
) -> Result<ExitCode, CliError> {
    let (metrics, upkeep) = admin::install_metrics()?;
    let shutdown = shutdown_signal()?;
    // Redis keys outlive the idle timeout: idle sessions leave through the
    // sweeper, which has them ended upstream.
    let store = StoreSpec::parse(&store_spec)?
        .open_with_ttl(&store_spec, settings.sweeper.store_ttl())
        .await?;
    let writer = BatchingWriter::start(store.clone(), WriterConfig::default());
    let admin_listener = match settings.admin_bind {
        AdminBind::At(addr) => Some(admin::bind(addr).await?),
        AdminBind::Off => None,
    };
    let proxy = ReverseProxy::bind(settings.proxy, store.clone(), Some(writer.handle())).await?;
    // Expired sessions are dropped from the proxy's memory and ended
    // upstream (DELETE) or their stdio server stopped.
    let sweeper = IdleSweeper::start_with(store, settings.sweeper, Some(proxy.expiry_hook()));
    logging::init(log_format);
    tracing::info!(store = %store_spec, "session store open");
    let admin_task = admin_listener.map(|listener| {
        let state = Arc::new(AdminState {
            metrics,
            admin: proxy.admin(),
            token: RwLock::new(settings.admin_token.map(Arc::from)),
        });
        admin::serve(listener, state)
    });

    let report = proxy
        .serve_with_drain(shutdown, settings.drain_timeout)
        .await?;
    if let Some(task) = admin_task {
        task.abort();
    }
    upkeep.abort();
    sweeper.shutdown().await;
    let flushed = writer.shutdown().await;
    if flushed.is_complete() {
        tracing::info!(
            drained = report.drained,
            "stopped; every resumption point written"
        );
    } else {
        tracing::error!(
            unwritten = flushed.unwritten.len(),
            deadline_reached = flushed.deadline_reached,
            "stopped; some resumption points could not be written"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A future that completes on the first SIGINT or SIGTERM; a second one
/// exits the process at once.
fn shutdown_signal() -> Result<impl Future<Output = ()>, CliError> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down; send another signal to exit at once"
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("shadowcat: second signal, exiting at once");
            std::process::exit(EXIT_INTERRUPTED);
        });
    })
}
