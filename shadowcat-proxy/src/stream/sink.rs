//! The one place transport meets session: a stream's resumption point
//! (the upstream's last event id from its `EventTracker`, with the
//! client's sequence number) handed to the session crate's
//! [`WriterHandle`] once per batch of events.

use shadowcat_session::writer::WriterHandle;
use shadowcat_session::{SessionId, StreamId};

/// Persists one stream's resumption points through the batching writer.
///
/// Synchronous and never waits on the store: the writer coalesces to the
/// newest point per stream and writes in batches.
#[derive(Debug)]
pub(crate) struct WriterSink {
    handle: WriterHandle,
    session: SessionId,
    stream: StreamId,
}

impl WriterSink {
    /// A sink for `stream` of `session`.
    pub(crate) fn new(handle: WriterHandle, session: SessionId, stream: StreamId) -> Self {
        WriterSink {
            handle,
            session,
            stream,
        }
    }

    /// The stream's newest point: the upstream's last event id and the
    /// sequence number of the last event sent toward the client.
    pub(crate) fn point(&self, upstream_event_id: Option<&str>, client_seq: u64) {
        self.handle
            .submit(&self.session, self.stream, upstream_event_id, client_seq);
    }

    /// The stream is complete: its resumption point is no longer needed.
    pub(crate) fn end(&self) {
        self.handle.end_stream(&self.session, self.stream);
    }
}
