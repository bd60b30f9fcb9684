//! The replay buffer: per stream, the encoded events sent toward the
//! client, by sequence number, so a client that reconnects with
//! `Last-Event-ID` gets exactly the events after it.
//!
//! Entries are [`Bytes`] slices of the batch the client was sent (cloning
//! one is a reference count, no copy). Sequence numbers are contiguous:
//! the buffer holds `first_seq()..next_seq()`.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Default [`ReplayLimits::max_events`].
pub const DEFAULT_REPLAY_EVENTS: usize = 4096;
/// Default [`ReplayLimits::max_bytes`]: 1 MiB.
pub const DEFAULT_REPLAY_BYTES: usize = 1 << 20;

/// How much one stream's [`ReplayBuffer`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Most events kept per stream. Default [`DEFAULT_REPLAY_EVENTS`].
    pub max_events: usize,
    /// Most encoded bytes kept per stream. Default
    /// [`DEFAULT_REPLAY_BYTES`].
    pub max_bytes: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            max_events: DEFAULT_REPLAY_EVENTS,
            max_bytes: DEFAULT_REPLAY_BYTES,
        }
    }
}

/// The events after a requested position are no longer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the replay buffer starts at event {first}; event {wanted} was evicted")]
pub struct Evicted {
    /// The first sequence number still held.
    pub first: u64,
    /// The one asked for.
    pub wanted: u64,
}

/// One stream's sent events, bounded by [`ReplayLimits`].
///
/// Eviction is explicit ([`ReplayBuffer::evict`]) and never drops an
/// event no client was sent yet, so the buffer may exceed its limits by
/// the events not yet sent (the proxy stops reading the upstream then).
#[derive(Debug)]
pub struct ReplayBuffer {
    entries: VecDeque<Bytes>,
    first_seq: u64,
    bytes: usize,
    limits: ReplayLimits,
}

impl ReplayBuffer {
    /// An empty buffer whose first event will have sequence number `first`.
    pub fn new(limits: ReplayLimits, first: u64) -> Self {
        ReplayBuffer {
            entries: VecDeque::new(),
            first_seq: first,
            bytes: 0,
            limits,
        }
    }

    /// The sequence number of the oldest event held (`next_seq` if none).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The sequence number the next pushed event gets.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encoded bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The limits.
    pub fn limits(&self) -> ReplayLimits {
        self.limits
    }

    /// Appends the next event; returns its sequence number.
    pub fn push(&mut self, event: Bytes) -> u64 {
        let seq = self.next_seq();
        self.bytes += event.len();
        self.entries.push_back(event);
        seq
    }

    /// Drops the oldest events while over a limit, but only events with a
    /// sequence number up to `sent` (already sent to a client).
    pub fn evict(&mut self, sent: u64) {
        while (self.entries.len() > self.limits.max_events || self.bytes > self.limits.max_bytes)
            && self.first_seq <= sent
        {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= e.len();
            self.first_seq += 1;
        }
    }

    /// True when the events from `seq` on can be replayed (`seq` may be
    /// `next_seq()`: nothing to replay yet).
    pub fn reaches(&self, seq: u64) -> bool {
        self.first_seq <= seq && seq <= self.next_seq()
    }

    /// Copies events from `seq` on into `out` until `out` holds at least
    /// `max_bytes` (always at least one event); returns the next sequence
    /// number to copy.
    pub fn copy_from(
        &self,
        seq: u64,
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
        for e in self.entries.iter().skip(start) {
            out.extend_from_slice(e);
            at += 1;
            if out.len() >= max_bytes {
                break;
            }
        }
        Ok(at)
    }

    /// Drops every event (the stream is released); sequence numbers go on.
    pub fn clear(&mut self) {
        self.first_seq = self.next_seq();
        self.entries = VecDeque::new();
        self.bytes = 0;
    }

    /// Heap bytes held: the payloads plus the entry ring.
    pub fn heap_bytes(&self) -> usize {
        self.bytes + self.entries.capacity() * std::mem::size_of::<Bytes>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> Bytes {
        Bytes::from(format!("data: {n}\n\n"))
    }

    #[test]
    fn push_copy_and_evict_only_what_was_sent() {
        let limits = ReplayLimits {
            max_events: 3,
            max_bytes: 1 << 20,
        };
        let mut b = ReplayBuffer::new(limits, 1);
        for n in 1..=5 {
            assert_eq!(b.push(ev(n)), n);
        }
        b.evict(1);
        assert_eq!((b.first_seq(), b.next_seq()), (2, 6), "only sent events go");
        b.evict(5);
        assert_eq!((b.first_seq(), b.len()), (3, 3));
        let mut out = BytesMut::new();
        assert_eq!(b.copy_from(4, &mut out, 1 << 20), Ok(6));
        assert_eq!(&out[..], b"data: 4\n\ndata: 5\n\n");
        assert_eq!(
            b.copy_from(2, &mut out, 1),
            Err(Evicted {
                first: 3,
                wanted: 2
            })
        );
        assert!(b.reaches(3) && b.reaches(6) && !b.reaches(2) && !b.reaches(7));
        let mut one = BytesMut::new();
        assert_eq!(b.copy_from(3, &mut one, 1), Ok(4), "at least one event");
        b.clear();
        assert_eq!((b.first_seq(), b.next_seq(), b.bytes()), (6, 6, 0));
    }

    #[test]
    fn byte_limit() {
        let limits = ReplayLimits {
            max_events: 100,
            max_bytes: 20,
        };
        let mut b = ReplayBuffer::new(limits, 10);
        for n in 0..5 {
            b.push(ev(n));
        }
        b.evict(u64::MAX);
        assert!(b.bytes() <= 20, "{}", b.bytes());
        assert_eq!(b.next_seq(), 15);
        assert_eq!(b.len(), 2);
    }
}
