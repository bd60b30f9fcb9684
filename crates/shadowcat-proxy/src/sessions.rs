//! Proxy sessions: the id the client holds mapped to the upstream's, kept
//! in the [`SessionStore`] (the source of truth, so another instance or a
//! restarted proxy can serve the session) with an in-process cache in front.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http::HeaderValue;
use parking_lot::RwLock;
use shadowcat_session::{Session, SessionId, SessionStore, StoreError, StreamId};

use crate::protocol::ProtocolVersion;

/// What the proxy keeps in memory about one live session.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    /// The id the client holds.
    pub(crate) id: SessionId,
    /// The upstream's `Mcp-Session-Id`, ready to send; never shown to the
    /// client.
    pub(crate) upstream_id: Option<HeaderValue>,
    /// The revision the session was initialized with.
    pub(crate) version: ProtocolVersion,
    /// SSE streams open now.
    pub(crate) open_streams: Arc<AtomicU32>,
    next_stream: AtomicU32,
}

impl SessionEntry {
    fn from_session(s: &Session) -> Result<Self, &'static str> {
        let upstream_id = match &s.upstream_session_id {
            Some(u) => Some(
                HeaderValue::from_str(u)
                    .map_err(|_| "stored upstream session id is not a valid header value")?,
            ),
            None => None,
        };
        let version =
            ProtocolVersion::parse(&s.protocol_version).unwrap_or(ProtocolVersion::ASSUMED);
        let next = s.streams.iter().map(|p| p.stream.0 + 1).max().unwrap_or(0);
        Ok(SessionEntry {
            id: s.id.clone(),
            upstream_id,
            version,
            open_streams: Arc::new(AtomicU32::new(0)),
            next_stream: AtomicU32::new(next),
        })
    }

    /// A new stream number for this session.
    pub(crate) fn next_stream(&self) -> StreamId {
        StreamId(self.next_stream.fetch_add(1, Ordering::Relaxed))
    }
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    /// The OS random source failed.
    #[error("no randomness for a session id: {0}")]
    Random(String),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The live sessions: the store plus a cache.
#[derive(Debug)]
pub(crate) struct Sessions {
    store: Arc<dyn SessionStore>,
    cache: RwLock<HashMap<SessionId, Arc<SessionEntry>>>,
    upstream_label: String,
}

impl Sessions {
    pub(crate) fn new(store: Arc<dyn SessionStore>, upstream_label: String) -> Self {
        Sessions {
            store,
            cache: RwLock::new(HashMap::new()),
            upstream_label,
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The session `id`: from the cache, else from the store.
    pub(crate) async fn lookup(&self, id: &str) -> Result<Option<Arc<SessionEntry>>, StoreError> {
        if let Some(e) = self.cache.read().get(id) {
            return Ok(Some(Arc::clone(e)));
        }
        let Ok(sid) = SessionId::parse(id) else {
            return Ok(None);
        };
        let Some(session) = self.store.get(&sid).await? else {
            return Ok(None);
        };
        let entry = match SessionEntry::from_session(&session) {
            Ok(e) => Arc::new(e),
            Err(reason) => {
                return Err(StoreError::Corrupt {
                    store: self.store.kind(),
                    message: format!("session {sid}: {reason}"),
                });
            }
        };
        let mut cache = self.cache.write();
        let entry = cache.entry(sid).or_insert(entry);
        Ok(Some(Arc::clone(entry)))
    }

    /// Creates a session mapped to `upstream_id` and stores it.
    pub(crate) async fn create(
        &self,
        upstream_id: Option<HeaderValue>,
        version: ProtocolVersion,
    ) -> Result<Arc<SessionEntry>, CreateError> {
        let id = SessionId::generate().map_err(|e| CreateError::Random(e.to_string()))?;
        let mut session = Session::new(id.clone(), self.upstream_label.clone(), version.as_str());
        session.upstream_session_id = upstream_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.store.create(&session).await?;
        let entry = Arc::new(SessionEntry {
            id: id.clone(),
            upstream_id,
            version,
            open_streams: Arc::new(AtomicU32::new(0)),
            next_stream: AtomicU32::new(0),
        });
        self.cache.write().insert(id, Arc::clone(&entry));
        Ok(entry)
    }

    /// Removes a session from the cache and the store. True if the store
    /// had it.
    pub(crate) async fn remove(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.cache.write().remove(id);
        self.store.delete(id).await
    }

    /// How many sessions the store holds.
    pub(crate) async fn count(&self) -> Result<u64, StoreError> {
        self.store.count().await
    }
}
