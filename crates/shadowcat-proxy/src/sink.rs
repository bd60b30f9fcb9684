//! The one place transport meets session: an [`EventIdSink`] (owned by the
//! transport crate) that hands each resumption point to the session
//! crate's [`WriterHandle`].

use std::sync::atomic::{AtomicU64, Ordering};

use shadowcat_session::writer::WriterHandle;
use shadowcat_session::{SessionId, StreamId};
use shadowcat_transport::EventIdSink;

/// Persists one stream's resumption points through the batching writer.
///
/// `resumption_point` is synchronous and never waits on the store: the
/// writer coalesces to the newest id per stream and writes in batches.
#[derive(Debug)]
pub struct WriterSink {
    handle: WriterHandle,
    session: SessionId,
    stream: StreamId,
    /// Fresh events seen on the stream so far.
    seq: AtomicU64,
}

impl WriterSink {
    /// A sink for `stream` of `session`.
    pub fn new(handle: WriterHandle, session: SessionId, stream: StreamId) -> Self {
        WriterSink {
            handle,
            session,
            stream,
            seq: AtomicU64::new(0),
        }
    }

    /// The stream is complete: its resumption point is no longer needed.
    pub fn end(&self) {
        self.handle.end_stream(&self.session, self.stream);
    }
}

impl EventIdSink for WriterSink {
    fn resumption_point(&self, event_id: &str) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.handle
            .submit(&self.session, self.stream, Some(event_id), seq);
    }
}
