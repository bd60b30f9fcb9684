//! `BatchingWriter`: the one task per store that persists resumption points
//! and activity times without ever slowing a stream.
//!
//! Producers call [`WriterHandle::submit`], [`WriterHandle::touch`],
//! [`WriterHandle::end_stream`] and [`WriterHandle::forget`]. They are
//! synchronous: they take a short `parking_lot` lock, write into a map of
//! pending entries and return. They never await, never spawn and never wait
//! on the store.
//!
//! - **Coalescing.** One pending value per key, newest wins: a key is
//!   (session, stream) for points and stream ends, the session for touches.
//!   Memory is bounded by the number of sessions, never by the event rate.
//!   A newer id for a key already pending reuses the pending `String`
//!   (clear + push), so steady-state submits do not allocate; flushed
//!   entries are recycled for the next interval for the same reason.
//! - **Flushing.** The task flushes every [`WriterConfig::flush_interval`],
//!   or as soon as [`WriterConfig::max_batch`] keys are pending, with one
//!   [`SessionStore::apply_batch`] per chunk of `max_batch` updates.
//! - **Failures.** A retryable failure (or a call longer than
//!   [`WriterConfig::write_timeout`]) sends the chunk's updates to a retry
//!   set, each with a due time (exponential backoff with jitter, at most
//!   [`WriterConfig::max_attempts`] attempts each); due updates go out with
//!   the next flush. A newer value for the same key always replaces one
//!   waiting to retry, so an older id never overwrites a newer one in the
//!   store. A non-retryable `Corrupt` error is bisected to isolate the
//!   poison update (at most `2n - 1` calls for a chunk of `n`); other
//!   non-retryable errors (`Refused`) drop the chunk. A circuit breaker stops store calls after
//!   [`WriterConfig::breaker_threshold`] consecutive failures for
//!   [`WriterConfig::breaker_cooldown`], then lets one trial batch through.
//!   Every failure is logged with `tracing` and counted.
//! - **The one lossy path on intake.** When [`WriterConfig::max_pending_sessions`]
//!   sessions are already pending (or a session has
//!   [`WriterConfig::max_streams_per_session`] pending streams), a submit
//!   for a new key is dropped. It is counted (`WriterStats::dropped_full`,
//!   metric `shadowcat_writer_dropped{reason="full"}`) and logged at most
//!   once a second. Nothing else on intake ever loses a value.
//! - **Shutdown.** [`BatchingWriter::shutdown`] flushes everything within
//!   [`WriterConfig::shutdown_deadline`] and returns what could not be
//!   written. Dropping the `BatchingWriter` signals the task to do the same
//!   (and log the result) and exit: the task is never leaked.
//!
//! Metrics (the `metrics` facade, label `store`): counters
//! `shadowcat_writer_submitted`, `_coalesced`, `_written`, `_batches`,
//! `_write_errors`, `_retries`, `_dropped` (label `reason`); gauges
//! `_queued`, `_breaker_state` (0 closed, 1 open, 2 half-open); histograms
//! `_batch_size`, `_flush_seconds`. They are published by the task once
//! per flush; producers only bump plain counters under the lock they
//! already hold. [`WriterHandle::stats`] reads the same numbers without a
//! metrics recorder.
//!
//! ## Choosing `flush_interval`
//!
//! At 100 sessions × 100 events/s every session has a new id in every
//! flush, so each flush writes one key per session and keys per event is
//! `flushes per second / 100`. The goal of ≤ 0.1 keys per event allows at
//! most 10 flushes a second (interval ≥ 100 ms); an event then waits for
//! the next flush, on average half an interval and at the 99th percentile
//! 0.99 of it. The default of 100 ms is the one interval that meets both
//! ≤ 0.1 keys per event and p99 submit→durable ≤ 100 ms, the latter only
//! while a store round trip takes under about 1 ms (memory, Redis on
//! loopback); a store that takes longer adds its time to the p99.
//! Round trips per event are 0.001 (goal ≤ 0.002).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::model::{ResumptionPoint, SessionId, StreamId, UnixMillis, Update};
use crate::store::{SessionStore, StoreError};

/// Entries a pending table keeps room for even when idle.
const MIN_TABLE: usize = 16;

/// How often a rejected-submit warning may be logged.
const DROP_LOG_EVERY: Duration = Duration::from_secs(1);

/// Settings for a [`BatchingWriter`]. Every limit here is what keeps the
/// writer's memory and store load bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// Flush this often when fewer than `max_batch` keys are pending.
    /// Default 100 ms (see the module docs for why).
    pub flush_interval: Duration,
    /// Flush at once when this many keys are pending; also the most
    /// updates in one `apply_batch`. Default 512.
    pub max_batch: usize,
    /// The most sessions with pending values. Submits for new sessions
    /// beyond it are dropped and counted. Also bounds the retry set.
    /// Default 100 000.
    pub max_pending_sessions: usize,
    /// The most pending streams of one session. Default 64.
    pub max_streams_per_session: usize,
    /// First retry delay after a failed write; doubles per attempt, with
    /// jitter (half fixed, half random). Default 100 ms.
    pub retry_base: Duration,
    /// Longest retry delay. Default 5 s.
    pub retry_cap: Duration,
    /// Store calls one update may take part in before it is given up
    /// (logged and counted; a newer value for its key starts afresh).
    /// Default 12.
    pub max_attempts: u32,
    /// Consecutive failed store calls that open the circuit breaker.
    /// Default 5.
    pub breaker_threshold: u32,
    /// How long an open breaker makes no store calls before one trial
    /// batch. Default 1 s.
    pub breaker_cooldown: Duration,
    /// A store call that takes longer counts as a retryable failure.
    /// Default 2 s.
    pub write_timeout: Duration,
    /// How long [`BatchingWriter::shutdown`] (or a drop) may spend
    /// flushing. Default 5 s.
    pub shutdown_deadline: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            flush_interval: Duration::from_millis(100),
            max_batch: 512,
            max_pending_sessions: 100_000,
            max_streams_per_session: 64,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(5),
            max_attempts: 12,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            write_timeout: Duration::from_secs(2),
            shutdown_deadline: Duration::from_secs(5),
        }
    }
}

/// A [`WriterConfig`] setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriterConfigError {
    /// A count or duration that must be positive is zero.
    #[error("writer setting `{0}` must be greater than zero")]
    Zero(&'static str),
    /// `retry_cap` is shorter than `retry_base`.
    #[error("writer retry_cap ({cap:?}) is shorter than retry_base ({base:?})")]
    RetryCap {
        /// The configured base.
        base: Duration,
        /// The configured cap.
        cap: Duration,
    },
}

impl WriterConfig {
    /// Checks that every setting can work.
    ///
    /// # Errors
    ///
    /// [`WriterConfigError`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), WriterConfigError> {
        let zero = [
            ("flush_interval", self.flush_interval.is_zero()),
            ("max_batch", self.max_batch == 0),
            ("max_pending_sessions", self.max_pending_sessions == 0),
            ("max_streams_per_session", self.max_streams_per_session == 0),
            ("retry_base", self.retry_base.is_zero()),
            ("max_attempts", self.max_attempts == 0),
            ("breaker_threshold", self.breaker_threshold == 0),
            ("write_timeout", self.write_timeout.is_zero()),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, bad)| *bad) {
            return Err(WriterConfigError::Zero(name));
        }
        if self.retry_cap < self.retry_base {
            return Err(WriterConfigError::RetryCap {
                base: self.retry_base,
                cap: self.retry_cap,
            });
        }
        Ok(())
    }

    /// This config with zero settings raised to the smallest working value
    /// and `retry_cap` raised to `retry_base`.
    fn normalized(mut self) -> Self {
        let min = Duration::from_millis(1);
        self.flush_interval = self.flush_interval.max(min);
        self.max_batch = self.max_batch.max(1);
        self.max_pending_sessions = self.max_pending_sessions.max(1);
        self.max_streams_per_session = self.max_streams_per_session.max(1);
        self.retry_base = self.retry_base.max(min);
        self.retry_cap = self.retry_cap.max(self.retry_base);
        self.max_attempts = self.max_attempts.max(1);
        self.breaker_threshold = self.breaker_threshold.max(1);
        self.write_timeout = self.write_timeout.max(min);
        self
    }
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BreakerState {
    /// Store calls go through.
    #[default]
    Closed,
    /// Too many consecutive failures: no store calls until the cooldown
    /// ends. Values keep coalescing meanwhile.
    Open,
    /// The cooldown ended: the next batch is a trial.
    HalfOpen,
}

impl BreakerState {
    fn as_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// A snapshot of the writer's counters (the same numbers as its metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Values accepted from producers (submits, touches, stream ends).
    pub submitted: u64,
    /// Accepted values that replaced one already pending for the same key.
    pub coalesced: u64,
    /// Keys pending for the next flush.
    pub queued: u64,
    /// Updates waiting in the retry set.
    pub retry_queued: u64,
    /// Updates the store accepted.
    pub written: u64,
    /// Store round trips (`apply_batch` calls), successful or not.
    pub batches: u64,
    /// Failed store calls (errors and timeouts).
    pub write_errors: u64,
    /// Updates sent again after a failure.
    pub retries: u64,
    /// Values rejected on intake: pending map full.
    pub dropped_full: u64,
    /// Values rejected on intake: the writer had stopped.
    pub dropped_closed: u64,
    /// Updates given up after a write failure: attempts exhausted,
    /// non-retryable error, poison update or retry set full.
    pub dropped_failed: u64,
    /// The circuit breaker now.
    pub breaker: BreakerState,
}

impl WriterStats {
    /// Every value lost, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_closed + self.dropped_failed
    }
}

/// What [`BatchingWriter::shutdown`] could not do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Updates that were not written: the store failed until the deadline,
    /// or refused them during shutdown. Empty after a clean shutdown.
    pub unwritten: Vec<Update>,
    /// True when the deadline ended the flush.
    pub deadline_reached: bool,
    /// True when the writer task had panicked; `unwritten` is then unknown.
    pub task_failed: bool,
    /// The final counters.
    pub stats: WriterStats,
}

impl ShutdownReport {
    /// True when everything submitted before shutdown reached the store
    /// (values dropped earlier still show in `stats`).
    pub fn is_complete(&self) -> bool {
        self.unwritten.is_empty() && !self.task_failed
    }
}

/// The writer: owns its one task. Hand [`WriterHandle`]s to producers.
///
/// Dropping it stops the task (after a final flush bounded by
/// [`WriterConfig::shutdown_deadline`], whose result is logged); call
/// [`BatchingWriter::shutdown`] to wait for that flush and get its report.
pub struct BatchingWriter {
    shared: Arc<Shared>,
    task: Option<JoinHandle<ShutdownReport>>,
}

/// A cheap, cloneable producer handle onto a [`BatchingWriter`].
#[derive(Clone)]
pub struct WriterHandle {
    shared: Arc<Shared>,
}

impl BatchingWriter {
    /// Spawns the writer's one task on the current tokio runtime.
    ///
    /// Settings that [`WriterConfig::validate`] rejects are raised to the
    /// smallest working value, with a warning.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(store: Arc<dyn SessionStore>, config: WriterConfig) -> BatchingWriter {
        if let Err(e) = config.validate() {
            tracing::warn!(error = %e, "writer config adjusted");
        }
        let config = config.normalized();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            store_kind: store.kind(),
            max_batch: config.max_batch,
            max_sessions: config.max_pending_sessions,
            max_streams: config.max_streams_per_session,
            stats: TaskStats::default(),
        });
        let task = Task::new(Arc::clone(&shared), store, config);
        let handle = tokio::spawn(task.run());
        BatchingWriter {
            shared,
            task: Some(handle),
        }
    }

    /// A producer handle.
    pub fn handle(&self) -> WriterHandle {
        WriterHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    /// Flushes everything pending (retrying failures) for at most
    /// [`WriterConfig::shutdown_deadline`], stops the task and reports what
    /// could not be written (also logged). Producers' later values are
    /// dropped and counted (`dropped_closed`).
    pub async fn shutdown(mut self) -> ShutdownReport {
        self.shared.signal_stop();
        let Some(task) = self.task.take() else {
            return ShutdownReport::default();
        };
        match task.await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(store = self.shared.store_kind, error = %e, "writer task failed");
                self.shared.pending.lock().closed = true;
                ShutdownReport {
                    unwritten: Vec::new(),
                    deadline_reached: false,
                    task_failed: true,
                    stats: self.shared.stats(),
                }
            }
        }
    }
}

impl Drop for BatchingWriter {
    fn drop(&mut self) {
        if self.task.take().is_some() {
            // The task sees the signal, flushes within the deadline, logs
            // what it could not write and exits.
            self.shared.signal_stop();
        }
    }
}

impl fmt::Debug for BatchingWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchingWriter")
            .field("store", &self.shared.store_kind)
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriterHandle")
            .field("store", &self.shared.store_kind)
            .finish_non_exhaustive()
    }
}

impl WriterHandle {
    /// Records `stream`'s newest resumption point. Synchronous and
    /// non-blocking: replaces any value pending for the same stream.
    pub fn submit(
        &self,
        session: &SessionId,
        stream: StreamId,
        upstream_event_id: Option<&str>,
        client_seq: u64,
    ) {
        self.record(session, |entry, max_streams| {
            entry.set_stream(
                stream,
                SlotOp::Point,
                upstream_event_id,
                client_seq,
                max_streams,
            )
        });
    }

    /// Records that the session was used at `at` (the newest time wins).
    pub fn touch(&self, session: &SessionId, at: UnixMillis) {
        self.record(session, |entry, _| entry.touch(at));
    }

    /// Records that `stream` is finished: the store drops its point.
    /// Replaces any point pending for it; a later submit replaces this.
    pub fn end_stream(&self, session: &SessionId, stream: StreamId) {
        self.record(session, |entry, max_streams| {
            entry.set_stream(stream, SlotOp::End, None, 0, max_streams)
        });
    }

    /// Drops everything pending or waiting to retry for a deleted session.
    pub fn forget(&self, session: &SessionId) {
        let shared = &*self.shared;
        let (active, recycled) = {
            let mut p = shared.pending.lock();
            let active = p.active.remove(session);
            if let Some(e) = &active {
                p.dirty_keys -= e.dirty_keys();
            }
            let recycled = p.recycled.remove(session);
            if p.retry_waiting && p.forgotten.len() < shared.max_sessions {
                // Overflow is harmless: stores skip updates for sessions
                // they no longer have.
                p.forgotten.push(session.clone());
            }
            (active, recycled)
        };
        // Freed outside the lock.
        drop((active, recycled));
    }

    /// The counters now.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    /// Bytes the writer holds for pending and recycled entries: map slots
    /// plus their heap parts. A diagnostic: walks every entry under the
    /// producers' lock, so keep it off any hot path.
    pub fn pending_memory_bytes(&self) -> usize {
        let p = self.shared.pending.lock();
        map_bytes(&p.active) + map_bytes(&p.recycled)
    }

    fn record(&self, session: &SessionId, change: impl FnOnce(&mut Entry, usize) -> Change) {
        let shared = &*self.shared;
        let wake = {
            let mut p = shared.pending.lock();
            if p.closed {
                p.counts.dropped_closed += 1;
                return;
            }
            match p.change(session, shared.max_sessions, shared.max_streams, change) {
                Change::NewKey => {
                    p.counts.submitted += 1;
                    p.dirty_keys += 1;
                    p.dirty_keys == shared.max_batch
                }
                Change::Coalesced => {
                    p.counts.submitted += 1;
                    p.counts.coalesced += 1;
                    false
                }
                Change::Full => {
                    p.counts.dropped_full += 1;
                    false
                }
            }
        };
        if wake {
            shared.wake.notify_one();
        }
    }
}

/// State shared by the handles and the task.
#[derive(Debug)]
struct Shared {
    // A sync mutex, not an async one: it guards plain map operations that
    // take well under a microsecond and it is never held across an
    // `.await` (the task swaps maps under it and does its store I/O after
    // releasing it). Producers are synchronous callers on the stream path;
    // an async mutex would force them to await, and would cost more per
    // lock than the work it protects.
    pending: Mutex<Pending>,
    /// Wakes the task early: `max_batch` keys pending.
    wake: Notify,
    /// Wakes the task to stop (shutdown or drop).
    stop: Notify,
    stopping: AtomicBool,
    store_kind: &'static str,
    max_batch: usize,
    max_sessions: usize,
    max_streams: usize,
    stats: TaskStats,
}

impl Shared {
    fn signal_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        // `notify_one` keeps a permit if the task is busy, so the signal
        // is never missed; the task also checks `stopping` on every wake.
        self.stop.notify_one();
    }

    fn stats(&self) -> WriterStats {
        let (c, queued) = {
            let p = self.pending.lock();
            (p.counts, p.dirty_keys)
        };
        let s = &self.stats;
        WriterStats {
            submitted: c.submitted,
            coalesced: c.coalesced,
            queued: queued as u64,
            retry_queued: s.retry_queued.load(Ordering::Relaxed),
            written: s.written.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            dropped_full: c.dropped_full,
            dropped_closed: c.dropped_closed,
            dropped_failed: s.dropped_failed.load(Ordering::Relaxed),
            breaker: BreakerState::from_u8(s.breaker.load(Ordering::Relaxed)),
        }
    }
}

/// Counters only the task writes.
#[derive(Debug, Default)]
struct TaskStats {
    written: AtomicU64,
    batches: AtomicU64,
    write_errors: AtomicU64,
    retries: AtomicU64,
    dropped_failed: AtomicU64,
    retry_queued: AtomicU64,
    breaker: AtomicU8,
}

/// Counters producers bump under the lock they already hold (no extra
/// atomic read-modify-write per event).
#[derive(Debug, Default, Clone, Copy)]
struct ProducerCounts {
    submitted: u64,
    coalesced: u64,
    dropped_full: u64,
    dropped_closed: u64,
}

/// What producers write into; guarded by `Shared::pending`.
#[derive(Debug, Default)]
struct Pending {
    /// Sessions with values waiting for the next flush.
    active: HashMap<SessionId, Entry>,
    /// Entries flushed last time, all clean, kept so a busy session's next
    /// submit reuses its id and buffers instead of allocating. Whatever is
    /// still here one flush later was idle for a whole interval and is
    /// freed.
    recycled: HashMap<SessionId, Entry>,
    /// Dirty keys in `active`.
    dirty_keys: usize,
    /// Sessions forgotten while updates were waiting to retry.
    forgotten: Vec<SessionId>,
    /// The task has updates waiting to retry.
    retry_waiting: bool,
    /// The task has finished: submits are dropped.
    closed: bool,
    counts: ProducerCounts,
}

enum Change {
    NewKey,
    Coalesced,
    Full,
}

impl Pending {
    fn change(
        &mut self,
        session: &SessionId,
        max_sessions: usize,
        max_streams: usize,
        change: impl FnOnce(&mut Entry, usize) -> Change,
    ) -> Change {
        if let Some(entry) = self.active.get_mut(session) {
            return change(entry, max_streams);
        }
        if self.active.len() >= max_sessions {
            return Change::Full;
        }
        let (id, entry) = match self.recycled.remove_entry(session) {
            Some(reused) => reused,
            None => (session.clone(), Entry::default()),
        };
        change(self.active.entry(id).or_insert(entry), max_streams)
    }
}

/// One session's pending values.
#[derive(Debug, Default)]
struct Entry {
    touch: Option<UnixMillis>,
    slots: SmallVec<[Slot; 1]>,
}

/// One stream's pending value, or a clean slot kept for reuse.
#[derive(Debug)]
struct Slot {
    stream: StreamId,
    op: SlotOp,
    has_id: bool,
    event_id: String,
    client_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotOp {
    Clean,
    Point,
    End,
}

impl Slot {
    fn set(&mut self, op: SlotOp, id: Option<&str>, client_seq: u64) {
        self.op = op;
        // Reuses the buffer's capacity: no allocation once it fits.
        self.event_id.clear();
        self.has_id = id.is_some();
        if let Some(id) = id {
            self.event_id.push_str(id);
        }
        self.client_seq = client_seq;
    }
}

impl Entry {
    fn set_stream(
        &mut self,
        stream: StreamId,
        op: SlotOp,
        id: Option<&str>,
        client_seq: u64,
        max_streams: usize,
    ) -> Change {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.stream == stream) {
            let was = slot.op;
            slot.set(op, id, client_seq);
            return if was == SlotOp::Clean {
                Change::NewKey
            } else {
                Change::Coalesced
            };
        }
        if self.slots.len() >= max_streams {
            let Some(slot) = self.slots.iter_mut().find(|s| s.op == SlotOp::Clean) else {
                return Change::Full;
            };
            slot.stream = stream;
            slot.set(op, id, client_seq);
            return Change::NewKey;
        }
        self.slots.push(Slot {
            stream,
            op,
            has_id: id.is_some(),
            event_id: id.map(str::to_owned).unwrap_or_default(),
            client_seq,
        });
        Change::NewKey
    }

    fn touch(&mut self, at: UnixMillis) -> Change {
        match &mut self.touch {
            Some(t) => {
                *t = (*t).max(at);
                Change::Coalesced
            }
            None => {
                self.touch = Some(at);
                Change::NewKey
            }
        }
    }

    fn dirty_keys(&self) -> usize {
        usize::from(self.touch.is_some())
            + self.slots.iter().filter(|s| s.op != SlotOp::Clean).count()
    }

    fn heap_bytes(&self) -> usize {
        let slots = if self.slots.spilled() {
            self.slots.capacity() * std::mem::size_of::<Slot>()
        } else {
            0
        };
        slots
            + self
                .slots
                .iter()
                .map(|s| s.event_id.capacity())
                .sum::<usize>()
    }
}

fn map_bytes(map: &HashMap<SessionId, Entry>) -> usize {
    // The table: one bucket and one control byte per slot of capacity.
    let table = map.capacity() * (std::mem::size_of::<(SessionId, Entry)>() + 1);
    table
        + map
            .iter()
            .map(|(id, e)| id.as_str().len() + e.heap_bytes())
            .sum::<usize>()
}

/// Which value of a session an update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Touch,
    Stream(StreamId),
}

fn key_of(update: &Update) -> Key {
    match update {
        Update::Touch { .. } => Key::Touch,
        Update::Point { stream, .. } | Update::EndStream { stream, .. } => Key::Stream(*stream),
    }
}

/// An update waiting to be sent again.
#[derive(Debug)]
struct RetryOp {
    update: Update,
    attempts: u32,
    due: Instant,
}

/// What happened to one update of a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// Not attempted (breaker open or stop): back to the retry set as is.
    Deferred,
    /// Attempted and failed retryably.
    Failed,
    /// Refused for good: dropped (already logged).
    Rejected,
}

/// Why one store call failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store call took longer than {0:?}")]
    Timeout(Duration),
    #[error("store call interrupted by shutdown")]
    Interrupted,
}

impl WriteError {
    fn is_retryable(&self) -> bool {
        match self {
            WriteError::Store(e) => e.is_retryable(),
            WriteError::Timeout(_) | WriteError::Interrupted => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Regular flush: breaker and retry due times apply.
    Normal,
    /// Shutdown: every waiting update is due, no breaker, no attempt
    /// limit, store calls end by `deadline`.
    Final { deadline: Instant },
}

#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    consecutive: u32,
    open_until: Instant,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    /// True when a store call may be made now.
    fn allows(&mut self, now: Instant, store: &'static str) -> bool {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => true,
            BreakerState::Open if now >= self.open_until => {
                self.state = BreakerState::HalfOpen;
                tracing::info!(store, "writer circuit breaker half-open: trying one batch");
                true
            }
            BreakerState::Open => false,
        }
    }

    fn success(&mut self, store: &'static str) {
        if self.state != BreakerState::Closed {
            tracing::info!(store, "writer circuit breaker closed: store calls succeed");
        }
        self.state = BreakerState::Closed;
        self.consecutive = 0;
    }

    fn failure(&mut self, now: Instant, store: &'static str) {
        self.consecutive = self.consecutive.saturating_add(1);
        if self.state == BreakerState::HalfOpen || self.consecutive >= self.threshold {
            if self.state != BreakerState::Open {
                tracing::warn!(
                    store,
                    consecutive_failures = self.consecutive,
                    cooldown = ?self.cooldown,
                    "writer circuit breaker open: pausing store calls"
                );
            }
            self.state = BreakerState::Open;
            self.open_until = now + self.cooldown;
        }
    }
}

/// Task counters as last exported.
#[derive(Debug, Default, Clone, Copy)]
struct TaskCounts {
    written: u64,
    batches: u64,
    write_errors: u64,
    retries: u64,
}

/// Counter values last exported to the metrics facade.
#[derive(Debug, Default)]
struct Published {
    counts: ProducerCounts,
    task: TaskCounts,
    dropped_logged: u64,
    last_drop_log: Option<Instant>,
}

/// The writer task's own state; nothing here is shared.
#[derive(Debug)]
struct Task {
    shared: Arc<Shared>,
    store: Arc<dyn SessionStore>,
    config: WriterConfig,
    /// The other half of the double buffer with `Pending::active`.
    taken: HashMap<SessionId, Entry>,
    forgotten: Vec<SessionId>,
    batch: Vec<Update>,
    attempts: Vec<u32>,
    outcomes: Vec<Outcome>,
    /// Updates waiting to retry, by session; at most one per key.
    retry: HashMap<SessionId, SmallVec<[RetryOp; 1]>>,
    retry_len: usize,
    /// Updates refused during shutdown, for the report.
    refused: Vec<Update>,
    breaker: Breaker,
    rng: u64,
    published: Published,
}

impl Task {
    fn new(shared: Arc<Shared>, store: Arc<dyn SessionStore>, config: WriterConfig) -> Task {
        let breaker = Breaker {
            state: BreakerState::Closed,
            consecutive: 0,
            open_until: Instant::now(),
            threshold: config.breaker_threshold,
            cooldown: config.breaker_cooldown,
        };
        Task {
            shared,
            store,
            config,
            taken: HashMap::new(),
            forgotten: Vec::new(),
            batch: Vec::new(),
            attempts: Vec::new(),
            outcomes: Vec::new(),
            retry: HashMap::new(),
            retry_len: 0,
            refused: Vec::new(),
            breaker,
            // Jitter only: a fixed seed is fine if the OS has no entropy.
            rng: getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15) | 1,
            published: Published::default(),
        }
    }

    async fn run(mut self) -> ShutdownReport {
        let period = self.config.flush_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if self.shared.stopping.load(Ordering::Acquire) {
                break;
            }
            tokio::select! {
                biased;
                () = self.shared.stop.notified() => break,
                () = self.shared.wake.notified() => {}
                _ = tick.tick() => {}
            }
            self.flush(Mode::Normal).await;
        }
        self.finish().await
    }

    /// Shutdown: flush and retry until everything is written or the
    /// deadline passes, then close intake and report.
    async fn finish(mut self) -> ShutdownReport {
        let deadline = Instant::now() + self.config.shutdown_deadline;
        let mode = Mode::Final { deadline };
        let mut wait = self.config.retry_base;
        loop {
            self.flush(mode).await;
            if self.retry_len == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
            wait = (wait * 2).min(self.config.retry_cap);
        }
        // Close intake, then one last pass for what arrived meanwhile.
        self.shared.pending.lock().closed = true;
        self.flush(mode).await;
        let deadline_reached = Instant::now() >= deadline && self.retry_len > 0;

        let mut unwritten = std::mem::take(&mut self.refused);
        for (_, ops) in self.retry.drain() {
            unwritten.extend(ops.into_iter().map(|op| op.update));
        }
        self.retry_len = 0;
        self.publish(Instant::now());
        if unwritten.is_empty() {
            tracing::info!(
                store = self.shared.store_kind,
                "writer stopped: everything written"
            );
        } else {
            tracing::error!(
                store = self.shared.store_kind,
                unwritten = unwritten.len(),
                deadline_reached,
                first_session = %unwritten[0].session(),
                "writer stopped with updates not written"
            );
        }
        ShutdownReport {
            unwritten,
            deadline_reached,
            task_failed: false,
            stats: self.shared.stats(),
        }
    }

    async fn flush(&mut self, mode: Mode) {
        let started = Instant::now();
        let store = self.shared.store_kind;
        if mode == Mode::Normal && !self.breaker.allows(started, store) {
            self.publish(started);
            return;
        }

        // Size the map that goes in (outside the lock) so producers never
        // grow it; then take the pending map: O(1) under the lock.
        let load = self.shared.pending.lock().active.len();
        self.taken.reserve(load + load / 8);
        {
            let mut p = self.shared.pending.lock();
            std::mem::swap(&mut p.active, &mut self.taken);
            p.dirty_keys = 0;
            std::mem::swap(&mut p.forgotten, &mut self.forgotten);
        }
        for id in self.forgotten.drain(..) {
            if let Some(ops) = self.retry.remove(&id) {
                self.retry_len -= ops.len();
            }
        }

        self.build(started, mode);
        let updates = self.batch.len();
        let wrote = updates > 0;
        if wrote {
            self.write(mode).await;
            self.settle(mode);
        }

        // Recycle the flushed entries; free those idle for an interval.
        let busy = self.taken.len();
        {
            let mut p = self.shared.pending.lock();
            std::mem::swap(&mut p.recycled, &mut self.taken);
            p.retry_waiting = self.retry_len > 0;
        }
        self.taken.clear();
        // The maps rotate, so each passes through here: after a burst,
        // give back tables far larger than the current load.
        let want = 2 * busy + MIN_TABLE;
        if self.taken.capacity() > 2 * want {
            self.taken.shrink_to(want);
        }
        // The batch buffers too (empty after `settle`), so a burst of
        // sessions leaves no memory once they are gone.
        let want = 2 * updates + MIN_TABLE;
        if self.batch.capacity() > 2 * want {
            self.batch.shrink_to(want);
            self.attempts.shrink_to(want);
            self.outcomes.shrink_to(want);
        }

        let now = Instant::now();
        if wrote {
            metrics::histogram!("shadowcat_writer_flush_seconds", "store" => store)
                .record((now - started).as_secs_f64());
        }
        self.publish(now);
    }

    /// Fills `batch` from the taken entries and the due retries.
    fn build(&mut self, now: Instant, mode: Mode) {
        self.batch.clear();
        self.attempts.clear();
        self.outcomes.clear();
        let Task {
            taken,
            retry,
            retry_len,
            batch,
            attempts,
            ..
        } = self;
        for (id, entry) in taken.iter_mut() {
            let mut waiting = if *retry_len > 0 {
                retry.get_mut(id)
            } else {
                None
            };
            if let Some(at) = entry.touch.take() {
                let mut at = at;
                if let Some(old) = waiting.as_deref_mut().and_then(|w| take_key(w, Key::Touch)) {
                    *retry_len -= 1;
                    if let Update::Touch { at: old_at, .. } = old.update {
                        at = at.max(old_at);
                    }
                }
                batch.push(Update::Touch {
                    session: id.clone(),
                    at,
                });
                attempts.push(0);
            }
            entry.slots.retain_mut(|slot| {
                if slot.op == SlotOp::Clean {
                    // Unused for a whole interval: let it go.
                    return false;
                }
                // A newer value replaces one waiting to retry.
                if waiting
                    .as_deref_mut()
                    .and_then(|w| take_key(w, Key::Stream(slot.stream)))
                    .is_some()
                {
                    *retry_len -= 1;
                }
                let keep = slot.op == SlotOp::Point;
                batch.push(if keep {
                    Update::Point {
                        session: id.clone(),
                        stream: slot.stream,
                        point: ResumptionPoint {
                            upstream_event_id: slot.has_id.then(|| slot.event_id.clone()),
                            client_seq: slot.client_seq,
                        },
                    }
                } else {
                    Update::EndStream {
                        session: id.clone(),
                        stream: slot.stream,
                    }
                });
                attempts.push(0);
                slot.op = SlotOp::Clean;
                keep
            });
            if waiting.is_some_and(|w| w.is_empty()) {
                retry.remove(id);
            }
        }

        if *retry_len > 0 {
            let fresh = batch.len();
            let final_pass = matches!(mode, Mode::Final { .. });
            retry.retain(|_, ops| {
                let mut i = 0;
                while i < ops.len() {
                    if final_pass || ops[i].due <= now {
                        let op = ops.swap_remove(i);
                        batch.push(op.update);
                        attempts.push(op.attempts);
                    } else {
                        i += 1;
                    }
                }
                !ops.is_empty()
            });
            let resent = batch.len() - fresh;
            *retry_len -= resent;
            self.shared
                .stats
                .retries
                .fetch_add(resent as u64, Ordering::Relaxed);
        }
        self.outcomes.resize(self.batch.len(), Outcome::Deferred);
    }

    /// Sends `batch` in chunks of `max_batch`, filling `outcomes`.
    async fn write(&mut self, mode: Mode) {
        let len = self.batch.len();
        let mut start = 0;
        while start < len {
            let end = (start + self.config.max_batch).min(len);
            self.write_chunk(start..end, mode).await;
            start = end;
        }
    }

    /// One chunk; a `Corrupt` error is bisected to find the poison update.
    async fn write_chunk(&mut self, chunk: Range<usize>, mode: Mode) {
        let store = self.shared.store_kind;
        let mut todo: SmallVec<[Range<usize>; 16]> = SmallVec::new();
        todo.push(chunk);
        while let Some(range) = todo.pop() {
            let now = Instant::now();
            let skip = match mode {
                Mode::Normal => {
                    self.shared.stopping.load(Ordering::Acquire) || !self.breaker.allows(now, store)
                }
                // Past the deadline: no more store calls, only the report.
                Mode::Final { deadline } => now >= deadline,
            };
            if skip {
                self.mark(range, Outcome::Deferred);
                continue;
            }
            match self.call(range.clone(), mode).await {
                Ok(()) => {
                    self.breaker.success(store);
                    self.mark(range, Outcome::Written);
                }
                Err(WriteError::Interrupted) => self.mark(range, Outcome::Deferred),
                Err(e) if e.is_retryable() => {
                    self.count_error();
                    tracing::warn!(
                        store,
                        error = %e,
                        updates = range.len(),
                        "store write failed; will retry"
                    );
                    self.breaker.failure(Instant::now(), store);
                    self.mark(range, Outcome::Failed);
                }
                Err(WriteError::Store(e @ StoreError::Corrupt { .. })) if range.len() > 1 => {
                    self.count_error();
                    tracing::warn!(
                        store,
                        error = %e,
                        updates = range.len(),
                        "store rejected a batch as corrupt; bisecting to find the bad update"
                    );
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                Err(e) => {
                    self.count_error();
                    let corrupt = matches!(e, WriteError::Store(StoreError::Corrupt { .. }));
                    if !corrupt {
                        // A refusing store is failing as a whole.
                        self.breaker.failure(Instant::now(), store);
                    }
                    tracing::error!(
                        store,
                        error = %e,
                        updates = range.len(),
                        first_session = %self.batch[range.start].session(),
                        "store refused updates for good; dropping them"
                    );
                    self.mark(range, Outcome::Rejected);
                }
            }
        }
    }

    async fn call(&self, range: Range<usize>, mode: Mode) -> Result<(), WriteError> {
        let updates = &self.batch[range];
        let stats = &self.shared.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("shadowcat_writer_batch_size", "store" => self.shared.store_kind)
            .record(updates.len() as f64);
        let mut limit = Instant::now() + self.config.write_timeout;
        if let Mode::Final { deadline } = mode {
            limit = limit.min(deadline);
        }
        let apply = tokio::time::timeout_at(limit, self.store.apply_batch(updates));
        let result = match mode {
            Mode::Normal => tokio::select! {
                r = apply => r,
                () = self.shared.stop.notified() => {
                    // Give the signal back for the main loop, which also
                    // checks `stopping`.
                    self.shared.stop.notify_one();
                    return Err(WriteError::Interrupted);
                }
            },
            Mode::Final { .. } => apply.await,
        };
        match result {
            Ok(r) => r.map_err(WriteError::Store),
            Err(_) => Err(WriteError::Timeout(self.config.write_timeout)),
        }
    }

    fn count_error(&self) {
        self.shared
            .stats
            .write_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    fn mark(&mut self, range: Range<usize>, outcome: Outcome) {
        self.outcomes[range].fill(outcome);
    }

    /// Applies the outcomes: counts writes, queues retries, drops the
    /// hopeless.
    fn settle(&mut self, mode: Mode) {
        let now = Instant::now();
        let store = self.shared.store_kind;
        let final_pass = matches!(mode, Mode::Final { .. });
        let mut batch = std::mem::take(&mut self.batch);
        let mut attempts = std::mem::take(&mut self.attempts);
        let mut outcomes = std::mem::take(&mut self.outcomes);
        let mut written = 0u64;
        let mut gave_up = 0u64;
        let mut rejected = 0u64;
        let mut first_lost: Option<SessionId> = None;
        for ((update, tries), outcome) in batch
            .drain(..)
            .zip(attempts.drain(..))
            .zip(outcomes.iter().copied())
        {
            match outcome {
                Outcome::Written => written += 1,
                Outcome::Deferred => {
                    if !self.requeue(update, tries, now) {
                        gave_up += 1;
                    }
                }
                Outcome::Failed => {
                    let tries = tries + 1;
                    if tries >= self.config.max_attempts && !final_pass {
                        gave_up += 1;
                        first_lost.get_or_insert_with(|| update.session().clone());
                    } else {
                        let due = now + self.backoff(tries);
                        if !self.requeue(update, tries, due) {
                            gave_up += 1;
                        }
                    }
                }
                Outcome::Rejected => {
                    rejected += 1;
                    if final_pass {
                        self.refused.push(update);
                    }
                }
            }
        }
        outcomes.clear();
        self.batch = batch;
        self.attempts = attempts;
        self.outcomes = outcomes;

        let stats = &self.shared.stats;
        stats.written.fetch_add(written, Ordering::Relaxed);
        if gave_up > 0 {
            tracing::error!(
                store,
                updates = gave_up,
                max_attempts = self.config.max_attempts,
                first_session = ?first_lost,
                "gave up on updates after repeated store failures (or retry set full); \
                 a newer value for the same key will be written afresh"
            );
            metrics::counter!("shadowcat_writer_dropped", "store" => store, "reason" => "attempts")
                .increment(gave_up);
        }
        if rejected > 0 {
            metrics::counter!("shadowcat_writer_dropped", "store" => store, "reason" => "rejected")
                .increment(rejected);
        }
        stats
            .dropped_failed
            .fetch_add(gave_up + rejected, Ordering::Relaxed);
    }

    /// Puts an update into the retry set; false when the set is full.
    fn requeue(&mut self, update: Update, attempts: u32, due: Instant) -> bool {
        let op = RetryOp {
            update,
            attempts,
            due,
        };
        if let Some(ops) = self.retry.get_mut(op.update.session()) {
            // `build` took every waiting value whose key this flush sent
            // (superseded or due), so the key cannot be waiting already.
            debug_assert!(
                !ops.iter().any(|o| key_of(&o.update) == key_of(&op.update)),
                "one waiting value per key"
            );
            ops.push(op);
        } else {
            if self.retry.len() >= self.config.max_pending_sessions {
                return false;
            }
            let mut ops = SmallVec::new();
            let id = op.update.session().clone();
            ops.push(op);
            self.retry.insert(id, ops);
        }
        self.retry_len += 1;
        true
    }

    /// Exponential backoff with "equal jitter": half fixed, half random.
    fn backoff(&mut self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(20);
        let full = self
            .config
            .retry_base
            .saturating_mul(1u32 << shift)
            .min(self.config.retry_cap);
        let half = full / 2;
        half + half.mul_f64(self.next_unit())
    }

    /// A uniform value in [0, 1) (xorshift64*).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exports counters and gauges; logs rejected submits at most once per
    /// [`DROP_LOG_EVERY`].
    fn publish(&mut self, now: Instant) {
        let store = self.shared.store_kind;
        let (counts, queued) = {
            let p = self.shared.pending.lock();
            (p.counts, p.dirty_keys)
        };
        let last = self.published.counts;
        metrics::counter!("shadowcat_writer_submitted", "store" => store)
            .increment(counts.submitted - last.submitted);
        metrics::counter!("shadowcat_writer_coalesced", "store" => store)
            .increment(counts.coalesced - last.coalesced);
        metrics::counter!("shadowcat_writer_dropped", "store" => store, "reason" => "full")
            .increment(counts.dropped_full - last.dropped_full);
        metrics::counter!("shadowcat_writer_dropped", "store" => store, "reason" => "closed")
            .increment(counts.dropped_closed - last.dropped_closed);
        self.published.counts = counts;

        let stats = &self.shared.stats;
        let task = TaskCounts {
            written: stats.written.load(Ordering::Relaxed),
            batches: stats.batches.load(Ordering::Relaxed),
            write_errors: stats.write_errors.load(Ordering::Relaxed),
            retries: stats.retries.load(Ordering::Relaxed),
        };
        let last = self.published.task;
        metrics::counter!("shadowcat_writer_written", "store" => store)
            .increment(task.written - last.written);
        metrics::counter!("shadowcat_writer_batches", "store" => store)
            .increment(task.batches - last.batches);
        metrics::counter!("shadowcat_writer_write_errors", "store" => store)
            .increment(task.write_errors - last.write_errors);
        metrics::counter!("shadowcat_writer_retries", "store" => store)
            .increment(task.retries - last.retries);
        self.published.task = task;
        stats
            .retry_queued
            .store(self.retry_len as u64, Ordering::Relaxed);
        stats
            .breaker
            .store(self.breaker.state.as_u8(), Ordering::Relaxed);
        metrics::gauge!("shadowcat_writer_queued", "store" => store)
            .set((queued + self.retry_len) as f64);
        metrics::gauge!("shadowcat_writer_breaker_state", "store" => store)
            .set(f64::from(self.breaker.state.as_u8()));

        let rejected = counts.dropped_full + counts.dropped_closed;
        let unlogged = rejected - self.published.dropped_logged;
        let due = self
            .published
            .last_drop_log
            .is_none_or(|t| now.duration_since(t) >= DROP_LOG_EVERY);
        if unlogged > 0 && due {
            tracing::warn!(
                store,
                dropped = unlogged,
                full = counts.dropped_full,
                closed = counts.dropped_closed,
                max_pending_sessions = self.config.max_pending_sessions,
                max_streams_per_session = self.config.max_streams_per_session,
                "writer dropped submits: pending map full or writer stopped"
            );
            self.published.dropped_logged = rejected;
            self.published.last_drop_log = Some(now);
        }
    }
}

/// Removes and returns the op for `key`, if one is waiting.
fn take_key(ops: &mut SmallVec<[RetryOp; 1]>, key: Key) -> Option<RetryOp> {
    let i = ops.iter().position(|o| key_of(&o.update) == key)?;
    Some(ops.swap_remove(i))
}
