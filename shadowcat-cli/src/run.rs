//! `shadowcat reverse`: open the store, start the writer, the proxy and
//! the admin listener; on SIGINT/SIGTERM drain, flush and exit 0 (a second
//! signal exits at once).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use parking_lot::RwLock;

use shadowcat_proxy::ReverseProxy;
use shadowcat_session::{BatchingWriter, IdleSweeper, WriterConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::AdminState;
use crate::cli::{LogFormat, ReverseArgs};
use crate::error::CliError;
use crate::logging::LogLevel;
use crate::settings::{AdminBind, FileConfig, ReverseSettings};
use crate::store::StoreSpec;
use crate::{access_log, admin, logging};

/// Exit code when a second signal cuts the drain short.
const EXIT_INTERRUPTED: i32 = 130;

/// The shared replay log: on by default with a redis store (instances
/// sharing sessions then share streams too), refused without one.
async fn cluster(
    c: &crate::settings::ClusterSettings,
    store_spec: &str,
) -> Result<Option<shadowcat_proxy::ClusterConfig>, CliError> {
    let redis = store_spec.starts_with("redis://") || store_spec.starts_with("rediss://");
    match (c.replay_log, redis) {
        (Some(false), _) | (None, false) => return Ok(None),
        (Some(true), false) => {
            return Err(CliError::Config(format!(
                "[cluster] replay_log needs a redis store (--store redis://HOST:PORT), not {store_spec:?}"
            )));
        }
        _ => {}
    }
    let logs = shadowcat_session::ReplayLogs::connect(store_spec, Default::default())
        .await
        .map_err(|e| CliError::Config(format!("replay log: {e}")))?;
    let notifier = shadowcat_session::Notifier::start(store_spec)
        .map_err(|e| CliError::Config(format!("replay log notifier: {e}")))?;
    tracing::info!(instance = %c.instance_id, "shared replay log on");
    Ok(Some(shadowcat_proxy::ClusterConfig {
        logs,
        notifier,
        instance_id: c.instance_id.clone(),
        lease_ttl: c.lease_ttl,
        retention: c.retention,
        wait: c.wait,
    }))
}

/// What SIGHUP needs to read the settings again: the flags (they still win)
/// and the config file.
pub(crate) struct Reload {
    pub(crate) args: ReverseArgs,
    pub(crate) config: Option<PathBuf>,
    /// The config file's `log_level` at start.
    pub(crate) log_level: Option<String>,
}

pub(crate) async fn reverse(
    settings: ReverseSettings,
    store_spec: String,
    log_format: LogFormat,
    reload: Reload,
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
    let running_view = settings_view(&settings);
    let mut settings = settings;
    settings.proxy.cluster = cluster(&settings.cluster, &store_spec).await?;
    if let Some(format) = settings.access_log {
        settings.proxy.access_log = Some(access_log::start(format, std::io::stdout())?);
    }
    let proxy = ReverseProxy::bind(settings.proxy, store.clone(), Some(writer.handle())).await?;
    // Expired sessions are dropped from the proxy's memory and ended
    // upstream (DELETE) or their stdio server stopped.
    let sweeper = IdleSweeper::start_with(store, settings.sweeper, Some(proxy.expiry_hook()));
    let log_level = logging::init(log_format, reload.log_level.as_deref());
    tracing::info!(store = %store_spec, "session store open");
    let admin_state = Arc::new(AdminState {
        metrics,
        admin: proxy.admin(),
        token: RwLock::new(settings.admin_token.clone().map(Arc::from)),
    });
    let admin_task =
        admin_listener.map(|listener| admin::serve(listener, Arc::clone(&admin_state)));
    let reloader = tokio::spawn(reload_on_hangup(
        signal(SignalKind::hangup())?,
        reload,
        Running {
            settings: running_view,
            admin: Arc::clone(&admin_state),
            log_level,
        },
    ));

    let report = proxy
        .serve_with_drain(shutdown, settings.drain_timeout)
        .await?;
    reloader.abort();
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

/// What is running, as far as a reload compares it.
struct Running {
    settings: SettingsView,
    admin: Arc<AdminState>,
    log_level: LogLevel,
}

/// The settings a reload compares, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SettingsView {
    /// What can change live.
    admin_token: Option<String>,
    /// What needs a restart, by name.
    fixed: Vec<(&'static str, String)>,
}

fn settings_view(s: &ReverseSettings) -> SettingsView {
    SettingsView {
        admin_token: s.admin_token.clone(),
        fixed: vec![
            ("upstream", s.proxy.upstream.to_string()),
            (
                "upstream_cmd",
                format!("{:?}", s.proxy.upstream_cmd.as_ref().map(|c| c.label())),
            ),
            ("bind", s.proxy.bind.to_string()),
            ("path", s.proxy.path.clone()),
            // Secrets are redacted in its Debug form.
            ("auth", format!("{:?}", s.proxy.auth)),
            ("admin_bind", format!("{:?}", s.admin_bind)),
            ("drain_timeout_secs", s.drain_timeout.as_secs().to_string()),
            (
                "session_idle_timeout_secs",
                s.sweeper.max_idle.as_secs().to_string(),
            ),
        ],
    }
}

/// On every SIGHUP: read the config file again (the flags still win) and
/// apply what can change while running; log what changed and what needs a
/// restart. A bad file changes nothing.
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    reload: Reload,
    mut running: Running,
) {
    let mut log_level = reload.log_level.clone();
    while hup.recv().await.is_some() {
        let read = FileConfig::load(reload.config.as_deref()).and_then(|file| {
            let level = file.log_level().map(str::to_owned);
            ReverseSettings::resolve(reload.args.clone(), file).map(|s| (s, level))
        });
        let (new, new_level) = match read {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("shadowcat_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "reload failed; the running settings stay");
                continue;
            }
        };
        let mut changed: Vec<String> = Vec::new();
        let mut restart: Vec<String> = Vec::new();
        if new_level != log_level {
            if let Some(level) = &new_level {
                match running.log_level.set(level) {
                    Ok(()) => changed.push(format!("log_level={level}")),
                    Err(e) => tracing::error!(error = %e, "log level not changed"),
                }
            }
            log_level = new_level;
        }
        let view = settings_view(&new);
        if view.admin_token != running.settings.admin_token {
            *running.admin.token.write() = view.admin_token.clone().map(Arc::from);
            changed.push("admin_token".into());
        }
        for ((name, old), (_, now)) in running.settings.fixed.iter().zip(&view.fixed) {
            if old != now {
                restart.push((*name).to_owned());
            }
        }
        let report = running.admin.admin.reload(&new.proxy);
        changed.extend(report.applied);
        restart.extend(report.need_restart);
        running.settings = SettingsView {
            fixed: running.settings.fixed.clone(),
            ..view
        };
        metrics::counter!("shadowcat_reloads_total", "result" => "ok").increment(1);
        if !restart.is_empty() {
            tracing::warn!(
                settings = %restart.join(", "),
                "these settings changed in the config but apply only after a restart; they were not applied"
            );
        }
        tracing::info!(
            changed = %if changed.is_empty() { "nothing".to_owned() } else { changed.join(", ") },
            "configuration reloaded (SIGHUP)"
        );
    }
}
