//! The `EventTracker`: the one place SSE event ids are tracked.
//!
//! One tracker per stream holds the stream's resumption point (the last
//! fresh event id) and a bounded dedup window of 64-bit id hashes, so a
//! replay after a reconnect drops the events the client already has.
//!
//! # Hot path
//!
//! [`EventTracker::record`] runs once per SSE event. The tracker is owned
//! by its stream's reader (`&mut self`, no lock: nothing is shared); it
//! hashes the id, scans a fixed ring of hashes and copies the id into an
//! inline buffer. It spawns nothing, awaits
//! nothing and allocates nothing in steady state: ids up to
//! [`INLINE_ID_BYTES`] bytes live inline; a longer id grows the buffer once
//! and that capacity is reused afterwards.
//!
//! # Empty ids
//!
//! WHATWG says an empty `id:` field resets the last event id. The proxy
//! treats that as "this event has no id": [`EventTracker::record`] with an
//! empty id returns [`Recorded::Fresh`] (deliver it, it cannot be deduped),
//! and leaves the resumption point and the window alone. Keeping the last real id is the safe choice for resumption: a
//! reconnect with it loses nothing, a reconnect without it may.
//!
//! # Dedup window
//!
//! The window remembers the hashes of the last `window` fresh ids (default
//! [`DEFAULT_WINDOW`]). An id is a duplicate if its hash is in the window. A
//! replay longer than the window re-delivers the older events, so size the
//! window to cover the largest replay an upstream may send twice. Two
//! different ids collide with probability about `window / 2^64` per event.
//! The hash has fixed keys: an upstream that crafts colliding ids can only
//! make its own stream drop its own events.

use std::fmt;

use smallvec::SmallVec;

/// Ids up to this many bytes are stored inline: recording or cloning them
/// never allocates.
pub const INLINE_ID_BYTES: usize = 64;

/// Default size of the dedup window, in ids (512 bytes of hashes).
pub const DEFAULT_WINDOW: usize = 64;

/// Largest dedup window a [`TrackerConfig`] accepts, in ids. `record` scans
/// the whole window, so its cost grows linearly with it.
pub const MAX_WINDOW: usize = 1024;

/// A bad [`TrackerConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerConfigError {
    /// The dedup window must hold between 1 and [`MAX_WINDOW`] ids.
    #[error("dedup window of {0} ids is outside 1..={MAX_WINDOW}")]
    Window(usize),
}

/// Settings for one [`EventTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    window: usize,
}

impl TrackerConfig {
    /// A config whose dedup window remembers the last `window` fresh ids.
    ///
    /// # Errors
    ///
    /// [`TrackerConfigError::Window`] unless `1 <= window <= MAX_WINDOW`.
    pub fn with_window(window: usize) -> Result<Self, TrackerConfigError> {
        if (1..=MAX_WINDOW).contains(&window) {
            Ok(Self { window })
        } else {
            Err(TrackerConfigError::Window(window))
        }
    }

    /// The dedup window size, in ids.
    pub fn window(&self) -> usize {
        self.window
    }
}

impl Default for TrackerConfig {
    /// A window of [`DEFAULT_WINDOW`] ids.
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
        }
    }
}

/// What [`EventTracker::record`] made of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Not seen within the window (or empty): deliver the event.
    Fresh,
    /// Seen within the window: drop the event.
    Duplicate,
}

/// Counts of what a tracker has recorded, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Non-empty ids that were fresh.
    pub fresh: u64,
    /// Ids dropped as duplicates.
    pub duplicate: u64,
    /// Empty ids (events without an id), always delivered.
    pub empty: u64,
}

/// Per-stream event id tracking: the resumption point and a bounded dedup
/// window. Owned by the one reader of its stream.
///
/// See the [module docs](self) for the hot-path guarantees, the empty-id
/// rule and the window semantics.
pub struct EventTracker {
    /// Bytes of the resumption point; valid UTF-8 (copied from a `&str`).
    last: SmallVec<[u8; INLINE_ID_BYTES]>,
    /// Whether `last` holds a resumption point.
    has_last: bool,
    /// Hashes of the last fresh ids; only `ring[..filled]` is meaningful.
    ring: Box<[u64]>,
    /// Slot the next fresh hash goes to.
    next: usize,
    /// How many slots hold a hash (grows to `ring.len()`, then stays).
    filled: usize,
    stats: TrackerStats,
}

impl fmt::Debug for EventTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventTracker")
            .field("last_event_id", &self.last_event_id())
            .field("window", &self.ring.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for EventTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl EventTracker {
    /// A tracker with the default window and no resumption point.
    pub fn new() -> Self {
        Self::with_config(TrackerConfig::default())
    }

    /// A tracker with `config` and no resumption point. Allocates the dedup
    /// window once, here.
    pub fn with_config(config: TrackerConfig) -> Self {
        EventTracker {
            last: SmallVec::new(),
            has_last: false,
            ring: vec![0; config.window].into_boxed_slice(),
            next: 0,
            filled: 0,
            stats: TrackerStats::default(),
        }
    }

    /// A tracker resuming a stream whose last delivered event was `id`
    /// (e.g. the upstream id a client's event id carries).
    ///
    /// `id` becomes the resumption point and enters the dedup window, so a
    /// replay that repeats it is dropped. An empty `id` means no
    /// resumption point.
    pub fn resuming_from(id: &str, config: TrackerConfig) -> Self {
        let mut tracker = Self::with_config(config);
        if !id.is_empty() {
            tracker.remember(id, id_hash(id.as_bytes()));
        }
        tracker
    }

    fn contains(&self, hash: u64) -> bool {
        // Fixed-size chunks with a branch-free fold inside, so the compiler
        // can unroll and vectorise; the window is a small bounded constant.
        let live = &self.ring[..self.filled];
        let mut chunks = live.chunks_exact(8);
        for chunk in &mut chunks {
            let chunk: &[u64; 8] = chunk.try_into().expect("chunk of 8");
            if chunk.iter().fold(false, |seen, &h| seen | (h == hash)) {
                return true;
            }
        }
        chunks.remainder().contains(&hash)
    }

    fn remember(&mut self, id: &str, hash: u64) {
        self.ring[self.next] = hash;
        self.next += 1;
        if self.next == self.ring.len() {
            self.next = 0;
        }
        if self.filled < self.ring.len() {
            self.filled += 1;
        }
        self.last.clear();
        // No allocation while `id` fits the inline (or already grown) buffer.
        self.last.extend_from_slice(id.as_bytes());
        self.has_last = true;
    }

    /// Records the id of an event about to be delivered and says whether to
    /// deliver it.
    ///
    /// A fresh id becomes the resumption point and enters the dedup window.
    /// A duplicate changes nothing. An empty id is always
    /// [`Recorded::Fresh`] and changes nothing (see the module docs).
    ///
    /// Bounded time: one hash of `id`, one scan of the window. No allocation
    /// unless `id` is longer than [`INLINE_ID_BYTES`] and longer than any id
    /// recorded before.
    pub fn record(&mut self, id: &str) -> Recorded {
        if id.is_empty() {
            self.stats.empty += 1;
            return Recorded::Fresh;
        }
        let hash = id_hash(id.as_bytes());
        if self.contains(hash) {
            self.stats.duplicate += 1;
            return Recorded::Duplicate;
        }
        self.remember(id, hash);
        self.stats.fresh += 1;
        Recorded::Fresh
    }

    /// The resumption point: the last fresh id (or the seeded one), to send
    /// as `Last-Event-ID`. Borrowed: no copy.
    pub fn last_event_id(&self) -> Option<&str> {
        if !self.has_last {
            return None;
        }
        // Copied from a `&str` in `remember`: always UTF-8.
        std::str::from_utf8(&self.last).ok()
    }

    /// Counts of fresh, duplicate and empty ids so far.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// The dedup window size, in ids.
    pub fn window(&self) -> usize {
        self.ring.len()
    }

    /// Heap bytes this tracker owns: the window (`8 * window`) and the id
    /// buffer if a long id made it spill.
    pub fn heap_bytes(&self) -> usize {
        let ring = std::mem::size_of_val::<[u64]>(&self.ring);
        let last = if self.last.spilled() {
            self.last.capacity()
        } else {
            0
        };
        ring + last
    }

    /// Total bytes per tracked stream: `size_of::<EventTracker>()` plus
    /// [`heap_bytes`](Self::heap_bytes).
    pub fn memory_footprint(&self) -> usize {
        std::mem::size_of::<Self>() + self.heap_bytes()
    }
}

/// Fixed-key 64-bit hash of an id: 8-byte words folded in with a full
/// 64x64->128 multiply each, seeded with the length, then a final mix.
/// Not DoS-resistant (see the module docs); fast and well mixed.
fn id_hash(bytes: &[u8]) -> u64 {
    const SEED: u64 = 0x243f_6a88_85a3_08d3;
    const K1: u64 = 0x9e37_79b9_7f4a_7c15;
    const K2: u64 = 0xbf58_476d_1ce4_e5b9;

    fn fold_mul(a: u64, b: u64) -> u64 {
        let full = u128::from(a) * u128::from(b);
        (full as u64) ^ ((full >> 64) as u64)
    }

    let mut h = fold_mul(SEED ^ bytes.len() as u64, K1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunk of 8"));
        h = fold_mul(h ^ word, K1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        h = fold_mul(h ^ u64::from_le_bytes(tail), K1);
    }
    fold_mul(h ^ K2, K2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_length_and_every_byte() {
        assert_ne!(id_hash(b"a"), id_hash(b"a\0"));
        assert_ne!(id_hash(b""), id_hash(b"\0"));
        let base = b"0123456789abcdef0123456789".to_vec();
        let h = id_hash(&base);
        for i in 0..base.len() {
            let mut changed = base.clone();
            changed[i] ^= 1;
            assert_ne!(id_hash(&changed), h, "flipping byte {i} kept the hash");
        }
    }

    #[test]
    fn window_wraps_and_forgets_oldest() {
        let mut tracker = EventTracker::with_config(TrackerConfig::with_window(3).unwrap());
        for id in ["a", "b", "c", "d"] {
            assert_eq!(tracker.record(id), Recorded::Fresh);
        }
        // "a" fell out of a window of 3; "b", "c", "d" are still in it.
        assert_eq!(tracker.record("b"), Recorded::Duplicate);
        assert_eq!(tracker.record("d"), Recorded::Duplicate);
        assert_eq!(tracker.record("a"), Recorded::Fresh);
        assert_eq!(tracker.record("b"), Recorded::Fresh);
    }
}
