//! Shadowcat's transport layer: the SSE codec, the `EventTracker` (the single
//! authority for SSE event ids: last id, dedup, resumption point) and the
//! reconnect policy.
//!
//! Architecture invariant: this crate knows nothing about sessions or
//! persistence. Whoever reads a stream owns its [`EventTracker`] and asks
//! it for the resumption point ([`EventTracker::last_event_id`]) when it
//! persists one; nothing here calls out.
//!
//! Unsafe code is denied, with one exception: `stdio`'s two OS calls
//! (the parent-death signal set between fork and exec, and signalling a
//! child's process group), each with its SAFETY note.
#![deny(unsafe_code)]

pub mod reconnect;
pub mod sse;
pub mod tracker;

pub use tracker::EventTracker;

pub use reconnect::{Decision, Failure, GiveUp, ReconnectConfig, ReconnectPolicy};
pub use tracker::{Recorded, TrackerConfig, TrackerConfigError, TrackerStats};

pub use sse::{
    DecodeError, Decoder, DecoderLimits, EncodeError, OutgoingEvent, SseEvent, SseItem, Utf8Bytes,
    encode_comment,
};

#[cfg(unix)]
pub mod stdio;

#[cfg(unix)]
pub use stdio::{
    ChildCommand, LineError, LineReader, LineWriter, StderrLevel, StdioChild, StdioConfig,
    StdioError,
};
