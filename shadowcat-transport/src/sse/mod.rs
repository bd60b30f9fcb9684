//! Server-sent events: an incremental WHATWG decoder and an encoder.
//!
//! - [`Decoder`] turns [`bytes::Bytes`] chunks into [`SseItem`]s (events,
//!   id-only blocks, `retry` values), following every rule of the WHATWG
//!   "parse an event stream" algorithm, whatever the chunking.
//! - [`DecoderLimits`] bounds it: line length (default 8 MiB), event data
//!   size (default 8 MiB) and field lines per event (default 65,536).
//!   Exceeding one is a [`DecodeError`] and poisons the decoder until
//!   [`Decoder::finish`].
//! - [`OutgoingEvent`] and [`encode_comment`] write events and keep-alive
//!   comments into a [`bytes::BytesMut`]; they refuse input that would
//!   decode differently ([`EncodeError`]).
//!
//! Round trip: what the encoder writes decodes to the same id, event name
//! and retry, and to the same data modulo line endings (the decoder turns
//! CRLF and lone CR in data into LF).

mod decode;
mod encode;
mod text;

pub use decode::{DecodeError, Decoder, DecoderLimits, SseEvent, SseItem};
pub use encode::{EncodeError, OutgoingEvent, encode_comment, put_decimal};
pub use text::Utf8Bytes;
