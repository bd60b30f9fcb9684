//! The shared replay log, owner side: with a cluster configured, every
//! stream this instance reads from its upstream (it owns the stream) is
//! appended to a Redis Stream per (session, stream) before any client is
//! sent its events, so a client's resume on any instance is served from
//! the log ([`super::log_reader`]).
//!
//! One task per proxy ([`Cluster::start`]) does the Redis work: it runs
//! the appends (one script call, one round trip, per batch; at most one
//! batch of a stream in flight, batches of different streams pipelined on
//! one connection), takes each stream's lease before its first append,
//! renews every lease it holds once a third of the lease time (learning
//! how far readers on other instances got) and releases leases. The
//! per-event path only pushes a job onto this task's queue: no spawn, no
//! async lock, no wait on Redis in the client's task; the client's body
//! is woken when the batch is logged.
//!
//! A batch that cannot be logged within `replay_log_wait` (Redis down or
//! slow) is released to clients anyway (the stream goes on locally,
//! counted in `shadowcat_replay_log_degraded_total`, logged); the log then
//! has a gap, which readers on other instances see and never paper over.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use shadowcat_session::{Lease, Notifier, ReplayLog, ReplayLogError, ReplayLogs, Retention};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::StreamShared;

/// Sharing streams between instances through a replay log on Redis.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The replay logs' Redis (connected).
    pub logs: ReplayLogs,
    /// Wakes readers here when an owner elsewhere appends.
    pub notifier: Notifier,
    /// This instance's name in leases (no `|`). Default (CLI):
    /// `shadowcat-{pid}-{random}`.
    pub instance_id: String,
    /// How long a lease lasts unless renewed (`lease_ttl_ms`, 5 s): an
    /// owner that died is replaced after about this long.
    pub lease_ttl: Duration,
    /// How much of each log Redis keeps (`replay_log_max_len`, 16,384
    /// events; `replay_log_max_age_ms`, 10 min).
    pub retention: Retention,
    /// The longest a batch waits for the log before it is released to
    /// clients without it (`replay_log_wait_ms`, 3 s).
    pub wait: Duration,
}

/// What a stream's owner keeps about its log (in the stream's state).
#[derive(Debug)]
pub(crate) struct OwnerLog {
    pub(crate) log: Arc<ReplayLog>,
    lease: Option<Lease>,
    /// The last seq clients may be sent (logged, or released without the
    /// log).
    pub(crate) released: u64,
    pub(crate) in_flight: bool,
    degraded: bool,
    /// The highest seq a reader on another instance reported sent.
    pub(crate) remote_read: u64,
    /// When a reader on another instance last reported.
    remote_seen: Option<Instant>,
    /// Renewed by the cluster task.
    registered: bool,
}

/// What the stream does after an append's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    Nothing,
    /// The lease is held now: renew it from now on.
    Owned,
    /// Another instance owns the stream: end it here.
    Fenced,
}

impl OwnerLog {
    pub(crate) fn new(log: ReplayLog, lease: Option<Lease>, first_seq: u64) -> Self {
        OwnerLog {
            log: Arc::new(log),
            lease,
            released: first_seq.saturating_sub(1),
            in_flight: false,
            degraded: false,
            remote_read: 0,
            remote_seen: None,
            registered: false,
        }
    }

    /// How the log stands, for the admin API.
    pub(crate) fn state(&self) -> &'static str {
        if self.degraded {
            "degraded"
        } else if self.lease.is_some() {
            "owner"
        } else if self.registered {
            "ended"
        } else {
            "acquiring"
        }
    }

    /// Clients wait for a batch being logged.
    pub(crate) fn gating(&self) -> bool {
        self.in_flight && !self.degraded
    }

    /// The log and the lease, while held.
    pub(crate) fn lease(&self) -> Option<(Arc<ReplayLog>, Lease)> {
        Some((Arc::clone(&self.log), self.lease.clone()?))
    }

    /// A renewal's answer: false when the lease is lost (fenced). Readers
    /// elsewhere count as clients: what they sent is written.
    pub(crate) fn renewed(&mut self, info: shadowcat_session::Renewed, now: Instant) -> bool {
        if self.lease.is_none() {
            return true;
        }
        if !info.held {
            return false;
        }
        self.remote_read = self.remote_read.max(info.read);
        if let Some(ago) = info.reported_ago {
            self.remote_seen = now.checked_sub(ago).or(Some(now));
        }
        true
    }

    /// A reader on another instance reported within `within`.
    pub(crate) fn read_elsewhere(&self, now: Instant, within: Duration) -> bool {
        self.remote_seen
            .is_some_and(|t| now.duration_since(t) < within)
    }

    /// The lease, to give back when the stream goes.
    pub(crate) fn take_lease(&mut self) -> Option<Lease> {
        self.lease.take()
    }
}

enum Job {
    Append {
        stream: Weak<StreamShared>,
        log: Arc<ReplayLog>,
        lease: Option<Lease>,
        entries: Vec<(u64, Bytes)>,
        upstream_id: Option<String>,
        end: bool,
        /// Clients wait for this batch (false: released already, the
        /// stream is degraded).
        gate: bool,
    },
    Release {
        log: Arc<ReplayLog>,
        lease: Lease,
    },
}

/// How an append went.
pub(crate) enum Logged {
    Ok {
        lease: Lease,
        read: u64,
    },
    /// Not logged in time: released without the log.
    Degraded(String),
    /// Another instance owns the stream now.
    Fenced,
}

/// The proxy's side of the cluster: its config and the task's queue.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) config: ClusterConfig,
    jobs: mpsc::UnboundedSender<Job>,
}

impl Cluster {
    /// Starts the task on the current runtime.
    pub(crate) fn start(config: ClusterConfig) -> Arc<Cluster> {
        let (jobs, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster { config, jobs });
        tokio::spawn(run(cluster.config.clone(), rx));
        cluster
    }

    /// The log of `stream` of `session`.
    pub(crate) fn log(&self, session: &shadowcat_session::SessionId, stream: u32) -> ReplayLog {
        self.config
            .logs
            .log(session, shadowcat_session::StreamId(stream))
    }

    /// Queues a batch (`entries`, the last one ending the stream when
    /// `end`) of the stream whose log is `log`. Clients are sent it once
    /// logged, unless the stream is degraded.
    pub(crate) fn submit(
        &self,
        stream: Weak<StreamShared>,
        log: &mut OwnerLog,
        entries: Vec<(u64, Bytes)>,
        upstream_id: Option<String>,
        end: bool,
    ) {
        let Some(last) = entries.last().map(|(s, _)| *s) else {
            return;
        };
        let gate = !log.degraded;
        if !gate {
            log.released = log.released.max(last);
            if log.in_flight {
                // One append of a stream at a time: this batch stays out
                // of the log (a gap readers see).
                return;
            }
        }
        log.in_flight = true;
        let job = Job::Append {
            stream,
            log: Arc::clone(&log.log),
            lease: log.lease.clone(),
            entries,
            upstream_id,
            end,
            gate,
        };
        if self.jobs.send(job).is_err() {
            // The task is gone (the runtime stops): nothing to wait for.
            log.in_flight = false;
            log.degraded = true;
            log.released = log.released.max(last);
        }
    }

    /// Gives `lease` back (the stream ended here).
    pub(crate) fn release(&self, log: Arc<ReplayLog>, lease: Lease) {
        let _ = self.jobs.send(Job::Release { log, lease });
    }
}

impl OwnerLog {
    /// Applies how the append of the batch ending at `last` (the end of
    /// the stream when `end`: the lease was given back) went.
    pub(crate) fn on_logged(&mut self, last: u64, gate: bool, end: bool, outcome: Logged) -> After {
        self.in_flight = false;
        match outcome {
            Logged::Ok { lease, read } => {
                let mut after = After::Nothing;
                if end {
                    self.lease = None;
                } else {
                    if self.lease.is_none() {
                        self.lease = Some(lease);
                    }
                    if !self.registered {
                        self.registered = true;
                        after = After::Owned;
                    }
                }
                if self.degraded {
                    tracing::info!(key = %self.log.log_key(), "replay log appends work again");
                }
                self.degraded = false;
                self.remote_read = self.remote_read.max(read);
                self.released = self.released.max(last);
                after
            }
            Logged::Degraded(cause) => {
                if gate {
                    metrics::counter!("shadowcat_replay_log_degraded_total").increment(1);
                    tracing::warn!(key = %self.log.log_key(), %cause, "replay log unavailable: events go to clients without it; instances that do not own the stream cannot resume past this gap");
                }
                self.degraded = true;
                self.released = self.released.max(last);
                After::Nothing
            }
            Logged::Fenced => After::Fenced,
        }
    }
}

async fn run(config: ClusterConfig, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut inflight = FuturesUnordered::new();
    // Streams whose lease this instance holds.
    let mut owned: Vec<Weak<StreamShared>> = Vec::new();
    let every = (config.lease_ttl / 3).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewing = false;
    let mut renewals = FuturesUnordered::new();
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                None => break,
                Some(Job::Append { stream, log, lease, entries, upstream_id, end, gate }) => {
                    let config = config.clone();
                    inflight.push(Box::pin(async move {
                        let last = entries.last().map_or(0, |(s, _)| *s);
                        let outcome = append(&config, &log, lease, &entries, upstream_id.as_deref(), end).await;
                        if end && let Logged::Ok { lease, .. } = &outcome {
                            let _ = log.release(lease).await;
                        }
                        (stream, last, gate, end, outcome)
                    }) as Pending);
                }
                Some(Job::Release { log, lease }) => {
                    inflight.push(Box::pin(async move {
                        if let Err(e) = log.release(&lease).await {
                            tracing::debug!(error = %e, "could not release a replay log lease; it expires");
                        }
                        (Weak::new(), 0u64, false, true, Logged::Fenced)
                    }) as Pending);
                }
            },
            Some((stream, last, gate, end, outcome)) = inflight.next() => {
                let Some(stream) = Weak::upgrade(&stream) else { continue };
                if stream.logged(last, gate, end, outcome) {
                    owned.push(Arc::downgrade(&stream));
                }
            }
            _ = tick.tick(), if !renewing => {
                owned.retain(|w| w.strong_count() > 0);
                renewing = true;
                let list: Vec<_> = owned.iter().filter_map(|w| {
                    let s = w.upgrade()?;
                    let (log, lease) = s.log_lease()?;
                    Some((Arc::downgrade(&s), log, lease))
                }).collect();
                let ttl = config.lease_ttl;
                renewals.push(async move {
                    let calls = list.into_iter().map(|(s, log, lease)| async move {
                        let r = log.renew_info(&lease, ttl).await;
                        (s, r)
                    });
                    futures::future::join_all(calls).await
                });
            }
            Some(done) = renewals.next() => {
                renewing = false;
                let now = Instant::now();
                for (s, r) in done {
                    let Some(s) = s.upgrade() else { continue };
                    match r {
                        Ok(info) => s.renewed(info, now),
                        Err(e) => tracing::debug!(error = %e, stream = s.id.0, "replay log lease renewal failed; retrying next time"),
                    }
                }
            }
        }
    }
}

/// An append or a release: (stream, last seq, gated, ended, outcome).
type Pending = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Weak<StreamShared>, u64, bool, bool, Logged)> + Send>,
>;

/// Takes the lease if needed, then appends, retrying what Redis could not
/// do, all within `config.wait`.
async fn append(
    config: &ClusterConfig,
    log: &ReplayLog,
    lease: Option<Lease>,
    entries: &[(u64, Bytes)],
    upstream_id: Option<&str>,
    end: bool,
) -> Logged {
    let started = std::time::Instant::now();
    let attempt = async {
        let mut delay = Duration::from_millis(20);
        let mut lease = lease;
        loop {
            let result = async {
                let lease = match &lease {
                    Some(l) => l.clone(),
                    // The stream's first batch: lease and append in one
                    // round trip.
                    None => {
                        return match log
                            .acquire_append(
                                &config.instance_id,
                                config.lease_ttl,
                                entries,
                                upstream_id,
                                end,
                                config.retention,
                            )
                            .await?
                        {
                            Some((l, read)) => Ok(Ok((l, Ok(read)))),
                            None => Ok(Err(format!(
                                "another instance holds the lease of {}",
                                log.log_key()
                            ))),
                        };
                    }
                };
                let read = log
                    .append_batch(&lease, entries, upstream_id, end, config.retention)
                    .await;
                Ok::<_, ReplayLogError>(Ok((lease, read)))
            }
            .await;
            match result {
                Ok(Err(cause)) => return Logged::Degraded(cause),
                Ok(Ok((_, Err(ReplayLogError::Fenced { .. })))) => return Logged::Fenced,
                Ok(Ok((l, Ok(read)))) => return Logged::Ok { lease: l, read },
                Ok(Ok((l, Err(e)))) => {
                    lease = Some(l);
                    if !e.is_transient() {
                        return Logged::Degraded(e.to_string());
                    }
                }
                Err(e) if e.is_transient() => {}
                Err(e) => return Logged::Degraded(e.to_string()),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    };
    let outcome = match tokio::time::timeout(config.wait, attempt).await {
        Ok(o) => o,
        Err(_) => Logged::Degraded(format!(
            "not logged within replay_log_wait_ms ({} ms)",
            config.wait.as_millis()
        )),
    };
    metrics::histogram!("shadowcat_replay_log_append_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("shadowcat_replay_log_appends_total").increment(1);
    metrics::counter!("shadowcat_replay_log_events_total").increment(entries.len() as u64);
    outcome
}
