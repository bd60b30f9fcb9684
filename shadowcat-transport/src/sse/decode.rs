//! The incremental SSE decoder: a plain state machine over [`Bytes`]
//! chunks that follows the WHATWG "parse an event stream" rules.
//!
//! Feed chunks with [`Decoder::push`], drain items by iterating the decoder
//! until it yields `None`, and call [`Decoder::finish`] when the stream ends.
//! Every buffer is bounded by [`DecoderLimits`]; the limits tests sit at the
//! bottom of this file with the rule tests.

use std::collections::VecDeque;
use std::mem;

use bytes::{Buf, Bytes, BytesMut};

use super::text::Utf8Bytes;

/// Buffers that grew larger than this for one big line or event are
/// released afterwards, so an idle stream holds little memory.
const RETAINED_BUFFER: usize = 64 * 1024;

/// The UTF-8 byte order mark, stripped once at the start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// The decoder's bounds. Exceeding one is a [`DecodeError`] and poisons the
/// decoder; nothing is ever buffered beyond them.
///
/// One JSON-RPC message travels as one `data` line, so the line limit must
/// hold the largest message a server sends (tool results with embedded
/// images reach a few MiB); the defaults leave room for that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// The longest line, in bytes, not counting its line ending. Checked as
    /// bytes arrive: an over-long line is rejected before it is buffered
    /// whole. Default [`DecoderLimits::DEFAULT_MAX_LINE_LEN`] (8 MiB).
    pub max_line_len: usize,
    /// The largest data payload of one event, in bytes: the values of its
    /// `data` lines joined by LF. The `id` and `event` values are single
    /// lines and so bounded by `max_line_len`. Default
    /// [`DecoderLimits::DEFAULT_MAX_EVENT_SIZE`] (8 MiB).
    pub max_event_size: usize,
    /// The most field lines (comments and the blank line excluded) one
    /// event may have; bounds the work per event when lines are tiny.
    /// Default [`DecoderLimits::DEFAULT_MAX_FIELDS_PER_EVENT`] (65,536).
    pub max_fields_per_event: usize,
}

impl DecoderLimits {
    /// Default for [`DecoderLimits::max_line_len`]: 8 MiB.
    pub const DEFAULT_MAX_LINE_LEN: usize = 8 << 20;
    /// Default for [`DecoderLimits::max_event_size`]: 8 MiB.
    pub const DEFAULT_MAX_EVENT_SIZE: usize = 8 << 20;
    /// Default for [`DecoderLimits::max_fields_per_event`]: 65,536.
    pub const DEFAULT_MAX_FIELDS_PER_EVENT: usize = 65_536;
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_line_len: Self::DEFAULT_MAX_LINE_LEN,
            max_event_size: Self::DEFAULT_MAX_EVENT_SIZE,
            max_fields_per_event: Self::DEFAULT_MAX_FIELDS_PER_EVENT,
        }
    }
}

/// A stream that broke one of the [`DecoderLimits`]. The decoder is
/// poisoned afterwards until [`Decoder::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A line was longer than [`DecoderLimits::max_line_len`].
    #[error("SSE line longer than the limit of {limit} bytes")]
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// An event's data grew past [`DecoderLimits::max_event_size`].
    #[error("SSE event data larger than the limit of {limit} bytes")]
    EventTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// An event had more than [`DecoderLimits::max_fields_per_event`]
    /// field lines.
    #[error("SSE event with more than {limit} field lines")]
    TooManyFields {
        /// The limit in force.
        limit: usize,
    },
}

/// One dispatched event.
///
/// `data` with no bytes is an event all the same (`data:` with an empty
/// value): MCP 2025-11-25 servers send one with an id as a *priming* event.
/// It is not a JSON-RPC message; see [`SseEvent::is_priming`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The stream's last event id when the event was dispatched (WHATWG
    /// `lastEventId`); `None` when empty. It persists across events, so an
    /// event without an `id` line carries the previous event's id.
    pub id: Option<Utf8Bytes>,
    /// Whether this event's own block had an `id` line (an empty one
    /// included). When false, `id` was inherited and does not name this
    /// event: do not deduplicate on it.
    pub has_own_id: bool,
    /// The `event` field; `None` when absent or empty, meaning `message`.
    pub event: Option<Utf8Bytes>,
    /// The `data` lines' values joined by LF, as raw bytes (zero-copy when
    /// the event had one data line inside one chunk).
    pub data: Bytes,
}

impl SseEvent {
    /// The event type: the `event` field, or `message` when there was none.
    pub fn event_type(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    /// True when the event's data is empty, as in an MCP priming event.
    /// Such an event must never be forwarded as a JSON-RPC message.
    pub fn is_priming(&self) -> bool {
        self.data.is_empty()
    }
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// An event was dispatched (a blank line ended a block with at least
    /// one `data` line).
    Event(SseEvent),
    /// A blank line ended a block that had an `id` line but no `data` line.
    /// WHATWG dispatches nothing for it, yet the stream's last event id is
    /// now this value (`None`: reset by an empty `id`), which is what a
    /// client sends back as `Last-Event-ID`.
    IdOnly(Option<Utf8Bytes>),
    /// A valid `retry` field: the reconnection time in milliseconds
    /// (saturating at `u64::MAX`). Yielded at once, whether or not an event
    /// follows.
    Retry(u64),
}

/// The data buffer of the event being built.
#[derive(Debug, Default)]
enum Data {
    /// No `data` line yet: a blank line dispatches nothing.
    #[default]
    Empty,
    /// One `data` line, sharing its input chunk.
    Slice(Bytes),
    /// Several lines (or one that spanned chunks), joined in `Decoder::data`.
    Owned,
}

/// The incremental SSE decoder.
///
/// A plain state machine: [`Decoder::push`] hands it a chunk, iterating
/// yields items until the input is used up (then `None`; push more and
/// iterate again), and [`Decoder::finish`] ends the stream. Chunk
/// boundaries never change what is decoded.
///
/// Rules (WHATWG "parse an event stream"): one UTF-8 BOM is stripped at the
/// start of the stream only; lines end in CRLF, LF or CR, mixed, and a CR
/// ending one chunk with an LF starting the next is one line ending; a
/// blank line dispatches; lines starting with `:` are comments and are
/// skipped; a line splits at its first colon and one leading space of the
/// value is dropped; a line without a colon is a field with an empty value;
/// field names are case-sensitive and unknown ones are ignored; `data`
/// values are joined by LF; an `id` containing NUL is ignored and an empty
/// one resets the last event id, which otherwise persists; `retry` counts
/// only if all ASCII digits; an empty `event` means `message`; a block
/// with no `data` line dispatches nothing but still moves the last event id
/// (yielded as [`SseItem::IdOnly`] when the block had an `id`); an event
/// without its closing blank line at the end of the stream is discarded.
///
/// Ids and event names that are not valid UTF-8 are decoded with U+FFFD
/// replacement, as WHATWG does; `data` is kept as raw bytes.
///
/// Limits: see [`DecoderLimits`]. After a [`DecodeError`] the decoder is
/// poisoned: it yields `None` and drops pushed chunks until
/// [`Decoder::finish`] readies it for a new stream.
///
/// Steady state allocates nothing per event, except the event's own data
/// buffer when its data had several lines or spanned chunks. Internal
/// buffers are reused; one that grew past 64 KiB for a large line or event
/// is released after it.
#[derive(Debug)]
pub struct Decoder {
    limits: DecoderLimits,
    /// The chunk being parsed.
    cur: Bytes,
    /// Chunks pushed behind `cur`.
    queued: VecDeque<Bytes>,
    /// The start of a line that spanned a chunk boundary.
    line: BytesMut,
    /// Still at the start of the stream, deciding whether a BOM is there.
    at_start: bool,
    /// BOM bytes matched so far while `at_start`.
    bom_matched: usize,
    /// The previous chunk ended in CR: an LF starting the next is skipped.
    after_cr: bool,
    data: Data,
    /// Joined data for [`Data::Owned`]; reused between events.
    data_buf: BytesMut,
    event: Option<Utf8Bytes>,
    /// WHATWG "last event ID buffer"; `None` when empty.
    id: Option<Utf8Bytes>,
    /// `id` is a slice of a pushed chunk.
    id_shared: bool,
    /// When its chunk is used up, a chunk-sliced `id` moves here (and `id`
    /// becomes `None`), so that no chunk stays pinned by the id alone; the
    /// buffer is reused, so this allocates nothing in steady state.
    id_store: Vec<u8>,
    /// The last event ID is in `id_store`.
    id_stored: bool,
    /// The current block had an effective `id` line.
    block_has_id: bool,
    /// Field lines in the current block.
    fields: usize,
    poisoned: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DecoderLimits::default())
    }
}

impl Decoder {
    /// A decoder at the start of a stream, with `limits`.
    pub fn new(limits: DecoderLimits) -> Self {
        Self {
            limits,
            cur: Bytes::new(),
            queued: VecDeque::new(),
            line: BytesMut::new(),
            at_start: true,
            bom_matched: 0,
            after_cr: false,
            data: Data::Empty,
            data_buf: BytesMut::new(),
            event: None,
            id: None,
            id_shared: false,
            id_store: Vec::new(),
            id_stored: false,
            block_has_id: false,
            fields: 0,
            poisoned: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &DecoderLimits {
        &self.limits
    }

    /// Heap bytes the decoder itself holds (its line and data buffers and
    /// its chunk queue), not counting the pushed chunks it shares.
    pub fn heap_bytes(&self) -> usize {
        self.line.capacity()
            + self.data_buf.capacity()
            + self.id_store.capacity()
            + self.queued.capacity() * mem::size_of::<Bytes>()
    }

    /// True after a [`DecodeError`], until [`Decoder::finish`].
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Moves a chunk-sliced `id` into `id_store`.
    fn detach_id(&mut self) {
        // Mid-block, the id goes out with the block's dispatch soon: kept.
        if !self.id_shared || self.block_has_id {
            return;
        }
        self.id_shared = false;
        let Some(id) = self.id.take() else {
            return;
        };
        self.id_store.clear();
        self.id_store.extend_from_slice(id.as_bytes());
        self.id_stored = true;
    }

    /// The last event ID, brought back from `id_store` if it was moved
    /// there (one allocation, only for a block without its own `id` line
    /// after a chunk boundary).
    fn last_id(&mut self) -> Option<Utf8Bytes> {
        if self.id_stored {
            self.id_stored = false;
            self.id = Some(Utf8Bytes::from_utf8_lossy(Bytes::copy_from_slice(
                &self.id_store,
            )));
        }
        self.id.clone()
    }

    /// Queues the next chunk of the stream. Iterate the decoder to decode
    /// it. A poisoned decoder drops the chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if self.poisoned || chunk.is_empty() {
            return;
        }
        if self.cur.is_empty() && self.queued.is_empty() {
            self.cur = chunk;
        } else {
            self.queued.push_back(chunk);
        }
    }

    /// Ends the stream: whatever is not yet a dispatched event (an event
    /// without its closing blank line, a line without its ending, chunks
    /// not yet iterated) is discarded, and the decoder is ready for a new
    /// stream (a reconnection): BOM allowed again, last event id empty,
    /// poison cleared. Returns true if anything was discarded, i.e. the
    /// stream ended mid-event.
    pub fn finish(&mut self) -> bool {
        let truncated = !self.cur.is_empty()
            || !self.queued.is_empty()
            || !self.line.is_empty()
            || (self.at_start && self.bom_matched > 0)
            || self.fields > 0;
        self.cur = Bytes::new();
        self.queued.clear();
        self.line.clear();
        self.at_start = true;
        self.bom_matched = 0;
        self.after_cr = false;
        self.data = Data::Empty;
        self.data_buf.clear();
        self.event = None;
        self.id = None;
        self.id_shared = false;
        self.id_stored = false;
        self.block_has_id = false;
        self.fields = 0;
        self.poisoned = false;
        truncated
    }

    /// Drops everything held: a poisoned decoder buffers nothing.
    fn poison(&mut self) {
        self.finish();
        self.poisoned = true;
    }

    /// Parses from `chunk` up to one line ending (or the end of the chunk).
    fn step(&mut self, chunk: &mut Bytes) -> Result<Option<SseItem>, DecodeError> {
        if self.at_start {
            while self.bom_matched < BOM.len() {
                match chunk.first() {
                    None => return Ok(None),
                    Some(&b) if b == BOM[self.bom_matched] => {
                        chunk.advance(1);
                        self.bom_matched += 1;
                    }
                    Some(_) => {
                        // Not a BOM after all: the bytes matched so far are
                        // the start of the first line.
                        self.line.extend_from_slice(&BOM[..self.bom_matched]);
                        break;
                    }
                }
            }
            self.at_start = false;
        }
        if mem::take(&mut self.after_cr) && chunk.first() == Some(&b'\n') {
            chunk.advance(1);
            return Ok(None);
        }
        let max = self.limits.max_line_len;
        let Some(end) = find_line_end(chunk) else {
            if self.line.len() + chunk.len() > max {
                return Err(DecodeError::LineTooLong { limit: max });
            }
            self.line.extend_from_slice(chunk);
            chunk.clear();
            return Ok(None);
        };
        if self.line.len() + end > max {
            return Err(DecodeError::LineTooLong { limit: max });
        }
        let cr = chunk[end] == b'\r';
        let item = if self.line.is_empty() {
            self.line_done(&chunk[..end], Some(chunk))
        } else {
            self.line.extend_from_slice(&chunk[..end]);
            let mut line = mem::take(&mut self.line);
            let item = self.line_done(&line, None);
            if line.capacity() <= RETAINED_BUFFER {
                line.clear();
                self.line = line;
            }
            item
        };
        chunk.advance(end + 1);
        if cr {
            match chunk.first() {
                Some(b'\n') => chunk.advance(1),
                Some(_) => {}
                None => self.after_cr = true,
            }
        }
        item
    }

    /// Handles one complete line. `owner`, when given, is the chunk `line`
    /// points into, so values can share it.
    fn line_done(
        &mut self,
        line: &[u8],
        owner: Option<&Bytes>,
    ) -> Result<Option<SseItem>, DecodeError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        self.fields += 1;
        if self.fields > self.limits.max_fields_per_event {
            return Err(DecodeError::TooManyFields {
                limit: self.limits.max_fields_per_event,
            });
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => self.append_data(value, owner)?,
            b"event" => self.event = text(value, owner),
            b"id" if !value.contains(&0) => {
                self.id = text(value, owner);
                self.id_shared = owner.is_some();
                self.id_stored = false;
                self.block_has_id = true;
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, &d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                return Ok(Some(SseItem::Retry(ms)));
            }
            _ => {}
        }
        Ok(None)
    }

    fn append_data(&mut self, value: &[u8], owner: Option<&Bytes>) -> Result<(), DecodeError> {
        let len = match &self.data {
            Data::Empty => value.len(),
            Data::Slice(first) => first.len() + 1 + value.len(),
            Data::Owned => self.data_buf.len() + 1 + value.len(),
        };
        if len > self.limits.max_event_size {
            return Err(DecodeError::EventTooLarge {
                limit: self.limits.max_event_size,
            });
        }
        match mem::take(&mut self.data) {
            Data::Empty => match owner {
                Some(chunk) => self.data = Data::Slice(chunk.slice_ref(value)),
                None => {
                    self.data_buf.extend_from_slice(value);
                    self.data = Data::Owned;
                }
            },
            Data::Slice(first) => {
                self.data_buf.reserve(len);
                self.data_buf.extend_from_slice(&first);
                self.data_buf.extend_from_slice(b"\n");
                self.data_buf.extend_from_slice(value);
                self.data = Data::Owned;
            }
            Data::Owned => {
                self.data_buf.extend_from_slice(b"\n");
                self.data_buf.extend_from_slice(value);
                self.data = Data::Owned;
            }
        }
        Ok(())
    }

    /// A blank line: dispatch the block and start the next one.
    fn dispatch(&mut self) -> Option<SseItem> {
        self.fields = 0;
        let has_own_id = mem::take(&mut self.block_has_id);
        let event = self.event.take();
        let data = match mem::take(&mut self.data) {
            Data::Empty => return has_own_id.then(|| SseItem::IdOnly(self.last_id())),
            Data::Slice(data) => data,
            Data::Owned => {
                let data = self.data_buf.split().freeze();
                if self.data_buf.capacity() > RETAINED_BUFFER {
                    self.data_buf = BytesMut::new();
                }
                data
            }
        };
        let id = self.last_id();
        Some(SseItem::Event(SseEvent {
            id,
            has_own_id,
            event,
            data,
        }))
    }
}

impl Iterator for Decoder {
    type Item = Result<SseItem, DecodeError>;

    /// The next item from the input pushed so far; `None` when it is used
    /// up (more may come after the next [`Decoder::push`]) or after an
    /// error.
    fn next(&mut self) -> Option<Self::Item> {
        while !self.poisoned {
            if self.cur.is_empty() {
                match self.queued.pop_front() {
                    Some(next) => self.cur = next,
                    None => {
                        // An empty slice still holds its chunk, and so does
                        // an id sliced from it: let go, so the reader's
                        // buffer can be reused in place.
                        self.cur = Bytes::new();
                        self.detach_id();
                        return None;
                    }
                }
            }
            let mut chunk = mem::take(&mut self.cur);
            let step = self.step(&mut chunk);
            self.cur = chunk;
            match step {
                Ok(Some(item)) => return Some(Ok(item)),
                Ok(None) => {}
                Err(e) => {
                    self.poison();
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// The index of the first CR or LF.
///
/// Tests 32-byte blocks with a branch-free reduction, which the compiler
/// turns into SIMD compares; a byte loop would cost a branch per byte on
/// every `data` line.
pub(super) fn find_line_end(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 32;
    let is_end = |b: &u8| *b == b'\n' || *b == b'\r';
    let mut blocks = bytes.chunks_exact(BLOCK);
    let mut start = 0;
    for block in &mut blocks {
        let hit = block
            .iter()
            .fold(false, |hit, &b| hit | (b == b'\n') | (b == b'\r'));
        if hit {
            return block.iter().position(is_end).map(|i| start + i);
        }
        start += BLOCK;
    }
    blocks
        .remainder()
        .iter()
        .position(is_end)
        .map(|i| start + i)
}

/// A field value as text, sharing `owner` when given; `None` when empty.
fn text(value: &[u8], owner: Option<&Bytes>) -> Option<Utf8Bytes> {
    if value.is_empty() {
        return None;
    }
    let bytes = match owner {
        Some(chunk) => chunk.slice_ref(value),
        None => Bytes::copy_from_slice(value),
    };
    Some(Utf8Bytes::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Out = Vec<Result<SseItem, DecodeError>>;

    /// An expected event with data `data` and nothing else.
    fn ev(data: &str) -> SseEvent {
        SseEvent {
            id: None,
            has_own_id: false,
            event: None,
            data: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    /// The event with its own `id` line.
    fn with_id(mut e: SseEvent, id: &str) -> SseEvent {
        e.id = Some(Utf8Bytes::from(id));
        e.has_own_id = true;
        e
    }

    /// The event with an `id` inherited from an earlier event.
    fn inherits(mut e: SseEvent, id: &str) -> SseEvent {
        e.id = Some(Utf8Bytes::from(id));
        e
    }

    fn named(mut e: SseEvent, name: &str) -> SseEvent {
        e.event = Some(Utf8Bytes::from(name));
        e
    }

    fn ok(e: SseEvent) -> Result<SseItem, DecodeError> {
        Ok(SseItem::Event(e))
    }

    fn id_only(id: Option<&str>) -> Result<SseItem, DecodeError> {
        Ok(SseItem::IdOnly(id.map(Utf8Bytes::from)))
    }

    /// Decodes `chunks` as one stream; returns the items and whether
    /// `finish` discarded anything.
    fn decode_with(limits: DecoderLimits, chunks: &[&[u8]]) -> (Out, bool) {
        let mut dec = Decoder::new(limits);
        let mut out = Vec::new();
        for chunk in chunks {
            dec.push(Bytes::copy_from_slice(chunk));
            out.extend(dec.by_ref());
        }
        (out, dec.finish())
    }

    /// Asserts that `chunks` decode to `want`, and that the same bytes give
    /// the same items in one chunk, split at every single point and fed
    /// one byte at a time. Returns whether the stream ended mid-event.
    fn check_with(
        limits: DecoderLimits,
        chunks: &[&[u8]],
        want: &[Result<SseItem, DecodeError>],
    ) -> bool {
        let (got, truncated) = decode_with(limits, chunks);
        assert_eq!(got, want, "chunks {chunks:?}");
        let all: Vec<u8> = chunks.concat();
        assert_eq!(
            decode_with(limits, &[&all]),
            (got.clone(), truncated),
            "one chunk"
        );
        for at in 0..=all.len() {
            let (a, b) = all.split_at(at);
            assert_eq!(
                decode_with(limits, &[a, b]),
                (got.clone(), truncated),
                "split at {at}"
            );
        }
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(decode_with(limits, &bytes), (got, truncated), "bytewise");
        truncated
    }

    fn check(chunks: &[&[u8]], want: &[Result<SseItem, DecodeError>]) -> bool {
        check_with(DecoderLimits::default(), chunks, want)
    }

    #[test]
    fn simple_event() {
        assert!(!check(&[b"data: hello\n\n"], &[ok(ev("hello"))]));
    }

    #[test]
    fn bom_is_stripped_once_at_start() {
        check(&[b"\xEF\xBB\xBFdata: a\n\n"], &[ok(ev("a"))]);
        // A second BOM is part of the first line: an unknown field.
        check(
            &[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"],
            &[ok(ev("b"))],
        );
        // A BOM later in the stream is not stripped.
        check(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"], &[ok(ev("a"))]);
    }

    #[test]
    fn bom_split_across_chunks() {
        check(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"], &[ok(ev("a"))]);
        check(&[b"\xEF\xBB", b"\xBF", b"data: a\n\n"], &[ok(ev("a"))]);
    }

    #[test]
    fn partial_bom_is_line_content() {
        // EF BB followed by something else: those bytes start a line.
        check(&[b"\xEF\xBB", b"data: a\n\ndata: b\n\n"], &[ok(ev("b"))]);
        check(&[b"\xEF", b"\n", b"data: a\n\n"], &[ok(ev("a"))]);
        // A truncated BOM at end of stream is discarded.
        assert!(check(&[b"\xEF\xBB"], &[]));
    }

    #[test]
    fn line_endings_crlf_lf_cr_mixed() {
        check(&[b"data: a\r\n\r\n"], &[ok(ev("a"))]);
        check(&[b"data: a\r\r"], &[ok(ev("a"))]);
        check(&[b"data: a\rdata: b\ndata: c\r\n\n"], &[ok(ev("a\nb\nc"))]);
        // CR LF is one ending; LF CR is two.
        check(&[b"data: a\n\rdata: b\n\n"], &[ok(ev("a")), ok(ev("b"))]);
    }

    #[test]
    fn cr_then_lf_across_chunks_is_one_line_ending() {
        check(
            &[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"],
            &[ok(ev("a\nb"))],
        );
        // CR, chunk boundary, CR: two endings, i.e. a dispatch.
        check(
            &[b"data: a\r", b"\rdata: b\n\n"],
            &[ok(ev("a")), ok(ev("b"))],
        );
    }

    #[test]
    fn comments_are_skipped() {
        check(
            &[b": keep-alive\n\n:\n\ndata: a\n: inside\ndata: b\n\n"],
            &[ok(ev("a\nb"))],
        );
        assert!(!check(&[b":\n\n"], &[]));
    }

    #[test]
    fn split_at_first_colon_and_one_space() {
        check(&[b"data:a:b\n\n"], &[ok(ev("a:b"))]);
        check(&[b"data:  two\n\n"], &[ok(ev(" two"))]);
        check(&[b"data:\tx\n\n"], &[ok(ev("\tx"))]);
        check(&[b"data: \n\n"], &[ok(ev(""))]);
    }

    #[test]
    fn line_without_colon_is_field_with_empty_value() {
        check(&[b"data\n\n"], &[ok(ev(""))]);
        check(&[b"data\ndata\n\n"], &[ok(ev("\n"))]);
        check(
            &[b"id\ndata: x\n\n"],
            &[ok(SseEvent {
                has_own_id: true,
                ..ev("x")
            })],
        );
    }

    #[test]
    fn field_names_are_case_sensitive_and_unknown_ignored() {
        check(&[b"Data: a\nDATA: b\nfoo: c\n\n"], &[]);
        check(&[b"data : a\ndata: b\n\n"], &[ok(ev("b"))]);
        check(&[b"foo: c\ndata: b\nbar\n\n"], &[ok(ev("b"))]);
    }

    #[test]
    fn data_lines_join_with_lf_and_final_lf_is_removed() {
        check(&[b"data: a\ndata: b\ndata: c\n\n"], &[ok(ev("a\nb\nc"))]);
        check(&[b"data: a\ndata:\n\n"], &[ok(ev("a\n"))]);
        check(&[b"data:\ndata:\n\n"], &[ok(ev("\n"))]);
    }

    #[test]
    fn id_with_nul_is_ignored() {
        check(
            &[b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n"],
            &[ok(with_id(ev("a"), "1")), ok(inherits(ev("b"), "1"))],
        );
        // An ignored id is not an id line: the block yields nothing.
        check(&[b"id: \0\n\n"], &[]);
    }

    #[test]
    fn empty_id_resets_last_event_id() {
        check(
            &[b"id: 7\ndata: a\n\nid\ndata: b\n\ndata: c\n\n"],
            &[
                ok(with_id(ev("a"), "7")),
                ok(SseEvent {
                    has_own_id: true,
                    ..ev("b")
                }),
                ok(ev("c")),
            ],
        );
        check(&[b"id: 7\n\nid:\n\n"], &[id_only(Some("7")), id_only(None)]);
    }

    #[test]
    fn last_event_id_persists_until_changed() {
        check(
            &[b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\ndata: d\n\n"],
            &[
                ok(with_id(ev("a"), "1")),
                ok(inherits(ev("b"), "1")),
                ok(with_id(ev("c"), "2")),
                ok(inherits(ev("d"), "2")),
            ],
        );
        // The last id line of a block wins.
        check(
            &[b"id: 1\nid: 2\ndata: a\n\n"],
            &[ok(with_id(ev("a"), "2"))],
        );
    }

    #[test]
    fn retry_only_if_all_ascii_digits() {
        check(&[b"retry: 1500\n"], &[Ok(SseItem::Retry(1500))]);
        check(&[b"retry:0\n\n"], &[Ok(SseItem::Retry(0))]);
        check(
            &[b"retry: 15s\nretry: -1\nretry: 1 5\nretry:\nretry: +1\n\n"],
            &[],
        );
        check(&[b"retry: \xd9\xa1\n\n"], &[]);
        check(
            &[b"retry: 99999999999999999999999\n"],
            &[Ok(SseItem::Retry(u64::MAX))],
        );
    }

    #[test]
    fn retry_is_yielded_before_the_event_it_sits_in() {
        check(
            &[b"data: a\nretry: 10\ndata: b\n\n"],
            &[Ok(SseItem::Retry(10)), ok(ev("a\nb"))],
        );
    }

    #[test]
    fn event_names_and_empty_event_means_message() {
        check(
            &[b"event: endpoint\ndata: /post\n\nevent:\ndata: x\n\ndata: y\n\n"],
            &[ok(named(ev("/post"), "endpoint")), ok(ev("x")), ok(ev("y"))],
        );
        let e = ev("x");
        assert_eq!(e.event_type(), "message");
        assert_eq!(named(e, "ping").event_type(), "ping");
        // The event name does not persist past dispatch.
        check(&[b"event: a\n\ndata: x\n\n"], &[ok(ev("x"))]);
    }

    #[test]
    fn priming_event_with_empty_data_dispatches() {
        // MCP 2025-11-25 priming event: id + `data:` with an empty value.
        let want = with_id(ev(""), "p-0");
        check(&[b"id: p-0\ndata:\n\n"], &[ok(want.clone())]);
        assert!(want.is_priming());
        assert!(!ev("{}").is_priming());
    }

    #[test]
    fn id_without_data_dispatches_nothing_but_moves_the_id() {
        check(
            &[b"id: p-1\n\ndata: a\n\n"],
            &[id_only(Some("p-1")), ok(inherits(ev("a"), "p-1"))],
        );
        // No id and no data: nothing at all.
        check(&[b"event: x\n\n\n\n"], &[]);
    }

    #[test]
    fn unterminated_event_is_discarded_at_end_of_stream() {
        assert!(check(&[b"data: a\n\ndata: b\n"], &[ok(ev("a"))]));
        assert!(check(&[b"data: a\n\ndata: b"], &[ok(ev("a"))]));
        assert!(check(&[b"id: 3\n"], &[]));
        assert!(!check(&[b"data: a\n\n"], &[ok(ev("a"))]));
    }

    #[test]
    fn finish_starts_a_new_stream() {
        let mut dec = Decoder::default();
        dec.push(Bytes::from_static(b"id: 1\ndata: a\n\ndata: b\r"));
        assert_eq!(dec.by_ref().count(), 1);
        assert!(dec.finish());
        // New stream: BOM stripped again, the LF is a blank line (no CR
        // carried over), the id buffer starts empty.
        dec.push(Bytes::from_static(b"\xEF\xBB\xBF\ndata: c\n\n"));
        let out: Out = dec.by_ref().collect();
        assert_eq!(out, vec![ok(ev("c"))]);
    }

    #[test]
    fn invalid_utf8_in_id_and_event_is_replaced_data_kept_raw() {
        check(
            &[b"id: a\xffb\nevent: \xfe\ndata: \xff\n\n"],
            &[ok(SseEvent {
                id: Some(Utf8Bytes::from("a\u{fffd}b")),
                has_own_id: true,
                event: Some(Utf8Bytes::from("\u{fffd}")),
                data: Bytes::from_static(b"\xff"),
            })],
        );
    }

    fn limits(line: usize, event: usize, fields: usize) -> DecoderLimits {
        DecoderLimits {
            max_line_len: line,
            max_event_size: event,
            max_fields_per_event: fields,
        }
    }

    #[test]
    fn line_limit_is_inclusive_and_excludes_the_ending() {
        let l = limits(8, 100, 100);
        check_with(l, &[b"data: ab\r\n\n"], &[ok(ev("ab"))]);
        check_with(
            l,
            &[b"data: a\n\ndata: abc\n\n"],
            &[ok(ev("a")), Err(DecodeError::LineTooLong { limit: 8 })],
        );
    }

    #[test]
    fn long_line_is_rejected_before_it_is_buffered() {
        let mut dec = Decoder::new(limits(16, 100, 100));
        dec.push(Bytes::from_static(b"data: 0123456789"));
        assert_eq!(dec.next(), None);
        dec.push(Bytes::from(vec![b'x'; 1000]));
        assert_eq!(
            dec.next(),
            Some(Err(DecodeError::LineTooLong { limit: 16 }))
        );
        assert!(
            dec.line.capacity() < 1000,
            "the long chunk was not buffered"
        );
        // No terminator ever arrives: still an error, at end of stream too.
        let truncated = check_with(
            limits(16, 100, 100),
            &[b"data: 0123456789xyz"],
            &[Err(DecodeError::LineTooLong { limit: 16 })],
        );
        assert!(!truncated, "a poisoned decoder holds nothing");
    }

    #[test]
    fn event_size_limit() {
        let l = limits(100, 5, 100);
        check_with(l, &[b"data: ab\ndata: cd\n\n"], &[ok(ev("ab\ncd"))]);
        check_with(
            l,
            &[b"data: ab\ndata: cde\n\n"],
            &[Err(DecodeError::EventTooLarge { limit: 5 })],
        );
        check_with(
            l,
            &[b"data: 123456\n\n"],
            &[Err(DecodeError::EventTooLarge { limit: 5 })],
        );
    }

    #[test]
    fn fields_limit_counts_field_lines_per_event() {
        let l = limits(100, 100, 2);
        check_with(
            l,
            &[b"id: 1\ndata: a\n: comment\n\nevent: e\ndata: b\n\n"],
            &[
                ok(with_id(ev("a"), "1")),
                ok(named(inherits(ev("b"), "1"), "e")),
            ],
        );
        check_with(
            l,
            &[b"foo\nbar\nbaz\n\n"],
            &[Err(DecodeError::TooManyFields { limit: 2 })],
        );
    }

    #[test]
    fn poisoned_decoder_drops_input_until_finish() {
        let mut dec = Decoder::new(limits(4, 100, 100));
        dec.push(Bytes::from_static(b"data: toolong\n\n"));
        assert!(matches!(
            dec.next(),
            Some(Err(DecodeError::LineTooLong { .. }))
        ));
        assert!(dec.is_poisoned());
        dec.push(Bytes::from_static(b"a\n\n"));
        assert_eq!(dec.next(), None);
        assert!(!dec.finish(), "a poisoned decoder holds nothing");
        assert!(!dec.is_poisoned());
        dec.push(Bytes::from_static(b"data\n\n"));
        assert_eq!(dec.next(), Some(ok(ev(""))));
    }

    #[test]
    fn single_line_data_shares_the_input_chunk() {
        let chunk = Bytes::from_static(b"id: 1\ndata: {\"a\":1}\n\n");
        let mut dec = Decoder::default();
        dec.push(chunk.clone());
        let Some(Ok(SseItem::Event(e))) = dec.next() else {
            panic!("expected an event");
        };
        let range = chunk.as_ptr_range();
        assert!(range.contains(&e.data.as_ptr()));
        assert!(range.contains(&e.id.as_ref().unwrap().as_bytes().as_ptr()));
    }

    #[test]
    fn line_end_search_at_every_position() {
        for len in [0, 1, 31, 32, 33, 64, 100] {
            let mut buf = vec![b'x'; len];
            assert_eq!(find_line_end(&buf), None, "len {len}");
            for at in 0..len {
                for end in [b'\n', b'\r'] {
                    buf[at] = end;
                    if at + 1 < len {
                        buf[at + 1] = b'\n';
                    }
                    assert_eq!(find_line_end(&buf), Some(at), "len {len} at {at}");
                    buf.fill(b'x');
                }
            }
        }
    }

    #[test]
    fn large_buffers_are_released_after_use() {
        let mut dec = Decoder::default();
        let big = vec![b'x'; 200 * 1024];
        // One big data line split over two chunks, then a two-line event.
        dec.push(Bytes::from_static(b"data: "));
        dec.push(Bytes::from(big.clone()));
        dec.push(Bytes::from_static(b"\ndata: y\n\n"));
        let Some(Ok(SseItem::Event(e))) = dec.next() else {
            panic!("expected an event");
        };
        assert_eq!(e.data.len(), big.len() + 2);
        assert!(
            dec.heap_bytes() < 2 * RETAINED_BUFFER,
            "{}",
            dec.heap_bytes()
        );
        drop(e);
        dec.push(Bytes::from_static(b"data: a\ndata: b\n\n"));
        assert_eq!(dec.next(), Some(ok(ev("a\nb"))));
        assert!(
            dec.heap_bytes() < 2 * RETAINED_BUFFER,
            "{}",
            dec.heap_bytes()
        );
    }

    #[test]
    fn chunks_pushed_before_iterating_keep_their_order() {
        let mut dec = Decoder::default();
        dec.push(Bytes::from_static(b"data: a\n\nda"));
        dec.push(Bytes::from_static(b"ta: b\n\n"));
        assert_eq!(dec.next(), Some(ok(ev("a"))));
        dec.push(Bytes::from_static(b"data: c\n\n"));
        let out: Out = dec.collect();
        assert_eq!(out, vec![ok(ev("b")), ok(ev("c"))]);
    }

    #[test]
    fn a_used_up_chunk_is_let_go_and_its_id_lives_on() {
        let chunk = Bytes::from(b"id: 7\ndata: a\n\n".to_vec());
        let mut dec = Decoder::default();
        dec.push(chunk.clone());
        let first: Vec<_> = dec.by_ref().collect();
        assert_eq!(first.len(), 1);
        drop(first);
        // Neither the consumed slice nor the last event ID pins the chunk.
        assert!(chunk.is_unique(), "the decoder still holds the used chunk");
        // The next event without an `id` line still carries the last one.
        dec.push(Bytes::from_static(b"data: b\n\n"));
        let Some(Ok(SseItem::Event(e))) = dec.next() else {
            panic!("an event");
        };
        assert_eq!(e.id.as_ref().map(Utf8Bytes::as_str), Some("7"));
        assert!(!e.has_own_id);
    }
}
