//! Helpers shared by the integration tests of this crate. Include with
//! `mod support;`; each test file uses only some of them.
#![allow(dead_code)]

pub(crate) mod redis;

use shadowcat_session::{ResumptionPoint, SessionId, SessionStore, StreamId};

/// The stored point of `stream`, read back through `get`: `None` if the
/// session or the stream is unknown.
pub(crate) async fn point_of(
    store: &dyn SessionStore,
    session: &SessionId,
    stream: StreamId,
) -> Option<ResumptionPoint> {
    store
        .get(session)
        .await
        .expect("read session")
        .and_then(|s| s.stream(stream).cloned())
}
