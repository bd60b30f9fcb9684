//! The one place transport meets session: resumption points handed to the
//! session crate's [`WriterHandle`], as an [`EventIdSink`] (owned by the
//! transport crate) or, per batch of events, with the client's sequence
//! number ([`WriterSink::point`]).

use std::sync::atomic::{AtomicU64, Ordering};

use shadowcat_session::writer::WriterHandle;
use shadowcat_session::{SessionId, StreamId};
use shadowcat_transport::EventIdSink;

/// Persists one stream's resumption points through the batching writer.
///
/// Synchronous and never waits on the store: the writer coalesces to the
/// newest point per stream and writes in batches.
#[derive(Debug)]
pub struct WriterSink {
    handle: WriterHandle,
    session: SessionId,
    stream: StreamId,
    /// Fresh events seen on the stream so far (the [`EventIdSink`] path).
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

    /// The stream's newest point: the upstream's last event id and the
    /// sequence number of the last event sent toward the client.
    pub fn point(&self, upstream_event_id: Option<&str>, client_seq: u64) {
        self.handle
            .submit(&self.session, self.stream, upstream_event_id, client_seq);
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
