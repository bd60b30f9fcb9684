//! The engine of one resumable stream: its shared state (the replay
//! buffer, the reader, who is attached), the client bodies that read it
//! from their cursors, and a session's registry of streams.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker, ready};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use parking_lot::Mutex;
use shadowcat_session::StreamId;
use shadowcat_transport::sse::encode_comment;
use tokio::time::{Instant, Sleep};

use super::cluster::{After, Logged, OwnerLog};
use super::reader::{Pump, Pumped};
use super::replay::ReplayBuffer;
use super::{BoxError, Closing, StreamSlot};
use super::{COALESCE_BYTES, End, StreamEnv};

/// Waiter id of the detached reader task.
const DRAIN_WAITER: u64 = u64::MAX;

struct StreamState {
    buffer: ReplayBuffer,
    /// `None` while someone polls it, or once the stream ended.
    pump: Option<Box<Pump>>,
    end: Option<End>,
    attached: u32,
    /// Bumped on every attach: tells a detached reader it was superseded.
    generation: u64,
    next_subscriber: u64,
    waiters: Vec<(u64, Waker)>,
    /// With no client attached: released by the linger sweeper at this
    /// time.
    keep_until: Option<Instant>,
    /// The shared replay log, when this instance owns the stream in a
    /// cluster: clients are sent only what it holds.
    log: Option<OwnerLog>,
}

impl StreamState {
    fn register(&mut self, who: u64, waker: &Waker) {
        if let Some((_, w)) = self.waiters.iter_mut().find(|(id, _)| *id == who) {
            if !w.will_wake(waker) {
                w.clone_from(waker);
            }
        } else {
            self.waiters.push((who, waker.clone()));
        }
    }

    fn wake_others(&mut self, me: u64) {
        self.waiters.retain(|(id, w)| {
            if *id == me {
                true
            } else {
                w.wake_by_ref();
                false
            }
        });
    }

    fn append(&mut self, batch: &Bytes, marks: &[usize]) {
        let mut from = 0;
        for &to in marks {
            self.buffer.push(batch.slice(from..to));
            from = to;
        }
    }

    /// The first seq clients may not be sent yet.
    fn visible_next(&self) -> u64 {
        match &self.log {
            Some(l) => (l.released + 1).min(self.buffer.next_seq()),
            None => self.buffer.next_seq(),
        }
    }

    /// A batch is being logged: clients wait for it, and the reader is not
    /// polled (one batch of a stream in the log's hands at a time).
    fn log_gating(&self) -> bool {
        self.log.as_ref().is_some_and(OwnerLog::gating)
    }

    /// Hands the batch just appended (from seq `first`) to the log. True
    /// when clients must wait for it.
    fn log_batch(
        &mut self,
        me: &Weak<StreamShared>,
        env: &StreamEnv,
        first: u64,
        batch: &Bytes,
        pump: &Pump,
    ) -> bool {
        let (Some(log), Some(cluster)) = (self.log.as_mut(), env.cluster.as_ref()) else {
            return false;
        };
        let mut entries = Vec::with_capacity(pump.marks().len());
        let mut from = 0;
        for (seq, &to) in (first..).zip(pump.marks()) {
            entries.push((seq, batch.slice(from..to)));
            from = to;
        }
        let up = pump.last_event_id().map(str::to_owned);
        cluster.submit(me.clone(), log, entries, up, false);
        log.gating()
    }

    /// The stream ended (not released): its end goes to the log, with its
    /// last event (seq `seq`) if any, else as an empty end marker.
    fn log_end(&mut self, me: &Weak<StreamShared>, env: &StreamEnv, seq: u64, last: Option<Bytes>) {
        let (Some(log), Some(cluster)) = (self.log.as_mut(), env.cluster.as_ref()) else {
            return;
        };
        cluster.submit(
            me.clone(),
            log,
            vec![(seq, last.unwrap_or_default())],
            None,
            true,
        );
    }

    /// No client attached, but a reader on another instance reads it.
    fn read_elsewhere(&self, now: Instant, linger: std::time::Duration) -> bool {
        self.log
            .as_ref()
            .is_some_and(|l| l.read_elsewhere(now, linger))
    }
}

/// One resumable stream of a session.
pub(crate) struct StreamShared {
    pub(crate) id: StreamId,
    state: Mutex<StreamState>,
    registry: Weak<StreamRegistry>,
    env: Arc<StreamEnv>,
    /// The waker the reader is polled with: the source wakes every client
    /// (and the detached reader) waiting on the stream, not just whichever
    /// polled it last.
    waker: Waker,
    this: Weak<StreamShared>,
}

/// Wakes everyone waiting on a stream.
struct WakeAll(Weak<StreamShared>);

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(stream) = self.0.upgrade() else {
            return;
        };
        // Drained in place (its capacity kept: no allocation per wake-up);
        // waking only schedules the tasks, never re-enters this lock.
        for (_, w) in stream.state.lock().waiters.drain(..) {
            w.wake();
        }
    }
}

impl std::fmt::Debug for StreamShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamShared")
            .field("id", &self.id.0)
            .finish_non_exhaustive()
    }
}

/// Why a client cannot resume from a stream's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotHeld {
    /// The events after the client's position were evicted: more than the
    /// retention was written after it.
    Evicted,
    /// The stream was released.
    Released,
}

impl NotHeld {
    /// The limit that was exceeded (a metric label).
    pub(crate) fn limit(self) -> &'static str {
        match self {
            NotHeld::Evicted => "replay_retain_bytes",
            NotHeld::Released => "detached_linger",
        }
    }

    /// Why, for a person: the limit and its value.
    pub(crate) fn cause(self, env: &StreamEnv) -> String {
        match self {
            NotHeld::Evicted => format!(
                "the proxy no longer holds the events after it: more than replay_retain_bytes ({} bytes) were written to the client after it",
                env.replay.retain_bytes
            ),
            NotHeld::Released => format!(
                "the proxy released the stream: no client came back within detached_linger ({:?}), or it was one of more than max_kept_complete_streams ({}) complete streams",
                env.linger, env.max_kept
            ),
        }
    }
}

impl StreamShared {
    /// A new stream read from `pump`, registered in `registry`.
    pub(crate) fn start(
        registry: &Arc<StreamRegistry>,
        id: StreamId,
        pump: Pump,
        env: Arc<StreamEnv>,
    ) -> Arc<Self> {
        Self::start_at(registry, id, pump, env, 1, None)
    }

    /// A stream whose first event gets seq `first`; with `lease`, taken
    /// over from an owner that died (its log goes on from `first`).
    pub(crate) fn start_at(
        registry: &Arc<StreamRegistry>,
        id: StreamId,
        pump: Pump,
        env: Arc<StreamEnv>,
        first: u64,
        lease: Option<shadowcat_session::Lease>,
    ) -> Arc<Self> {
        let log = match (&env.cluster, pump.shared_log()) {
            (Some(c), Some((session, _))) => {
                Some(OwnerLog::new(c.log(session, id.0), lease, first))
            }
            _ => None,
        };
        let stream = Arc::new_cyclic(|me| StreamShared {
            waker: Waker::from(Arc::new(WakeAll(me.clone()))),
            this: me.clone(),
            id,
            state: Mutex::new(StreamState {
                log,
                buffer: ReplayBuffer::new(env.replay, first, Arc::clone(&env.budget)),
                pump: Some(Box::new(pump)),
                end: None,
                attached: 0,
                generation: 0,
                next_subscriber: 0,
                waiters: Vec::new(),
                keep_until: None,
            }),
            registry: Arc::downgrade(registry),
            env,
        });
        registry.insert(Arc::clone(&stream));
        stream
    }

    /// The stream's number in its session.
    pub(crate) fn id(&self) -> StreamId {
        self.id
    }

    /// What the stream holds now (for the admin API).
    pub(crate) fn view(&self) -> StreamView {
        let st = self.state.lock();
        StreamView {
            stream: self.id.0,
            get: self.id.0 & crate::event_id::GET_STREAM_BIT != 0,
            next_seq: st.buffer.next_seq(),
            held_events: st.buffer.next_seq() - st.buffer.first_seq(),
            held_bytes: st.buffer.held_bytes(),
            written: st.buffer.written(),
            clients: st.attached,
            state: match st.end {
                None if st.attached > 0 => "live",
                None => "detached",
                Some(End::Complete) => "complete",
                Some(End::Failed) => "failed",
                Some(End::Released) => "released",
            },
            replay_log: st.log.as_ref().map(OwnerLog::state),
            read_elsewhere: st.log.as_ref().map(|l| l.remote_read),
        }
    }

    /// Attaches a client that wants the events from `from` on.
    pub(crate) fn attach(self: &Arc<Self>, from: u64) -> Result<StreamBody, NotHeld> {
        self.attach_with(from, None)
    }

    /// Attaches a client holding `slot`, one of its session's live
    /// streams, for as long as the client is attached.
    pub(crate) fn attach_with(
        self: &Arc<Self>,
        from: u64,
        slot: Option<StreamSlot>,
    ) -> Result<StreamBody, NotHeld> {
        let mut st = self.state.lock();
        if st.end == Some(End::Released) {
            return Err(NotHeld::Released);
        }
        if !st.buffer.reaches(from) {
            return Err(NotHeld::Evicted);
        }
        st.attached += 1;
        st.generation += 1;
        st.keep_until = None;
        let me = st.next_subscriber;
        st.next_subscriber += 1;
        // A detached reader stops; another client's body re-polls.
        st.wake_others(me);
        drop(st);
        let mut closing = self.env.closing.clone();
        Ok(StreamBody {
            stream: Arc::clone(self),
            me,
            cursor: from,
            first: from,
            out: BytesMut::new(),
            keepalive: Box::pin(tokio::time::sleep(
                super::FIRST_BYTE_WITHIN.min(self.env.keepalive),
            )),
            closing: Box::pin(async move {
                let _ = closing.wait_for(|c| *c).await;
            }),
            done: false,
            _slot: slot,
        })
    }

    /// Attaches a client from the first event no client was sent (a new
    /// GET on a stdio session takes over its GET stream).
    pub(crate) fn attach_unsent(self: &Arc<Self>) -> Result<StreamBody, NotHeld> {
        let from = {
            let st = self.state.lock();
            (st.buffer.written() + 1).max(st.buffer.first_seq())
        };
        self.attach(from)
    }

    /// Ends the stream now: the upstream side closes, the buffer goes,
    /// attached clients end.
    pub(crate) fn release(&self) {
        self.release_when(|_| true);
    }

    /// Releases the stream if `due` says so, in one look at its state (no
    /// client can attach in between). True if it did.
    fn release_when(&self, due: impl FnOnce(&StreamState) -> bool) -> bool {
        let (pump, lease) = {
            let mut st = self.state.lock();
            if !due(&st) {
                return false;
            }
            st.end = Some(End::Released);
            st.buffer.clear();
            for (_, w) in st.waiters.drain(..) {
                w.wake();
            }
            let lease = st
                .log
                .as_mut()
                .and_then(|l| Some((Arc::clone(&l.log), l.take_lease()?)));
            (st.pump.take(), lease)
        };
        drop(pump);
        if let (Some((log, lease)), Some(cluster)) = (lease, &self.env.cluster) {
            cluster.release(log, lease);
        }
        if let Some(reg) = self.registry.upgrade() {
            reg.remove(self);
        }
        true
    }

    /// Releases a stream no client came back to within its linger time
    /// (one a reader on another instance still reads is kept on).
    pub(crate) fn release_if_kept(self: &Arc<Self>, now: Instant) {
        let linger = self.env.linger;
        let again = {
            let mut st = self.state.lock();
            let due = st.attached == 0 && st.keep_until.is_some_and(|t| t <= now);
            if due && st.end != Some(End::Released) && st.read_elsewhere(now, linger) {
                st.keep_until = Some(now + linger);
                true
            } else {
                false
            }
        };
        if again {
            self.env.lingering.keep(self, now + linger);
            return;
        }
        if self.release_when(|st| st.attached == 0 && st.keep_until.is_some_and(|t| t <= now)) {
            tracing::debug!(
                stream = self.id.0,
                "no client came back for the stream within its linger time; released it"
            );
        }
    }

    /// Releases the stream if no client holds it and it was detached with
    /// the deadline `until` (for the buffer budget). True if it did.
    pub(crate) fn release_if_detached_at(&self, until: Instant) -> bool {
        let now = Instant::now();
        let linger = self.env.linger;
        let released = self.release_when(|st| {
            st.end != Some(End::Released)
                && st.attached == 0
                && st.keep_until == Some(until)
                && !st.read_elsewhere(now, linger)
        });
        if released {
            tracing::debug!(
                stream = self.id.0,
                "released a stream no client holds to stay within max_buffered_bytes"
            );
        }
        released
    }

    /// The cluster task's answer for the batch ending at `last`. True when
    /// this instance now holds the stream's lease (to renew).
    pub(crate) fn logged(&self, last: u64, gate: bool, end: bool, outcome: Logged) -> bool {
        let after = {
            let mut st = self.state.lock();
            let Some(log) = st.log.as_mut() else {
                return false;
            };
            let after = log.on_logged(last, gate, end, outcome);
            for (_, w) in st.waiters.drain(..) {
                w.wake();
            }
            after
        };
        match after {
            After::Nothing => false,
            After::Owned => true,
            After::Fenced => {
                self.fenced();
                false
            }
        }
    }

    /// The stream's log and lease, while this instance holds it.
    pub(crate) fn log_lease(
        &self,
    ) -> Option<(Arc<shadowcat_session::ReplayLog>, shadowcat_session::Lease)> {
        self.state.lock().log.as_ref()?.lease()
    }

    /// A renewal of the lease answered: what readers elsewhere sent counts
    /// as written here (their events are in the log).
    pub(crate) fn renewed(&self, info: shadowcat_session::Renewed, now: Instant) {
        let held = {
            let mut st = self.state.lock();
            let Some(log) = st.log.as_mut() else {
                return;
            };
            let before = log.remote_read;
            let held = log.renewed(info, now);
            let read = log.remote_read;
            if held && read > before {
                st.buffer.mark_written(read);
                st.buffer.evict();
                // A detached reader paused on a full buffer reads on.
                for (_, w) in st.waiters.drain(..) {
                    w.wake();
                }
            }
            held
        };
        if !held {
            self.fenced();
        }
    }

    /// Another instance took the stream over: it ends here; clients resume
    /// from the log (nothing they were sent is missing from it).
    fn fenced(&self) {
        metrics::counter!("shadowcat_replay_log_lost_leases_total").increment(1);
        tracing::warn!(
            stream = self.id.0,
            "another instance took this stream over (its lease was lost); ending it here, clients resume from the replay log"
        );
        if let Some(log) = self.state.lock().log.as_mut() {
            // Not ours to give back.
            let _ = log.take_lease();
        }
        self.release();
    }

    /// After a batch: when the budget is over its limit, release detached
    /// streams (oldest first) before reading on. Takes no stream lock of
    /// its own caller: call it with the state unlocked.
    fn settle_budget(&self) {
        if self.env.budget.is_over() {
            self.env.lingering.make_room(&self.env.budget);
        }
    }

    /// The detached reader: reads the upstream into the buffer while no
    /// client is attached. Ready when a client attached (true) or the
    /// stream ended (false).
    fn poll_detached(&self, cx: &mut Context<'_>, generation: u64) -> Poll<bool> {
        loop {
            let mut st = self.state.lock();
            if st.attached > 0 || st.generation != generation {
                // The upstream may hold this task's waker: whoever waits
                // reads it from now on.
                st.waiters.retain(|(id, _)| *id != DRAIN_WAITER);
                st.wake_others(DRAIN_WAITER);
                return Poll::Ready(true);
            }
            if st.end.is_some() {
                return Poll::Ready(false);
            }
            st.buffer.evict();
            if st.buffer.is_full() || st.log_gating() {
                // Full of events a client may not have: stop reading, so
                // a resuming client gets everything. Or a batch is being
                // logged: its answer wakes this task.
                st.register(DRAIN_WAITER, cx.waker());
                return Poll::Pending;
            }
            // Registered before the read: a wake-up during it is not lost.
            st.register(DRAIN_WAITER, cx.waker());
            let Some(mut pump) = st.pump.take() else {
                return Poll::Pending;
            };
            let next = st.buffer.next_seq();
            drop(st);
            let polled = pump.poll(&mut Context::from_waker(&self.waker), next);
            let mut st = self.state.lock();
            match polled {
                Poll::Ready(Pumped::Events(batch)) => {
                    st.append(&batch, pump.marks());
                    let me = self.me();
                    st.log_batch(&me, &self.env, next, &batch, &pump);
                    st.pump = Some(pump);
                    st.wake_others(DRAIN_WAITER);
                    drop(st);
                    self.settle_budget();
                }
                Poll::Ready(Pumped::Ended(end, last)) => {
                    if let Some(last) = &last {
                        st.buffer.push(last.clone());
                    }
                    st.end = Some(end);
                    if end != End::Released {
                        let me = self.me();
                        st.log_end(&me, &self.env, next, last);
                    }
                    st.wake_others(DRAIN_WAITER);
                    drop(st);
                    drop(pump);
                    return Poll::Ready(false);
                }
                Poll::Pending => {
                    // Still registered from before the read (or woken
                    // already by a wake-up during it).
                    st.pump = Some(pump);
                    return Poll::Pending;
                }
            }
        }
    }

    fn me(&self) -> Weak<StreamShared> {
        self.this.clone()
    }

    /// The last client went from a stream that is not complete: one task
    /// reads the upstream on into the buffer until a client attaches or
    /// the stream ends (the linger sweeper releases it meanwhile if no
    /// client comes back in time).
    fn read_detached(self: Arc<Self>, generation: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.release();
            return;
        };
        rt.spawn(async move {
            let mut closing = self.env.closing.clone();
            let read = std::future::poll_fn(|cx| self.poll_detached(cx, generation));
            tokio::select! {
                _ = read => {}
                _ = closing.wait_for(|c| *c) => self.release(),
            }
        });
    }
}

/// One client's view of a stream: its cursor in the buffer.
pub(crate) struct StreamBody {
    stream: Arc<StreamShared>,
    me: u64,
    cursor: u64,
    /// Where the client started.
    first: u64,
    out: BytesMut,
    keepalive: Pin<Box<Sleep>>,
    closing: Closing,
    done: bool,
    /// Counts this client toward its session's live streams; a stream no
    /// client holds counts toward none.
    _slot: Option<StreamSlot>,
}

impl std::fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBody")
            .field("stream", &self.stream.id.0)
            .field("cursor", &self.cursor)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A client fell behind the buffer (another client read the upstream on).
#[derive(Debug, thiserror::Error)]
#[error("the client fell behind the replay buffer; reconnect with Last-Event-ID")]
pub(crate) struct FellBehind;

impl StreamBody {
    /// The stream this body reads.
    pub(crate) fn shared(&self) -> &Arc<StreamShared> {
        &self.stream
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Events (sequence numbers) sent to this client so far.
    pub(crate) fn events_sent(&self) -> u64 {
        self.cursor.saturating_sub(self.first)
    }

    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.closing.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        loop {
            let mut st = self.stream.state.lock();
            if st.end == Some(End::Released) {
                self.done = true;
                return Poll::Ready(None);
            }
            let visible = st.visible_next();
            if self.cursor < visible {
                match st
                    .buffer
                    .copy_from(self.cursor, visible, &mut self.out, COALESCE_BYTES)
                {
                    Ok(next) => {
                        self.cursor = next;
                        st.buffer.mark_written(next - 1);
                        drop(st);
                        self.reset_keepalive();
                        return Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze()))));
                    }
                    Err(_) => {
                        drop(st);
                        self.done = true;
                        metrics::counter!("shadowcat_sse_stream_errors_total", "kind" => "behind")
                            .increment(1);
                        return Poll::Ready(Some(Err(Box::new(FellBehind))));
                    }
                }
            }
            // Registered before the read: a wake-up during it is not lost.
            st.register(self.me, cx.waker());
            if st.log_gating() {
                // The log's answer wakes this body.
                drop(st);
                return self.poll_keepalive(cx);
            }
            if st.end.is_some() {
                self.done = true;
                return Poll::Ready(None);
            }
            let Some(mut pump) = st.pump.take() else {
                drop(st);
                return self.poll_keepalive(cx);
            };
            let next = st.buffer.next_seq();
            drop(st);
            let polled = pump.poll(&mut Context::from_waker(&self.stream.waker), next);
            let mut st = self.stream.state.lock();
            match polled {
                Poll::Ready(Pumped::Events(batch)) => {
                    st.append(&batch, pump.marks());
                    let me = self.stream.me();
                    let gated = st.log_batch(&me, &self.stream.env, next, &batch, &pump);
                    st.pump = Some(pump);
                    if gated || st.log.is_some() {
                        // Sent once logged (or, degraded, from the buffer).
                        drop(st);
                        continue;
                    }
                    self.cursor = st.buffer.next_seq();
                    st.buffer.mark_written(self.cursor - 1);
                    st.buffer.evict();
                    st.wake_others(self.me);
                    drop(st);
                    self.stream.settle_budget();
                    self.reset_keepalive();
                    return Poll::Ready(Some(Ok(Frame::data(batch))));
                }
                Poll::Ready(Pumped::Ended(end, last)) => {
                    if let Some(last) = &last {
                        st.buffer.push(last.clone());
                    }
                    st.end = Some(end);
                    if end != End::Released {
                        let me = self.stream.me();
                        st.log_end(&me, &self.stream.env, next, last);
                    }
                    st.wake_others(self.me);
                    drop(st);
                    drop(pump);
                }
                Poll::Pending => {
                    // Still registered from before the read (or woken
                    // already by a wake-up during it).
                    st.pump = Some(pump);
                    drop(st);
                    return self.poll_keepalive(cx);
                }
            }
        }
    }

    fn poll_keepalive(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        ready!(self.keepalive.as_mut().poll(cx));
        self.reset_keepalive();
        let _ = encode_comment(&mut self.out, "");
        Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze()))))
    }

    fn reset_keepalive(&mut self) {
        let at = Instant::now() + self.stream.env.keepalive;
        self.keepalive.as_mut().reset(at);
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        let stream = &self.stream;
        let until = Instant::now() + stream.env.linger;
        let (last, generation, complete) = {
            let mut st = stream.state.lock();
            st.attached -= 1;
            st.waiters.retain(|(id, _)| *id != self.me);
            // Whoever waits may have to read the upstream now.
            st.wake_others(self.me);
            if st.attached == 0 {
                st.keep_until = Some(until);
            }
            (st.attached == 0, st.generation, st.end.is_some())
        };
        if !last {
            return;
        }
        if *stream.env.closing.borrow() {
            stream.release();
            return;
        }
        // Kept for the linger time for the client to come back (written
        // is not received, or it left early), then released by the one
        // linger sweeper unless a client attached again.
        stream.env.lingering.keep(stream, until);
        if complete {
            if let Some(reg) = stream.registry.upgrade() {
                reg.keep_complete(stream, stream.env.max_kept);
            }
        } else {
            Arc::clone(stream).read_detached(generation);
        }
    }
}

/// A snapshot of one stream, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamView {
    /// The stream number (as in the client's event ids).
    pub stream: u32,
    /// True for the session's GET stream, false for a request's stream.
    pub get: bool,
    /// The sequence number the next event gets.
    pub next_seq: u64,
    /// Events held in the replay buffer.
    pub held_events: u64,
    /// Bytes held in the replay buffer.
    pub held_bytes: usize,
    /// The highest sequence number written to a client.
    pub written: u64,
    /// Clients attached now.
    pub clients: u32,
    /// `live` (a client attached), `detached` (no client; the reader goes
    /// on), `complete`, `failed` or `released`.
    pub state: &'static str,
    /// With the shared replay log: `owner` (this instance holds the
    /// lease), `acquiring` (before the first append), `degraded` (Redis
    /// did not answer in time: events go out without the log) or `ended`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_log: Option<&'static str>,
    /// The highest seq a reader on another instance reported sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_elsewhere: Option<u64>,
}

/// A session's streams on this instance.
#[derive(Debug, Default)]
pub(crate) struct StreamRegistry {
    streams: Mutex<HashMap<u32, Arc<StreamShared>>>,
    /// Complete streams kept for their linger time, oldest first.
    kept: Mutex<VecDeque<Weak<StreamShared>>>,
}

impl StreamRegistry {
    pub(crate) fn get(&self, id: u32) -> Option<Arc<StreamShared>> {
        self.streams.lock().get(&id).cloned()
    }

    /// Every stream of the session on this instance, by number.
    pub(crate) fn all(&self) -> Vec<Arc<StreamShared>> {
        let mut all: Vec<_> = self.streams.lock().values().cloned().collect();
        all.sort_by_key(|s| s.id.0);
        all
    }

    /// Adds a stream. Complete streams past their linger time are released
    /// by the linger sweeper, and the oldest beyond the per-session cap by
    /// [`StreamRegistry::keep_complete`]: nothing here scans the map.
    fn insert(&self, stream: Arc<StreamShared>) {
        self.streams.lock().insert(stream.id.0, stream);
    }

    /// Records that `stream` completed and is kept for its linger time;
    /// releases the oldest kept stream when more than `max` are kept.
    fn keep_complete(&self, stream: &Arc<StreamShared>, max: usize) {
        let evicted = {
            let mut kept = self.kept.lock();
            // At most `max + 1` entries: a bounded, short scan. A stream
            // kept again (a client came back and left) keeps its place.
            kept.retain(|w| w.strong_count() > 0);
            if kept
                .iter()
                .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(stream)))
            {
                return;
            }
            kept.push_back(Arc::downgrade(stream));
            if kept.len() > max.max(1) {
                kept.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = evicted.and_then(|w| w.upgrade()) {
            old.release_if_kept(Instant::now() + old.env.linger);
        }
    }

    fn remove(&self, stream: &StreamShared) {
        let mut map = self.streams.lock();
        if map
            .get(&stream.id.0)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), stream))
        {
            map.remove(&stream.id.0);
        }
    }

    /// Releases every stream (the session ended).
    pub(crate) fn release_all(&self) {
        let all: Vec<_> = self.streams.lock().drain().map(|(_, s)| s).collect();
        for s in all {
            s.release();
        }
    }
}
