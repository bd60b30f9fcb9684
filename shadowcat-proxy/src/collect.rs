//! Reading a whole body into one buffer, bounded in size and in time.
//!
//! Every body the proxy reads whole (client request bodies; upstream JSON
//! answers) goes through [`read_whole`]. Frames are copied into one
//! buffer and dropped at once: a frame is a slice of the connection's read
//! buffer, so keeping frames (as `http_body_util::Collected` does) can pin
//! kilobytes per body byte when a body arrives one byte per segment. The
//! buffer grows geometrically and never past the declared length, so it
//! holds at most twice the bytes received (or [`FIRST_CAPACITY`], whichever
//! is more): a declared `Content-Length` is trusted for the final size,
//! never for memory ahead of the bytes.

use std::future::poll_fn;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use std::sync::Arc;

use bytes::{Buf, Bytes};
use http_body::Body;
use tokio::time::Instant;

use crate::stream::budget::{Budget, Charge};

/// What one read may take.
#[derive(Debug, Clone)]
pub(crate) struct ReadLimits {
    /// Most bytes.
    pub(crate) max: usize,
    /// Charged with the buffer while it is read (`max_buffered_bytes`).
    pub(crate) budget: Option<Arc<Budget>>,
    /// When the whole body must be in.
    pub(crate) deadline: Instant,
    /// Longest wait for the next bytes.
    pub(crate) idle: Duration,
}

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError<E> {
    /// It is (or says it is) larger than the limit.
    #[error("the body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// It was not complete by the deadline.
    #[error("the body was not complete in time")]
    Deadline,
    /// No bytes came for the idle time.
    #[error("no body bytes for {0:?}")]
    Idle(Duration),
    /// The body failed (the connection broke, a framing error).
    #[error("{0}")]
    Body(E),
}

/// Capacity of the buffer when a length is declared (the declared length
/// if smaller).
pub(crate) const FIRST_CAPACITY: usize = 16 << 10;

/// Reads `body` whole, within `limits`.
pub(crate) async fn read_whole<B>(body: B, limits: ReadLimits) -> Result<Bytes, ReadError<B::Error>>
where
    B: Body,
{
    let declared = body
        .size_hint()
        .exact()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n > limits.max) {
        return Err(ReadError::TooLarge(limits.max));
    }
    // Growth stops at the declared length (a body cannot exceed it).
    let ceiling = declared.unwrap_or(limits.max);
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n.min(FIRST_CAPACITY)));
    // Released when the read ends: the caller forwards the bytes at once.
    let mut charge = limits.budget.clone().map(Charge::new);
    let mut body = pin!(body);
    let mut deadline = pin!(tokio::time::sleep_until(limits.deadline));
    let mut idle = pin!(tokio::time::sleep(limits.idle));
    let mut last = Instant::now();
    poll_fn(|cx| {
        loop {
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue;
                    };
                    if data.has_remaining() {
                        last = Instant::now();
                    }
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        let n = chunk.len();
                        append(&mut buf, chunk, limits.max, ceiling)?;
                        data.advance(n);
                    }
                    if let Some(c) = &mut charge {
                        c.set(buf.capacity());
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ReadError::Body(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(ReadError::Deadline));
                    }
                    // The idle timer is moved only when it fires, not per
                    // frame.
                    while idle.as_mut().poll(cx).is_ready() {
                        let at = last + limits.idle;
                        if at <= Instant::now() {
                            return Poll::Ready(Err(ReadError::Idle(limits.idle)));
                        }
                        idle.as_mut().reset(at);
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await?;
    Ok(Bytes::from(buf))
}

/// Appends `data`, growing `buf` geometrically up to `ceiling`.
fn append<E>(
    buf: &mut Vec<u8>,
    data: &[u8],
    max: usize,
    ceiling: usize,
) -> Result<(), ReadError<E>> {
    let need = buf.len() + data.len();
    if need > max {
        return Err(ReadError::TooLarge(max));
    }
    if need > buf.capacity() {
        let target = (buf.capacity() * 2).min(ceiling).max(need);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use std::pin::Pin;
    use std::task::Context;

    /// A body of `n` one-byte frames, each ready at once; says its length
    /// when `declare`.
    struct Bytewise {
        left: usize,
        declare: bool,
    }

    impl Body for Bytewise {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            if self.declare {
                http_body::SizeHint::with_exact(self.left as u64)
            } else {
                http_body::SizeHint::default()
            }
        }
    }

    fn limits(max: usize) -> ReadLimits {
        ReadLimits {
            budget: None,
            max,
            deadline: Instant::now() + Duration::from_secs(10),
            idle: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn reads_whole_bodies_with_bounded_capacity() {
        for declare in [false, true] {
            let b = read_whole(
                Bytewise {
                    left: 3000,
                    declare,
                },
                limits(4096),
            )
            .await
            .unwrap();
            assert_eq!(b.len(), 3000);
            assert!(b.iter().all(|&c| c == b'x'));
        }
        let mut buf = Vec::new();
        for _ in 0..3000 {
            append::<()>(&mut buf, b"x", 4096, 4096).unwrap();
            assert!(buf.capacity() <= 2 * buf.len().max(4), "{}", buf.capacity());
        }
        let mut buf = Vec::with_capacity(16);
        for _ in 0..3000 {
            append::<()>(&mut buf, b"x", 4096, 3000).unwrap();
        }
        assert_eq!(buf.capacity(), 3000, "never past the declared length");
    }

    #[tokio::test]
    async fn over_the_limit_is_refused() {
        let e = read_whole(
            Bytewise {
                left: 11,
                declare: false,
            },
            limits(10),
        )
        .await;
        assert!(matches!(e, Err(ReadError::TooLarge(10))));
        let e = read_whole(
            Bytewise {
                left: 11,
                declare: true,
            },
            limits(10),
        )
        .await;
        assert!(matches!(e, Err(ReadError::TooLarge(10))));
    }

    /// A body that sends one byte, then nothing.
    struct Stalls(bool);

    impl Body for Stalls {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_total_timeouts() {
        let l = ReadLimits {
            budget: None,
            max: 10,
            deadline: Instant::now() + Duration::from_secs(30),
            idle: Duration::from_secs(10),
        };
        let e = read_whole(Stalls(false), l.clone()).await;
        assert!(matches!(e, Err(ReadError::Idle(_))), "{e:?}");
        let l = ReadLimits {
            idle: Duration::from_secs(60),
            ..l
        };
        let e = read_whole(Stalls(false), l).await;
        assert!(matches!(e, Err(ReadError::Deadline)), "{e:?}");
    }

    #[tokio::test]
    async fn a_body_being_read_is_charged_to_the_budget() {
        let budget = Arc::new(Budget::new(1 << 20));
        let l = ReadLimits {
            budget: Some(Arc::clone(&budget)),
            ..limits(10)
        };
        let mut read = Box::pin(read_whole(Stalls(false), l));
        let waker = std::task::Waker::noop();
        assert!(
            read.as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_pending()
        );
        assert!(budget.used() >= 1, "the byte read so far is charged");
        drop(read);
        assert_eq!(budget.used(), 0, "given back when the read ends");
        let l = ReadLimits {
            budget: Some(Arc::clone(&budget)),
            ..limits(4096)
        };
        let body = Bytewise {
            left: 100,
            declare: false,
        };
        assert_eq!(read_whole(body, l).await.unwrap().len(), 100);
        assert_eq!(budget.used(), 0);
    }
}
