//! A bounded message queue between a stdio child's router (the producer)
//! and one stream's [`Pump`](crate::stream::Pump) (the consumer): the
//! upstream side of a stream when the upstream is a program, not HTTP.
//!
//! One `parking_lot` lock per push and per drained batch; wakers are taken
//! when woken, so a burst of pushes wakes the reader once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;

/// How a queue's stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueEnd {
    /// The request's response was pushed: the stream is complete.
    Complete,
    /// The child is gone; the cause is sent to the client as a JSON-RPC
    /// error on request streams.
    Failed(Arc<str>),
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued.
    Queued,
    /// The queue is full and drops when full: the message was dropped.
    Dropped,
    /// Nobody will read the queue any more (its stream was released).
    Abandoned,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Bytes>,
    bytes: usize,
    end: Option<QueueEnd>,
    abandoned: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// A bounded queue of JSON-RPC messages (one line each) for one stream.
#[derive(Debug)]
pub(crate) struct MessageQueue {
    state: Mutex<State>,
    max_events: usize,
    max_bytes: usize,
    /// Drop a message pushed when full (the GET queue, which nobody may
    /// ever read) instead of making the producer wait.
    drop_when_full: bool,
}

impl MessageQueue {
    pub(crate) fn new(max_events: usize, max_bytes: usize, drop_when_full: bool) -> Self {
        MessageQueue {
            state: Mutex::new(State::default()),
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
            drop_when_full,
        }
    }

    fn full(&self, st: &State) -> bool {
        st.items.len() >= self.max_events || st.bytes >= self.max_bytes
    }

    /// Ready when a push would not exceed the limits (or would be refused
    /// anyway): the producer's back-pressure.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.state.lock();
        if st.abandoned || st.end.is_some() || self.drop_when_full || !self.full(&st) {
            return Poll::Ready(());
        }
        st.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Appends one message and wakes the reader.
    pub(crate) fn push(&self, msg: Bytes) -> Pushed {
        let reader = {
            let mut st = self.state.lock();
            if st.abandoned || st.end.is_some() {
                return Pushed::Abandoned;
            }
            if self.drop_when_full && self.full(&st) {
                return Pushed::Dropped;
            }
            st.bytes += msg.len();
            st.items.push_back(msg);
            st.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
        Pushed::Queued
    }

    /// Ends the queue once its items are read; the first end wins.
    pub(crate) fn finish(&self, end: QueueEnd) {
        let reader = {
            let mut st = self.state.lock();
            if st.end.is_none() {
                st.end = Some(end);
            }
            st.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// The reader is gone for good: items are dropped, the producer never
    /// waits on this queue again.
    pub(crate) fn abandon(&self) {
        let writer = {
            let mut st = self.state.lock();
            st.abandoned = true;
            st.items.clear();
            st.bytes = 0;
            st.reader = None;
            st.writer.take()
        };
        if let Some(w) = writer {
            w.wake();
        }
    }

    /// Moves queued messages into `out` (up to about `max_bytes`). With
    /// nothing queued: `Ready(Some(end))` once ended, else registers the
    /// reader and returns `Pending`. `Ready(None)`: `out` got messages.
    pub(crate) fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<Bytes>,
        max_bytes: usize,
    ) -> Poll<Option<QueueEnd>> {
        let writer = {
            let mut st = self.state.lock();
            if st.items.is_empty() {
                if let Some(end) = &st.end {
                    return Poll::Ready(Some(end.clone()));
                }
                match &mut st.reader {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            let mut taken = 0;
            while let Some(m) = st.items.pop_front() {
                taken += m.len();
                out.push(m);
                if taken >= max_bytes {
                    break;
                }
            }
            st.bytes -= taken;
            st.writer.take()
        };
        if let Some(w) = writer {
            w.wake();
        }
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn push_drain_end_and_limits() {
        let q = MessageQueue::new(2, 1 << 20, false);
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        assert!(q.poll_drain(&mut cx, &mut out, 1024).is_pending());
        assert_eq!(q.push(Bytes::from_static(b"a")), Pushed::Queued);
        assert!(q.poll_room(&mut cx).is_ready());
        assert_eq!(q.push(Bytes::from_static(b"b")), Pushed::Queued);
        assert!(
            q.poll_room(&mut cx).is_pending(),
            "full: the producer waits"
        );
        assert_eq!(q.poll_drain(&mut cx, &mut out, 1024), Poll::Ready(None));
        assert_eq!(out, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        q.finish(QueueEnd::Complete);
        assert_eq!(q.push(Bytes::from_static(b"c")), Pushed::Abandoned);
        assert_eq!(
            q.poll_drain(&mut cx, &mut out, 1024),
            Poll::Ready(Some(QueueEnd::Complete))
        );
        let get = MessageQueue::new(1, 1 << 20, true);
        assert_eq!(get.push(Bytes::from_static(b"x")), Pushed::Queued);
        assert_eq!(get.push(Bytes::from_static(b"y")), Pushed::Dropped);
        get.abandon();
        assert_eq!(get.push(Bytes::from_static(b"z")), Pushed::Abandoned);
    }
}
