//! Proxy sessions: the id the client holds mapped to the upstream's, kept
//! in the [`SessionStore`] (the source of truth, so another instance or a
//! restarted proxy can serve the session) with an in-process cache in front.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http::HeaderValue;
use parking_lot::RwLock;
use shadowcat_session::{ResumeKey, Session, SessionId, SessionStore, StoreError, StreamId};

use crate::event_id::GET_STREAM_BIT;
use crate::protocol::ProtocolVersion;
use crate::stream::StreamRegistry;

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
    /// Seals the client event ids of the session's streams.
    pub(crate) key: ResumeKey,
    /// The session's resumable streams on this instance.
    pub(crate) streams: Arc<StreamRegistry>,
    next_stream: AtomicU32,
}

/// Where a session's stream numbers start on this instance: random, so
/// two instances (or a restarted one) serving the same session do not
/// reuse a number a client may still hold (a collision needs the two
/// ranges to meet in 2^31). Not secret: ids are sealed by the MAC.
fn stream_base() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

impl SessionEntry {
    fn from_session(s: &Session, key: ResumeKey) -> Result<Self, &'static str> {
        let upstream_id = match &s.upstream_session_id {
            Some(u) => Some(
                HeaderValue::from_str(u)
                    .map_err(|_| "stored upstream session id is not a valid header value")?,
            ),
            None => None,
        };
        let version =
            ProtocolVersion::parse(&s.protocol_version).unwrap_or(ProtocolVersion::ASSUMED);
        Ok(SessionEntry {
            id: s.id.clone(),
            upstream_id,
            version,
            open_streams: Arc::new(AtomicU32::new(0)),
            key,
            streams: Arc::default(),
            next_stream: AtomicU32::new(stream_base()),
        })
    }

    /// A new stream number for this session: a GET stream's has
    /// [`GET_STREAM_BIT`] set.
    pub(crate) fn next_stream(&self, get: bool) -> StreamId {
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed) & !GET_STREAM_BIT;
        StreamId(if get { n | GET_STREAM_BIT } else { n })
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

    /// What sessions record as their upstream.
    pub(crate) fn upstream_label(&self) -> &str {
        &self.upstream_label
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
        let key = match session.resume_key {
            Some(k) => k,
            None => self.add_key(&session).await?,
        };
        let entry = match SessionEntry::from_session(&session, key) {
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

    /// A session stored before resume keys existed gets one now.
    async fn add_key(&self, session: &Session) -> Result<ResumeKey, StoreError> {
        let key = ResumeKey::generate().map_err(|e| StoreError::Unavailable {
            store: "random",
            message: format!("no randomness for a resume key: {e}"),
        })?;
        let mut keyed = session.clone();
        keyed.resume_key = Some(key);
        self.store.update(&keyed).await?;
        Ok(key)
    }

    /// Creates a session mapped to `upstream_id` and stores it.
    pub(crate) async fn create(
        &self,
        upstream_id: Option<HeaderValue>,
        version: ProtocolVersion,
    ) -> Result<Arc<SessionEntry>, CreateError> {
        let id = SessionId::generate().map_err(|e| CreateError::Random(e.to_string()))?;
        let key = ResumeKey::generate().map_err(|e| CreateError::Random(e.to_string()))?;
        let mut session = Session::new(id.clone(), self.upstream_label.clone(), version.as_str());
        session.resume_key = Some(key);
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
            key,
            streams: Arc::default(),
            next_stream: AtomicU32::new(stream_base()),
        });
        self.cache.write().insert(id, Arc::clone(&entry));
        Ok(entry)
    }

    /// Removes a session from the cache and the store. True if the store
    /// had it.
    pub(crate) async fn remove(&self, id: &SessionId) -> Result<bool, StoreError> {
        let removed = self.cache.write().remove(id);
        if let Some(entry) = removed {
            entry.streams.release_all();
        }
        self.store.delete(id).await
    }

    /// Removes a session from the cache and the store but lets its
    /// streams end on their own (a stdio session whose server ended: its
    /// streams still carry the error to their clients).
    pub(crate) async fn remove_keep_streams(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.cache.write().remove(id);
        self.store.delete(id).await
    }

    /// How many sessions the store holds.
    pub(crate) async fn count(&self) -> Result<u64, StoreError> {
        self.store.count().await
    }
}
