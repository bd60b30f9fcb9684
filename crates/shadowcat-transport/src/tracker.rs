//! The `EventTracker`: the one place SSE event ids are tracked.

use std::fmt;

/// Receives a stream's resumption-point changes from its [`EventTracker`].
///
/// One sink belongs to one stream; whoever creates it knows which stream
/// (and session) that is, the tracker does not. Implementations must not
/// block or await: the persistence writer on the other side coalesces.
pub trait EventIdSink: Send + Sync + fmt::Debug {
    /// The stream's resumption point is now `event_id`.
    fn resumption_point(&self, event_id: &str);
}

/// Placeholder until the tracker lands.
#[derive(Debug)]
pub struct EventTracker;
