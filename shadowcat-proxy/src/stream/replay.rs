//! The replay buffer: per stream, the encoded events toward the client,
//! by sequence number, so a client that reconnects with `Last-Event-ID`
//! gets exactly the events after it.
//!
//! Entries are [`Bytes`] slices of the batch the client was sent (cloning
//! one is a reference count, no copy). Sequence numbers are contiguous:
//! the buffer holds `first_seq()..next_seq()`.
//!
//! # Retention: sent is not received
//!
//! SSE has no acknowledgement: what the proxy wrote may still sit in
//! socket buffers or a middlebox when the connection dies. So a written
//! event is kept until at least [`ReplayLimits::retain_bytes`] of later
//! events were written after it, then evicted. A client that reconnects after any
//! event with less than `retain_bytes` written after it resumes exactly.
//! Events no client was written yet are never evicted: the reader of the
//! upstream stops instead ([`ReplayBuffer::is_full`]).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::budget::Budget;

/// Default [`ReplayLimits::max_events`].
pub(crate) const DEFAULT_REPLAY_EVENTS: usize = 8192;
/// Default [`ReplayLimits::max_bytes`]: 2 MiB.
pub(crate) const DEFAULT_REPLAY_BYTES: usize = 2 << 20;
/// Default [`ReplayLimits::retain_bytes`]: 1 MiB.
pub(crate) const DEFAULT_RETAIN_BYTES: usize = 1 << 20;

/// How much one stream's replay buffer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Most events read ahead of every client (not yet written to one);
    /// then the upstream is paused. Default 8,192.
    pub max_events: usize,
    /// Most encoded bytes held per stream, retained and read ahead; then
    /// the upstream is paused. Default 2 MiB.
    pub max_bytes: usize,
    /// Written events kept behind the newest written one, in bytes: a
    /// client cut with less than this in flight resumes exactly. Must be
    /// below `max_bytes` (the rest is read-ahead). Default
    /// 1 MiB.
    pub retain_bytes: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            max_events: DEFAULT_REPLAY_EVENTS,
            max_bytes: DEFAULT_REPLAY_BYTES,
            retain_bytes: DEFAULT_RETAIN_BYTES,
        }
    }
}

impl ReplayLimits {
    /// Checks that the limits leave room to read ahead.
    pub fn check(&self) -> Result<(), String> {
        if self.max_events == 0 || self.max_bytes == 0 {
            return Err("replay_max_events and replay_max_bytes must be above zero".into());
        }
        if self.retain_bytes >= self.max_bytes {
            return Err(format!(
                "replay_retain_bytes ({}) must be below replay_max_bytes ({})",
                self.retain_bytes, self.max_bytes
            ));
        }
        Ok(())
    }
}

/// The events after a requested position are no longer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the replay buffer starts at event {first}; event {wanted} was evicted")]
pub(crate) struct Evicted {
    /// The first sequence number still held.
    pub first: u64,
    /// The one asked for.
    pub wanted: u64,
}

/// One stream's events, bounded by [`ReplayLimits`].
#[derive(Debug)]
pub(crate) struct ReplayBuffer {
    entries: VecDeque<Bytes>,
    first_seq: u64,
    bytes: usize,
    /// Highest sequence number written to a client (`first_seq - 1`: none
    /// held).
    written: u64,
    /// Bytes of the held events up to `written`.
    written_bytes: usize,
    limits: ReplayLimits,
    /// The proxy's budget, charged with `bytes`.
    budget: Arc<Budget>,
}

impl ReplayBuffer {
    /// An empty buffer whose first event will have sequence number `first`
    /// (at least 1).
    pub(crate) fn new(limits: ReplayLimits, first: u64, budget: Arc<Budget>) -> Self {
        let first = first.max(1);
        ReplayBuffer {
            entries: VecDeque::new(),
            first_seq: first,
            bytes: 0,
            written: first - 1,
            written_bytes: 0,
            limits,
            budget,
        }
    }

    /// The sequence number of the oldest event held (`next_seq` if none).
    pub(crate) fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The sequence number the next pushed event gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// The highest sequence number written to a client.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Events held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Encoded bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Encoded bytes held.
    pub(crate) fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the next event; returns its sequence number.
    pub(crate) fn push(&mut self, event: Bytes) -> u64 {
        let seq = self.next_seq();
        self.bytes += event.len();
        self.budget.charge(event.len());
        self.entries.push_back(event);
        seq
    }

    /// Records that the events up to `seq` were written to a client.
    pub(crate) fn mark_written(&mut self, seq: u64) {
        let seq = seq.min(self.next_seq() - 1);
        if seq <= self.written {
            return;
        }
        let from = (self.written + 1 - self.first_seq) as usize;
        let to = (seq + 1 - self.first_seq) as usize;
        self.written_bytes += self.entries.range(from..to).map(Bytes::len).sum::<usize>();
        self.written = seq;
    }

    /// Drops the oldest written events that have at least `retain_bytes`
    /// of written events after them. Never drops an event not yet written,
    /// nor one still within the retention.
    pub(crate) fn evict(&mut self) {
        let before = self.bytes;
        while self.first_seq <= self.written {
            let Some(front) = self.entries.front() else {
                break;
            };
            if self.written_bytes - front.len() < self.limits.retain_bytes {
                break;
            }
            self.bytes -= front.len();
            self.written_bytes -= front.len();
            self.entries.pop_front();
            self.first_seq += 1;
        }
        self.budget.credit(before - self.bytes);
    }

    /// True when no more should be read into the buffer: `max_events`
    /// events no client was written yet, or `max_bytes` held in all.
    pub(crate) fn is_full(&self) -> bool {
        let unwritten = self.next_seq() - 1 - self.written;
        unwritten >= self.limits.max_events as u64 || self.bytes >= self.limits.max_bytes
    }

    /// True when the events from `seq` on can be replayed (`seq` may be
    /// `next_seq()`: nothing to replay yet).
    pub(crate) fn reaches(&self, seq: u64) -> bool {
        self.first_seq <= seq && seq <= self.next_seq()
    }

    /// Copies events from `seq` on, before `until`, into `out` until `out`
    /// holds at least `max_bytes` (always at least one event); returns the
    /// next sequence number to copy.
    pub(crate) fn copy_from(
        &self,
        seq: u64,
        until: u64,
        out: &mut BytesMut,
        max_bytes: usize,
    ) -> Result<u64, Evicted> {
        if seq < self.first_seq {
            return Err(Evicted {
                first: self.first_seq,
                wanted: seq,
            });
        }
        let mut at = seq;
        let start = (seq - self.first_seq) as usize;
        let n = until.saturating_sub(seq) as usize;
        for e in self.entries.iter().skip(start).take(n) {
            out.extend_from_slice(e);
            at += 1;
            if out.len() >= max_bytes {
                break;
            }
        }
        Ok(at)
    }

    /// Drops every event (the stream is released); sequence numbers go on.
    pub(crate) fn clear(&mut self) {
        self.first_seq = self.next_seq();
        self.written = self.first_seq - 1;
        self.written_bytes = 0;
        self.entries = VecDeque::new();
        self.budget.credit(self.bytes);
        self.bytes = 0;
    }
}

impl Drop for ReplayBuffer {
    fn drop(&mut self) {
        self.budget.credit(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded() -> Arc<Budget> {
        Arc::new(Budget::new(usize::MAX))
    }

    fn ev(n: u64) -> Bytes {
        Bytes::from(format!("data: {n}\n\n"))
    }

    fn limits(max_events: usize, max_bytes: usize, retain_bytes: usize) -> ReplayLimits {
        ReplayLimits {
            max_events,
            max_bytes,
            retain_bytes,
        }
    }

    #[test]
    fn push_copy_and_evict_only_what_was_written() {
        // Each event is 9 bytes; 18 bytes retained: two events.
        let mut b = ReplayBuffer::new(limits(3, 1 << 20, 18), 1, unbounded());
        for n in 1..=5 {
            assert_eq!(b.push(ev(n)), n);
        }
        b.evict();
        assert_eq!((b.first_seq(), b.next_seq()), (1, 6), "nothing written yet");
        assert!(b.is_full(), "5 events read ahead, 3 allowed");
        b.mark_written(1);
        b.evict();
        assert_eq!(b.first_seq(), 1, "within the retention");
        b.mark_written(5);
        b.evict();
        assert_eq!(
            (b.first_seq(), b.len()),
            (4, 2),
            "the last 18 bytes written"
        );
        assert!(!b.is_full());
        let mut out = BytesMut::new();
        assert_eq!(b.copy_from(4, u64::MAX, &mut out, 1 << 20), Ok(6));
        assert_eq!(&out[..], b"data: 4\n\ndata: 5\n\n");
        assert_eq!(
            b.copy_from(2, u64::MAX, &mut out, 1),
            Err(Evicted {
                first: 4,
                wanted: 2
            })
        );
        assert!(b.reaches(4) && b.reaches(6) && !b.reaches(3) && !b.reaches(7));
        let mut one = BytesMut::new();
        assert_eq!(
            b.copy_from(4, u64::MAX, &mut one, 1),
            Ok(5),
            "at least one event"
        );
        b.clear();
        assert_eq!((b.first_seq(), b.next_seq(), b.bytes()), (6, 6, 0));
        assert_eq!(b.written(), 5);
    }

    #[test]
    fn byte_limit() {
        let mut b = ReplayBuffer::new(limits(100, 20, 0), 10, unbounded());
        for n in 0..3 {
            assert!(!b.is_full());
            b.push(ev(n));
        }
        assert!(b.is_full(), "27 bytes held, 20 allowed");
        b.mark_written(u64::MAX);
        b.evict();
        assert_eq!((b.bytes(), b.len(), b.next_seq()), (0, 0, 13));
        assert!(!b.is_full());
    }

    /// A written event stays until `retain_bytes` were written after it,
    /// whatever else the buffer holds.
    #[test]
    fn written_events_are_retained_behind_the_write_position() {
        // Each event is 9 bytes ("data: N\n\n" for one digit).
        let mut b = ReplayBuffer::new(limits(2, 1 << 20, 27), 1, unbounded());
        for n in 1..=9 {
            b.push(ev(n));
        }
        b.mark_written(9);
        b.evict();
        // Events 7, 8, 9: 27 bytes written behind 9 (counting 9 itself).
        assert_eq!((b.first_seq(), b.len()), (7, 3));
        b.mark_written(9);
        b.evict();
        assert_eq!(b.first_seq(), 7, "marking again changes nothing");
        // Written up to 5 only: 1..=5 then 3 of them are retained.
        let mut b = ReplayBuffer::new(limits(2, 1 << 20, 27), 1, unbounded());
        for n in 1..=9 {
            b.push(ev(n));
        }
        b.mark_written(5);
        b.evict();
        assert_eq!(b.first_seq(), 3, "3, 4, 5 are the last 27 bytes written");
        assert!(b.is_full());
    }

    #[test]
    fn the_budget_follows_what_is_held() {
        let budget = unbounded();
        let mut b = ReplayBuffer::new(limits(100, 1 << 20, 9), 1, Arc::clone(&budget));
        for n in 1..=4 {
            b.push(ev(n));
        }
        assert_eq!(budget.used(), 36);
        b.mark_written(4);
        b.evict();
        assert_eq!(budget.used(), 9, "one event retained");
        b.push(ev(5));
        b.clear();
        assert_eq!(budget.used(), 0);
        b.push(ev(6));
        drop(b);
        assert_eq!(budget.used(), 0, "a dropped buffer gives its bytes back");
    }

    #[test]
    fn limits_check() {
        assert!(ReplayLimits::default().check().is_ok());
        assert!(limits(10, 100, 100).check().is_err());
        assert!(limits(0, 100, 10).check().is_err());
    }
}
