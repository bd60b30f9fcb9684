//! Proxy sessions: the id the client holds mapped to the upstream's, kept
//! in the [`SessionStore`] (the source of truth, so another instance or a
//! restarted proxy can serve the session) with an in-process cache in front.
//!
//! The cache is bounded and follows the store:
//! - at most [`CacheLimits::max_entries`] entries; past it the least
//!   recently used entry with no open stream goes (its next request reads
//!   it from the store again);
//! - an entry the store has not confirmed for [`CacheLimits::revalidate`]
//!   is read again before a request uses it; gone from the store means
//!   evicted and 404;
//! - one sweep task per proxy ([`run_sweeper`]), every `revalidate`: drops
//!   entries with no open stream and no request for [`CacheLimits::idle`],
//!   and checks entries with open streams against the store, so a session
//!   deleted elsewhere loses its streams here without waiting for a request.
//!
//! An entry that leaves the cache releases its streams; one whose session
//! left the store also drops its pending writer values.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderValue;
use parking_lot::Mutex;
use shadowcat_session::{
    ResumeKey, Session, SessionId, SessionStore, StoreError, StreamId, WriterHandle, now_millis,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::event_id::GET_STREAM_BIT;
use crate::mcp::protocol::ProtocolVersion;
use crate::stream::StreamRegistry;

#[cfg(feature = "test-util")]
pub(crate) mod layer;

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
    /// Who the session belongs to (see `Session::binding`); replaced when
    /// a passthrough upstream accepted a new credential.
    binding: parking_lot::RwLock<Option<Arc<str>>>,
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
            binding: parking_lot::RwLock::new(s.binding.as_deref().map(Arc::from)),
            next_stream: AtomicU32::new(stream_base()),
        })
    }

    /// Who the session belongs to, if it is bound.
    pub(crate) fn binding(&self) -> Option<Arc<str>> {
        self.binding.read().clone()
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
    /// The store holds `max_sessions` already.
    #[error("the proxy holds {0} sessions, its limit (max_sessions)")]
    Full(u64),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// After a create found the store full, this instance refuses initializes
/// for this long without asking the upstream or the store.
pub(crate) const FULL_MEMO: Duration = Duration::from_secs(1);

/// The cache's limits (from [`crate::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheLimits {
    /// Most entries.
    pub(crate) max_entries: usize,
    /// How long an entry is used without asking the store; also the
    /// sweep interval.
    pub(crate) revalidate: Duration,
    /// An entry with no open stream and no request for this long goes.
    pub(crate) idle: Duration,
}

impl CacheLimits {
    /// The cache limits in `limits`.
    pub(crate) fn from_limits(limits: &crate::Limits) -> Self {
        CacheLimits {
            max_entries: limits.max_cached_sessions,
            revalidate: limits.session_revalidate_interval,
            idle: limits.session_idle_timeout,
        }
    }
}

/// In-use entries the capacity eviction moves to the back before it gives
/// up (the cache then stays over its bound until streams end).
const MAX_IN_USE_SKIPPED: usize = 32;

/// Why an entry left the cache (the `reason` label of
/// `shadowcat_session_cache_evictions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evicted {
    /// The store no longer has the session.
    Gone,
    /// No request and no open stream for the idle timeout.
    Idle,
    /// Least recently used, past `max_entries`.
    Capacity,
}

impl Evicted {
    fn label(self) -> &'static str {
        match self {
            Evicted::Gone => "gone",
            Evicted::Idle => "idle",
            Evicted::Capacity => "capacity",
        }
    }
}

#[derive(Debug)]
struct Cached {
    entry: Arc<SessionEntry>,
    /// Its key in [`Cache::order`].
    tick: u64,
    /// The last request on this instance.
    used: Instant,
    /// The last time the store confirmed the session.
    checked: Instant,
}

/// The entries and their use order. Guarded by one lock, never held
/// across an await.
#[derive(Debug, Default)]
struct Cache {
    map: HashMap<SessionId, Cached>,
    /// Use order, least recent first.
    order: BTreeMap<u64, Arc<SessionEntry>>,
    next_tick: u64,
}

/// What a cache hit needs next.
enum Hit {
    /// Confirmed by the store within the interval.
    Fresh(Arc<SessionEntry>),
    /// To be read again from the store before use.
    Due(Arc<SessionEntry>),
}

fn in_use(e: &SessionEntry) -> bool {
    e.open_streams.load(Ordering::Relaxed) > 0
}

impl Cache {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Moves `id` to the back of the use order.
    fn bump(&mut self, id: &str) -> Option<&mut Cached> {
        let tick = self.tick();
        let c = self.map.get_mut(id)?;
        if let Some(e) = self.order.remove(&c.tick) {
            self.order.insert(tick, e);
        }
        c.tick = tick;
        Some(c)
    }

    /// A request for `id`: marks it used; due when the store has not
    /// confirmed it for `revalidate` (and then counts as checked now, so
    /// concurrent requests do not all ask).
    fn hit(&mut self, id: &str, now: Instant, revalidate: Duration) -> Option<Hit> {
        let c = self.bump(id)?;
        c.used = now;
        let entry = Arc::clone(&c.entry);
        if now.saturating_duration_since(c.checked) >= revalidate {
            c.checked = now;
            Some(Hit::Due(entry))
        } else {
            Some(Hit::Fresh(entry))
        }
    }

    /// Adds `entry` unless its id is cached (then returns the cached one);
    /// pushes what the bound evicts onto `evicted`.
    fn insert(
        &mut self,
        entry: Arc<SessionEntry>,
        now: Instant,
        max: usize,
        evicted: &mut Vec<Arc<SessionEntry>>,
    ) -> Arc<SessionEntry> {
        if let Some(c) = self.map.get(entry.id.as_str()) {
            return Arc::clone(&c.entry);
        }
        let tick = self.tick();
        self.order.insert(tick, Arc::clone(&entry));
        self.map.insert(
            entry.id.clone(),
            Cached {
                entry: Arc::clone(&entry),
                tick,
                used: now,
                checked: now,
            },
        );
        let mut skipped = 0;
        while self.map.len() > max {
            let Some((old, victim)) = self.order.pop_first() else {
                break;
            };
            if old == tick || (in_use(&victim) && skipped == MAX_IN_USE_SKIPPED) {
                // Everything older has open streams: over the bound until
                // streams end, rather than cut one.
                self.order.insert(old, victim);
                metrics::counter!("shadowcat_session_cache_over_capacity_total").increment(1);
                tracing::debug!(
                    cached = self.map.len(),
                    max,
                    "session cache over its bound: its oldest entries have open streams"
                );
                break;
            }
            if in_use(&victim) {
                // Open streams are use: it moves to the back.
                skipped += 1;
                let back = self.tick();
                if let Some(c) = self.map.get_mut(victim.id.as_str()) {
                    c.tick = back;
                    c.used = now;
                }
                self.order.insert(back, victim);
                continue;
            }
            self.map.remove(victim.id.as_str());
            evicted.push(victim);
        }
        entry
    }

    /// Removes `id`.
    fn remove(&mut self, id: &str) -> Option<Arc<SessionEntry>> {
        let c = self.map.remove(id)?;
        self.order.remove(&c.tick);
        Some(c.entry)
    }

    /// Removes `entry` if it is the cached one for its id.
    fn remove_same(&mut self, entry: &Arc<SessionEntry>) -> bool {
        match self.map.get(entry.id.as_str()) {
            Some(c) if Arc::ptr_eq(&c.entry, entry) => {
                self.remove(entry.id.as_str());
                true
            }
            _ => false,
        }
    }

    /// Gives back table space far beyond the entries left (after a burst
    /// of sessions ended).
    fn shrink(&mut self) {
        let want = 2 * self.map.len();
        if self.map.capacity() > 2 * want {
            self.map.shrink_to(want);
        }
    }
}

/// The live sessions: the store plus a bounded cache.
#[derive(Debug)]
pub(crate) struct Sessions {
    store: Arc<dyn SessionStore>,
    cache: Mutex<Cache>,
    limits: CacheLimits,
    writer: Option<WriterHandle>,
    upstream_label: String,
    /// Until when the store is taken to be full (see [`FULL_MEMO`]).
    full_until: Mutex<Option<Instant>>,
}

impl Sessions {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        upstream_label: String,
        writer: Option<WriterHandle>,
        limits: CacheLimits,
    ) -> Self {
        Sessions {
            store,
            cache: Mutex::new(Cache::default()),
            limits,
            writer,
            upstream_label,
            full_until: Mutex::new(None),
        }
    }

    /// What sessions record as their upstream.
    pub(crate) fn upstream_label(&self) -> &str {
        &self.upstream_label
    }

    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// How many sessions are cached.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn cached(&self) -> usize {
        self.cache.lock().map.len()
    }

    /// The cached entry of `id`, without marking it used (the admin API).
    pub(crate) fn peek(&self, id: &str) -> Option<Arc<SessionEntry>> {
        self.cache.lock().map.get(id).map(|c| Arc::clone(&c.entry))
    }

    /// Every cached entry, least recently used first (the admin API).
    pub(crate) fn cached_entries(&self) -> Vec<Arc<SessionEntry>> {
        self.cache.lock().order.values().cloned().collect()
    }

    /// A request uses session `id`: from the cache (read again from the
    /// store when not confirmed within the revalidation interval), else
    /// from the store. Records the activity with the writer.
    pub(crate) async fn lookup(&self, id: &str) -> Result<Option<Arc<SessionEntry>>, StoreError> {
        let hit = self
            .cache
            .lock()
            .hit(id, Instant::now(), self.limits.revalidate);
        let entry = match hit {
            Some(Hit::Fresh(e)) => Some(e),
            Some(Hit::Due(e)) => self.revalidate(e).await,
            None => self.load(id).await?,
        };
        if let (Some(e), Some(w)) = (&entry, &self.writer) {
            w.touch(&e.id, now_millis());
        }
        Ok(entry)
    }

    /// Asks the store whether `entry`'s session still exists. A store
    /// error keeps the entry: a store outage must not end sessions.
    async fn revalidate(&self, entry: Arc<SessionEntry>) -> Option<Arc<SessionEntry>> {
        match self.store.get(&entry.id).await {
            Ok(Some(_)) => Some(entry),
            Ok(None) => {
                self.evict_gone(&entry);
                None
            }
            Err(e) => {
                metrics::counter!("shadowcat_store_errors_total", "op" => "revalidate")
                    .increment(1);
                tracing::warn!(session_fp = %entry.id.fingerprint(), error = %e, "could not check a cached session against the store; using the cached entry");
                Some(entry)
            }
        }
    }

    /// Session `id` from the store, cached.
    async fn load(&self, id: &str) -> Result<Option<Arc<SessionEntry>>, StoreError> {
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
        Ok(Some(self.cache_insert(entry)))
    }

    /// Caches `entry` (or returns the entry already cached for its id) and
    /// releases what the bound evicts.
    fn cache_insert(&self, entry: Arc<SessionEntry>) -> Arc<SessionEntry> {
        let mut evicted = Vec::new();
        let entry =
            self.cache
                .lock()
                .insert(entry, Instant::now(), self.limits.max_entries, &mut evicted);
        for e in evicted {
            self.release(&e, Evicted::Capacity);
        }
        entry
    }

    /// A session a store read found gone: out of the cache, streams
    /// released, pending writer values dropped.
    fn evict_gone(&self, entry: &Arc<SessionEntry>) {
        self.cache.lock().remove_same(entry);
        self.release(entry, Evicted::Gone);
        if let Some(w) = &self.writer {
            w.forget(&entry.id);
        }
    }

    /// Releases an evicted entry's streams; logs and counts the eviction.
    fn release(&self, entry: &SessionEntry, why: Evicted) {
        entry.streams.release_all();
        metrics::counter!("shadowcat_session_cache_evictions_total", "reason" => why.label())
            .increment(1);
        tracing::debug!(session_fp = %entry.id.fingerprint(), reason = why.label(), "session left the cache");
    }

    /// One sweep of the cache: drops entries with no open stream and no
    /// request for the idle timeout, and checks entries with open streams
    /// against the store (gone: evicted, streams released).
    pub(crate) async fn sweep(&self) {
        let now = Instant::now();
        let mut idle = Vec::new();
        let mut check = Vec::new();
        {
            let mut cache = self.cache.lock();
            // The use order is oldest first: idle entries are at its front.
            let cut = now.checked_sub(self.limits.idle);
            for e in cache.order.values() {
                let Some(c) = cache.map.get(e.id.as_str()) else {
                    continue;
                };
                if cut.is_none_or(|cut| c.used > cut) {
                    break;
                }
                if !in_use(e) {
                    idle.push(Arc::clone(e));
                }
            }
            for e in &idle {
                cache.remove(e.id.as_str());
            }
            for c in cache.map.values_mut() {
                if in_use(&c.entry) {
                    c.checked = now;
                    check.push(Arc::clone(&c.entry));
                }
            }
            cache.shrink();
            metrics::gauge!("shadowcat_session_cache_entries").set(cache.map.len() as f64);
        }
        for e in idle {
            self.release(&e, Evicted::Idle);
        }
        for e in check {
            match self.store.get(&e.id).await {
                Ok(Some(_)) => {}
                Ok(None) => self.evict_gone(&e),
                Err(err) => {
                    metrics::counter!("shadowcat_store_errors_total", "op" => "revalidate")
                        .increment(1);
                    tracing::warn!(session_fp = %e.id.fingerprint(), error = %err, "could not check a cached session against the store");
                }
            }
        }
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

    /// True when a create found the store full less than [`FULL_MEMO`]
    /// ago.
    pub(crate) fn recently_full(&self) -> bool {
        self.full_until
            .lock()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Creates a session mapped to `upstream_id` and stores it, unless the
    /// store holds `max_sessions` already ([`CreateError::Full`]; exact
    /// under concurrency: the store counts and creates in one step).
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) async fn create(
        &self,
        upstream_id: Option<HeaderValue>,
        version: ProtocolVersion,
        max_sessions: u64,
    ) -> Result<Arc<SessionEntry>, CreateError> {
        self.create_bound(upstream_id, version, max_sessions, |_| None)
            .await
    }

    /// [`Sessions::create`] for a session bound to what `binding` makes
    /// of the new session's key.
    pub(crate) async fn create_bound(
        &self,
        upstream_id: Option<HeaderValue>,
        version: ProtocolVersion,
        max_sessions: u64,
        binding: impl FnOnce(&ResumeKey) -> Option<String>,
    ) -> Result<Arc<SessionEntry>, CreateError> {
        let id = SessionId::generate().map_err(|e| CreateError::Random(e.to_string()))?;
        let key = ResumeKey::generate().map_err(|e| CreateError::Random(e.to_string()))?;
        let mut session = Session::new(id.clone(), self.upstream_label.clone(), version.as_str());
        session.resume_key = Some(key);
        session.binding = binding(&key);
        session.upstream_session_id = upstream_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match self.store.create_bounded(&session, max_sessions).await {
            Ok(()) => {}
            Err(StoreError::Full { limit, .. }) => {
                *self.full_until.lock() = Some(Instant::now() + FULL_MEMO);
                return Err(CreateError::Full(limit));
            }
            Err(e) => return Err(e.into()),
        }
        let entry = Arc::new(SessionEntry {
            id,
            upstream_id,
            version,
            open_streams: Arc::new(AtomicU32::new(0)),
            key,
            streams: Arc::default(),
            binding: parking_lot::RwLock::new(session.binding.as_deref().map(Arc::from)),
            next_stream: AtomicU32::new(stream_base()),
        });
        Ok(self.cache_insert(entry))
    }

    /// Binds `entry`'s session to `binding`, here and in the store (a
    /// read and a whole-session write: rare, after a credential change).
    pub(crate) async fn rebind(
        &self,
        entry: &SessionEntry,
        binding: String,
    ) -> Result<(), StoreError> {
        let Some(mut stored) = self.store.get(&entry.id).await? else {
            return Err(StoreError::NotFound(entry.id.clone()));
        };
        let new: Arc<str> = Arc::from(binding.as_str());
        stored.binding = Some(binding);
        self.store.update(&stored).await?;
        *entry.binding.write() = Some(new);
        Ok(())
    }

    /// Removes a session from the cache, the writer and the store. True
    /// if the store had it.
    pub(crate) async fn remove(&self, id: &SessionId) -> Result<bool, StoreError> {
        let removed = self.cache.lock().remove(id.as_str());
        if let Some(entry) = removed {
            entry.streams.release_all();
        }
        if let Some(w) = &self.writer {
            w.forget(id);
        }
        self.store.delete(id).await
    }

    /// Removes a session from the cache, the writer and the store but lets
    /// its streams end on their own (a stdio session whose server ended:
    /// its streams still carry the error to their clients).
    pub(crate) async fn remove_keep_streams(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.cache.lock().remove(id.as_str());
        if let Some(w) = &self.writer {
            w.forget(id);
        }
        self.store.delete(id).await
    }

    /// A session that left the store (expired): out of this instance's
    /// cache now, its streams released, its pending writer values dropped.
    pub(crate) fn forget_gone(&self, id: &SessionId) {
        let removed = self.cache.lock().remove(id.as_str());
        if let Some(entry) = removed {
            self.release(&entry, Evicted::Gone);
        }
        if let Some(w) = &self.writer {
            w.forget(id);
        }
    }
}

/// The proxy's one cache sweeper: [`Sessions::sweep`] every revalidation
/// interval until the proxy closes or its sessions are dropped.
pub(crate) async fn run_sweeper(sessions: Weak<Sessions>, mut closing: watch::Receiver<bool>) {
    let every = match sessions.upgrade() {
        Some(s) => s.limits.revalidate.max(Duration::from_millis(10)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: skip it
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        let Some(s) = sessions.upgrade() else { return };
        s.sweep().await;
    }
}

#[cfg(test)]
mod tests {
    use shadowcat_session::MemoryStore;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn sessions(store: &Arc<MemoryStore>, max_entries: usize) -> Sessions {
        let limits = CacheLimits {
            max_entries,
            revalidate: SECOND,
            idle: 10 * SECOND,
        };
        let store = Arc::clone(store) as Arc<dyn SessionStore>;
        Sessions::new(store, "http://127.0.0.1:1/mcp".into(), None, limits)
    }

    async fn create(s: &Sessions) -> Arc<SessionEntry> {
        s.create(None, ProtocolVersion::ASSUMED, u64::MAX)
            .await
            .unwrap()
    }

    fn cached(s: &Sessions, e: &SessionEntry) -> bool {
        s.cache.lock().map.contains_key(e.id.as_str())
    }

    #[tokio::test(start_paused = true)]
    async fn the_least_recently_used_entry_goes_past_the_bound() {
        let store = Arc::new(MemoryStore::new());
        let s = sessions(&store, 2);
        let a = create(&s).await;
        let b = create(&s).await;
        assert!(s.lookup(a.id.as_str()).await.unwrap().is_some());
        let c = create(&s).await;
        assert_eq!(s.cached(), 2);
        assert!(!cached(&s, &b), "b was the least recently used");
        assert!(cached(&s, &a) && cached(&s, &c));
        // Evicted is not ended: the store still has it.
        let again = s.lookup(b.id.as_str()).await.unwrap().expect("reloaded");
        assert!(!Arc::ptr_eq(&again, &b));
        assert!(!cached(&s, &a), "a went in turn");
        assert_eq!(s.cached(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_with_open_streams_is_not_evicted_for_room() {
        let store = Arc::new(MemoryStore::new());
        let s = sessions(&store, 2);
        let a = create(&s).await;
        let b = create(&s).await;
        a.open_streams.store(1, Ordering::Relaxed);
        let _c = create(&s).await;
        assert!(cached(&s, &a), "in use");
        assert!(!cached(&s, &b));
        b.open_streams.store(1, Ordering::Relaxed);
        let b = s.lookup(b.id.as_str()).await.unwrap().unwrap();
        b.open_streams.store(1, Ordering::Relaxed);
        // a and b in use: c went for b; with only in-use entries left the
        // cache stays over its bound rather than cut a stream.
        let _d = create(&s).await;
        assert!(cached(&s, &a) && cached(&s, &b));
        assert_eq!(s.cached(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_gone_from_the_store_is_gone_after_the_interval() {
        let store = Arc::new(MemoryStore::new());
        let s = sessions(&store, 10);
        let a = create(&s).await;
        store.delete(&a.id).await.unwrap();
        assert!(
            s.lookup(a.id.as_str()).await.unwrap().is_some(),
            "confirmed less than an interval ago: served from the cache"
        );
        tokio::time::advance(SECOND).await;
        assert!(s.lookup(a.id.as_str()).await.unwrap().is_none());
        assert_eq!(s.cached(), 0);
        assert!(s.lookup(a.id.as_str()).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_drops_idle_entries_and_checks_those_with_streams() {
        let store = Arc::new(MemoryStore::new());
        let s = sessions(&store, 10);
        let idle = create(&s).await;
        let used = create(&s).await;
        let streaming = create(&s).await;
        streaming.open_streams.store(1, Ordering::Relaxed);
        tokio::time::advance(6 * SECOND).await;
        assert!(s.lookup(used.id.as_str()).await.unwrap().is_some());
        tokio::time::advance(4 * SECOND).await;
        s.sweep().await;
        assert!(!cached(&s, &idle), "no request for the idle timeout");
        assert!(cached(&s, &used), "used 4 s ago");
        assert!(cached(&s, &streaming), "open streams and still stored");
        // Deleted elsewhere: the sweep finds out without a request.
        store.delete(&streaming.id).await.unwrap();
        s.sweep().await;
        assert!(!cached(&s, &streaming));
        assert_eq!(s.cached(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_or_gone_session_leaves_nothing_pending_in_the_writer() {
        use shadowcat_session::{BatchingWriter, WriterConfig};
        let store = Arc::new(MemoryStore::new());
        let writer = BatchingWriter::start(
            Arc::clone(&store) as Arc<dyn SessionStore>,
            WriterConfig {
                flush_interval: Duration::from_secs(3600),
                ..WriterConfig::default()
            },
        );
        let limits = CacheLimits {
            max_entries: 10,
            revalidate: SECOND,
            idle: 10 * SECOND,
        };
        let dyn_store = Arc::clone(&store) as Arc<dyn SessionStore>;
        let s = Sessions::new(dyn_store, "x".into(), Some(writer.handle()), limits);
        let queued = || writer.handle().stats().queued;
        // A stdio session stopped for idleness or a dead server.
        let a = create(&s).await;
        assert!(s.lookup(a.id.as_str()).await.unwrap().is_some());
        assert_eq!(queued(), 1, "the request's activity is pending");
        assert!(s.remove_keep_streams(&a.id).await.unwrap());
        assert_eq!(queued(), 0);
        // A session another instance deleted.
        let b = create(&s).await;
        assert!(s.lookup(b.id.as_str()).await.unwrap().is_some());
        assert_eq!(queued(), 1);
        store.delete(&b.id).await.unwrap();
        tokio::time::advance(SECOND).await;
        assert!(s.lookup(b.id.as_str()).await.unwrap().is_none());
        assert_eq!(queued(), 0);
        assert!(writer.shutdown().await.is_complete());
    }
}
