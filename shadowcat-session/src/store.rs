//! The `SessionStore` trait: where sessions and their resumption points live.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Session, SessionId, UnixMillis, Update};

/// Why a store call failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` for an id that exists.
    #[error("session {} already exists", .0.fingerprint())]
    AlreadyExists(SessionId),
    /// `update` for a session the store does not have.
    #[error("session {} not found", .0.fingerprint())]
    NotFound(SessionId),
    /// The store cannot be reached right now (connection refused or lost,
    /// timeout, Redis loading). Retrying later can help.
    #[error("{store} store unavailable: {message}")]
    Unavailable {
        /// Which store (`memory`, `redb`, `redis`).
        store: &'static str,
        /// What went wrong, for a person.
        message: String,
    },
    /// The store answered but the data is unusable (undecodable record,
    /// corrupt file, wrong type at a key). Retrying will not help.
    #[error("{store} store data error: {message}")]
    Corrupt {
        /// Which store.
        store: &'static str,
        /// What went wrong, for a person.
        message: String,
    },
    /// `create_bounded` found the store already holding its limit of
    /// sessions. Retrying helps once sessions end (DELETE or idle expiry).
    #[error("{store} store holds {limit} sessions, its limit")]
    Full {
        /// Which store.
        store: &'static str,
        /// The bound the create was given.
        limit: u64,
    },
    /// The store refused the write for good (disk full, read-only file,
    /// out of memory, a limit reached). Retrying will not help until an
    /// operator acts.
    #[error("{store} store refused the write: {message}")]
    Refused {
        /// Which store.
        store: &'static str,
        /// What went wrong, for a person.
        message: String,
    },
}

impl StoreError {
    /// True when the same call may succeed later without anyone acting.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// One page of [`SessionStore::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Sessions in ascending id order.
    pub sessions: Vec<Session>,
    /// Pass this as `after` to get the next page; `None` on the last page.
    pub next: Option<SessionId>,
}

/// What [`SessionStore::expire_idle`] removed about one session: enough
/// to end it upstream (a DELETE with its upstream session id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredSession {
    /// The id the client held.
    pub id: SessionId,
    /// The upstream it was bound to ([`Session::upstream`]).
    pub upstream: String,
    /// The upstream's `Mcp-Session-Id`, if it issued one.
    pub upstream_session_id: Option<String>,
    /// The negotiated protocol revision.
    pub protocol_version: String,
}

impl ExpiredSession {
    /// The parts of `s` an expiry reports.
    pub fn of(s: &Session) -> Self {
        ExpiredSession {
            id: s.id.clone(),
            upstream: s.upstream.clone(),
            upstream_session_id: s.upstream_session_id.clone(),
            protocol_version: s.protocol_version.clone(),
        }
    }
}

/// Where sessions live. Object-safe: the proxy holds an
/// `Arc<dyn SessionStore>`.
///
/// Every store behaves the same (one conformance suite runs against all of
/// them):
/// - a session's streams are returned ordered by stream id;
/// - updates for a session the store no longer has are skipped, never
///   resurrect it;
/// - `apply_batch` is one transaction (embedded) or one pipeline (Redis):
///   all of it lands or none of it does.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and metrics: `memory`, `redb`, `redis`.
    fn kind(&self) -> &'static str;

    /// Stores a new session. [`StoreError::AlreadyExists`] if the id is taken.
    async fn create(&self, session: &Session) -> Result<(), StoreError> {
        self.create_bounded(session, u64::MAX).await
    }

    /// Stores a new session unless the store already holds `max_sessions`
    /// ([`StoreError::Full`]); the count and the insert are one atomic
    /// step (one lock, one transaction, one script), so concurrent
    /// creates, from this process or any other sharing the store, never
    /// overshoot. [`StoreError::AlreadyExists`] if the id is taken.
    async fn create_bounded(&self, session: &Session, max_sessions: u64) -> Result<(), StoreError>;

    /// The session with this id, or `None`.
    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError>;

    /// Replaces a stored session whole (streams included).
    /// [`StoreError::NotFound`] if it does not exist.
    async fn update(&self, session: &Session) -> Result<(), StoreError>;

    /// Removes a session and everything about it. True if it existed.
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError>;

    /// Up to `limit` sessions with ids greater than `after`, ascending.
    async fn list(&self, after: Option<&SessionId>, limit: usize) -> Result<Page, StoreError>;

    /// How many sessions the store holds.
    async fn count(&self) -> Result<u64, StoreError>;

    /// Applies many updates in one round trip (one transaction or one
    /// pipeline), in order. Updates for unknown sessions are skipped.
    /// The one path from the writer to the store for resumption points;
    /// `get` reads them back in [`Session::streams`].
    async fn apply_batch(&self, updates: &[Update]) -> Result<(), StoreError>;

    /// Removes every session whose `last_activity` is older than
    /// `now - max_idle`; returns what it removed. A session is reported by
    /// the one call that removed it, so when several processes sweep a
    /// shared store each expired session is reported exactly once.
    async fn expire_idle(
        &self,
        now: UnixMillis,
        max_idle: Duration,
    ) -> Result<Vec<ExpiredSession>, StoreError>;
}

/// True when a session last active at `last_activity` has been idle longer
/// than `max_idle` at `now`.
pub fn is_idle(last_activity: UnixMillis, now: UnixMillis, max_idle: Duration) -> bool {
    now.saturating_sub(last_activity) > max_idle.as_millis() as u64
}
