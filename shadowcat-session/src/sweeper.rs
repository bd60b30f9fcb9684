//! `IdleSweeper`: the one task per store that removes sessions idle longer
//! than the configured timeout, so an abandoned session never lives
//! forever in the store (Redis also expires keys by TTL on its own), and
//! hands what it removed to an [`ExpiryHook`] (the proxy ends them
//! upstream).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::model::now_millis;
use crate::store::{ExpiredSession, SessionStore, StoreError};

/// Told about every session a sweep removed, once (the proxy sends each a
/// DELETE upstream). Called on the sweeper's task: it must not block; hand
/// slow work to a task of your own.
pub trait ExpiryHook: Send + Sync + 'static {
    /// `sessions` just left the store for idleness.
    fn expired(&self, sessions: Vec<ExpiredSession>);
}

/// Settings for the [`IdleSweeper`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweeperConfig {
    /// A session unused for longer than this is removed. Default 30 min.
    pub max_idle: Duration,
    /// How often the store is swept. Default 60 s.
    pub interval: Duration,
}

impl SweeperConfig {
    /// The TTL a store with its own expiry (Redis) should give session
    /// keys: twice the idle timeout plus two sweep intervals. Idle sessions
    /// must leave through a sweep, which reports them (and the proxy ends
    /// them upstream); one the store drops on its own is never reported.
    /// The margin covers a late or failed sweep; the TTL still frees
    /// sessions nobody sweeps (every proxy down).
    pub fn store_ttl(&self) -> Duration {
        self.max_idle
            .saturating_mul(2)
            .saturating_add(self.interval.saturating_mul(2))
    }
}

impl Default for SweeperConfig {
    fn default() -> Self {
        SweeperConfig {
            max_idle: Duration::from_secs(30 * 60),
            interval: Duration::from_secs(60),
        }
    }
}

/// Runs [`SessionStore::expire_idle`] every [`SweeperConfig::interval`]
/// on one task. Dropping it stops the task.
#[derive(Debug)]
pub struct IdleSweeper {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl IdleSweeper {
    /// Starts the sweeper task on the current tokio runtime.
    pub fn start(store: Arc<dyn SessionStore>, config: SweeperConfig) -> IdleSweeper {
        Self::start_with(store, config, None)
    }

    /// [`IdleSweeper::start`], telling `hook` what each sweep removed.
    pub fn start_with(
        store: Arc<dyn SessionStore>,
        config: SweeperConfig,
        hook: Option<Arc<dyn ExpiryHook>>,
    ) -> IdleSweeper {
        let (stop, mut stopped) = watch::channel(false);
        let interval = config.interval.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate: skip it
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                // Errors are logged and counted inside; the next tick retries.
                if let Ok(gone) = sweep_once(store.as_ref(), config.max_idle).await
                    && !gone.is_empty()
                    && let Some(hook) = &hook
                {
                    hook.expired(gone);
                }
            }
        });
        IdleSweeper {
            stop,
            task: Some(task),
        }
    }

    /// Stops the task and waits for it to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for IdleSweeper {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One sweep: removes sessions idle longer than `max_idle`, logs and
/// counts the outcome (`shadowcat_sessions_expired_total`,
/// `shadowcat_sweeper_errors_total`).
pub async fn sweep_once(
    store: &dyn SessionStore,
    max_idle: Duration,
) -> Result<Vec<ExpiredSession>, StoreError> {
    match store.expire_idle(now_millis(), max_idle).await {
        Ok(gone) => {
            if !gone.is_empty() {
                let n = gone.len();
                tracing::info!(store = store.kind(), expired = n, "expired idle sessions");
                metrics::counter!("shadowcat_sessions_expired_total", "store" => store.kind())
                    .increment(n as u64);
            }
            Ok(gone)
        }
        Err(e) => {
            tracing::warn!(store = store.kind(), error = %e, retryable = e.is_retryable(), "idle-session sweep failed");
            metrics::counter!("shadowcat_sweeper_errors_total", "store" => store.kind())
                .increment(1);
            Err(e)
        }
    }
}
