//! `RedbStore`: the embedded default store, one redb file.
//!
//! # Layout
//!
//! Four tables, so that the hot persistence call ([`SessionStore::apply_batch`])
//! writes only the small records it changes and never rewrites a session:
//!
//! | table | key | value |
//! |---|---|---|
//! | `sessions` | session id | session metadata (upstream, protocol, created) |
//! | `activity` | session id | `last_activity` (u64 millis) |
//! | `points` | (session id, stream id) | one encoded [`ResumptionPoint`] |
//! | `meta` | `"format"` | the file format version |
//!
//! A `Point` update is one `points` insert, a `Touch` one `activity` read and
//! insert, an `EndStream` one `points` remove. Values use a small versioned
//! binary encoding; anything that does not decode is [`StoreError::Corrupt`].
//!
//! # Threading
//!
//! redb is synchronous. Every call runs on tokio's blocking pool
//! (`spawn_blocking`), so the async runtime is never blocked. The store is
//! used by the `BatchingWriter`'s single task and by the session
//! create/get/delete paths, never per event. Cancelling a call (dropping its
//! future) does not cancel the blocking work: a started transaction still
//! commits or aborts as a whole.
//!
//! # Durability
//!
//! Every mutating call is one write transaction, committed with redb's
//! default durability (fsync before `commit` returns). A call that returned
//! `Ok` survives a crash or `kill -9`; one that did not return is all there
//! or not there at all.
//!
//! # Errors
//!
//! - corrupt file, undecodable record, panic inside redb: [`StoreError::Corrupt`];
//! - disk full, read-only file or file system, permission denied, missing
//!   directory, value too large, wrong file format version:
//!   [`StoreError::Refused`] (an operator must act);
//! - file locked by another process, other I/O errors: [`StoreError::Unavailable`]
//!   (retryable).
//!
//! Any I/O error latches redb's file handle into failing every later call
//! (`PreviousIo`). The store then reopens the file on the next call (once no
//! other call still holds the old handle), so a transient fault or a freed
//! disk does not need a restart; until then calls fail with the mapped error. The file is opened with redb's integrity check on, so
//! a damaged file is reported as [`StoreError::Corrupt`] instead of panicking.
//!
//! Failures (not `NotFound`/`AlreadyExists`) are logged with `tracing` and
//! counted in `shadowcat_store_errors_total{store="redb", op, kind}`; batch
//! updates skipped because their session is gone are counted in
//! `shadowcat_store_skipped_updates_total{store="redb"}`.

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redb::{
    Builder, CommitError, Database, DatabaseError, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageError, TableDefinition, TableError, TransactionError,
};
use smallvec::SmallVec;

use crate::model::{
    RESUME_KEY_LEN, ResumeKey, ResumptionPoint, Session, SessionId, StreamId, StreamPoint,
    UnixMillis, Update,
};
use crate::store::{ExpiredSession, Page, SessionStore, StoreError, is_idle};

const STORE: &str = "redb";

const SESSIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sessions");
const ACTIVITY: TableDefinition<'_, &str, u64> = TableDefinition::new("activity");
const POINTS: TableDefinition<'_, (&str, u32), &[u8]> = TableDefinition::new("points");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const FORMAT_KEY: &str = "format";
/// The file format this code writes and reads.
const FORMAT: u64 = 1;
/// Version byte of a session record without a resume key.
const SESSION_RECORD_V1: u8 = 1;
/// Version byte of a session record with a resume key: the v1 layout
/// followed by the key's 16 bytes.
const SESSION_RECORD_V2: u8 = 2;
/// Version byte of a session record with a binding: the v1 layout, a key
/// flag (0 or 1) and the key when 1, then the binding as a string.
const SESSION_RECORD_V3: u8 = 3;

/// Upper bound on redb's page cache. Session data is small; the cache only
/// grows with pages actually touched.
pub const CACHE_BYTES: usize = 32 << 20;

type Opener = dyn Fn() -> Result<Database, DatabaseError> + Send + Sync;

/// The embedded [`SessionStore`]: sessions and resumption points in one
/// redb file. See the module docs for layout, threading and errors.
///
/// One process at a time: a second open of a live file is
/// [`StoreError::Unavailable`]. Dropping the store closes the file once the
/// calls still in flight on the blocking pool finish.
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    open: Box<Opener>,
    /// The open database. `None` only after a failed reopen. A sync mutex:
    /// held on blocking threads only, never across an await.
    db: Mutex<Option<Arc<Database>>>,
    /// An I/O error latched the open handle; reopen before the next call.
    failed: AtomicBool,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Creates or opens the store file at `path` (its directory must
    /// exist) and checks its integrity.
    ///
    /// Blocking: call it at startup or from a blocking thread. Reads the
    /// whole file once (the integrity check), so the cost grows with the
    /// file. A file that is not a store, or is damaged, is
    /// [`StoreError::Corrupt`]; a missing directory or a file that cannot be
    /// written is [`StoreError::Refused`]; a file another process holds
    /// open is [`StoreError::Unavailable`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let file = path.clone();
        let open = move || {
            Builder::new()
                .set_cache_size(CACHE_BYTES)
                .set_check_integrity_on_open(true)
                .create(&file)
        };
        Self::with_opener(path, Box::new(open))
    }

    fn with_opener(path: PathBuf, open: Box<Opener>) -> Result<Self, StoreError> {
        let inner = Arc::new(Inner {
            path,
            open,
            db: Mutex::new(None),
            failed: AtomicBool::new(false),
        });
        match inner.open_db() {
            Ok(db) => {
                *inner.db.lock() = Some(Arc::new(db));
                Ok(RedbStore { inner })
            }
            Err(fail) => {
                let err = inner.resolve(fail);
                record_failure("open", &inner.path, &err);
                Err(err)
            }
        }
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` with the database on the blocking pool, mapping, logging
    /// and counting its errors.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Fail> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let joined = tokio::task::spawn_blocking(move || {
            let db = inner.acquire().map_err(|e| inner.resolve(e))?;
            let out = f(&db);
            // Drop our handle before mapping, so a reopen is not held up by it.
            drop(db);
            out.map_err(|e| inner.resolve(e))
        })
        .await;
        let result = match joined {
            Ok(result) => result,
            Err(join) if join.is_panic() => {
                // redb panics only on a damaged file; reopen (with the
                // integrity check) on the next call.
                self.inner.failed.store(true, Ordering::Release);
                Err(StoreError::Corrupt {
                    store: STORE,
                    message: format!("{op} panicked in redb: {join}"),
                })
            }
            Err(join) => Err(StoreError::Unavailable {
                store: STORE,
                message: format!("{op} was cancelled: {join}"),
            }),
        };
        if let Err(err) = &result {
            record_failure(op, &self.inner.path, err);
        }
        result
    }
}

/// Logs and counts a failure; `NotFound`/`AlreadyExists`/`Full` are
/// answers, not failures.
fn record_failure(op: &'static str, path: &Path, err: &StoreError) {
    let kind = match err {
        StoreError::AlreadyExists(_) | StoreError::NotFound(_) | StoreError::Full { .. } => return,
        StoreError::Unavailable { .. } => "unavailable",
        StoreError::Corrupt { .. } => "corrupt",
        StoreError::Refused { .. } => "refused",
    };
    tracing::warn!(store = STORE, op, kind, path = %path.display(), error = %err, "store call failed");
    metrics::counter!("shadowcat_store_errors_total", "store" => STORE, "op" => op, "kind" => kind)
        .increment(1);
}

impl Inner {
    /// Opens the file and makes sure the tables and format marker exist.
    fn open_db(&self) -> Result<Database, Fail> {
        let db = (self.open)()?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let format = meta.get(FORMAT_KEY)?.map(|v| v.value());
            match format {
                None => {
                    meta.insert(FORMAT_KEY, FORMAT)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(Fail::Store(StoreError::Refused {
                        store: STORE,
                        message: format!(
                            "{}: file format {other}, this build reads format {FORMAT}",
                            self.path.display()
                        ),
                    }));
                }
            }
            txn.open_table(SESSIONS)?;
            txn.open_table(ACTIVITY)?;
            txn.open_table(POINTS)?;
        }
        txn.commit()?;
        Ok(db)
    }

    /// The open database, reopening it first if an I/O error latched it.
    fn acquire(&self) -> Result<Arc<Database>, Fail> {
        let mut slot = self.db.lock();
        if self.failed.load(Ordering::Acquire) || slot.is_none() {
            if let Some(old) = slot.take() {
                match Arc::try_unwrap(old) {
                    // Dropping closes the file and releases its lock.
                    Ok(db) => drop(db),
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(Fail::Store(StoreError::Unavailable {
                            store: STORE,
                            message: "reopening after an I/O error, waiting for calls in flight"
                                .into(),
                        }));
                    }
                }
            }
            let db = self.open_db()?;
            self.failed.store(false, Ordering::Release);
            tracing::info!(store = STORE, path = %self.path.display(), "reopened store file after an I/O error");
            *slot = Some(Arc::new(db));
        }
        match slot.as_ref() {
            Some(db) => Ok(Arc::clone(db)),
            None => Err(Fail::Store(StoreError::Unavailable {
                store: STORE,
                message: "store file is not open".into(),
            })),
        }
    }

    /// Maps a failure onto a [`StoreError`], marking the handle for reopen
    /// when redb latched it (an I/O or backend error, a poisoned lock).
    fn resolve(&self, fail: Fail) -> StoreError {
        match fail {
            Fail::Store(err) => err,
            Fail::Redb(err) => {
                if matches!(
                    err,
                    redb::Error::Io(_)
                        | redb::Error::PreviousIo
                        | redb::Error::Backend(_)
                        | redb::Error::LockPoisoned(_)
                ) {
                    self.failed.store(true, Ordering::Release);
                }
                map_redb_error(&self.path, err)
            }
        }
    }
}

/// A failure inside a blocking call: a redb error still to be mapped, or a
/// store answer.
#[derive(Debug)]
enum Fail {
    Redb(redb::Error),
    Store(StoreError),
}

macro_rules! fail_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Redb(e.into())
            }
        }
    )*};
}
fail_from_redb!(
    DatabaseError,
    TransactionError,
    TableError,
    StorageError,
    CommitError
);

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

fn map_redb_error(path: &Path, err: redb::Error) -> StoreError {
    use std::io::ErrorKind as K;
    let message = format!("{}: {err}", path.display());
    match err {
        redb::Error::Io(io) => match io.kind() {
            K::InvalidData | K::UnexpectedEof => StoreError::Corrupt {
                store: STORE,
                message,
            },
            K::StorageFull
            | K::QuotaExceeded
            | K::FileTooLarge
            | K::ReadOnlyFilesystem
            | K::PermissionDenied
            | K::NotFound
            | K::NotADirectory
            | K::IsADirectory
            | K::InvalidInput => StoreError::Refused {
                store: STORE,
                message,
            },
            _ => StoreError::Unavailable {
                store: STORE,
                message,
            },
        },
        redb::Error::Corrupted(_)
        | redb::Error::RepairAborted
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => StoreError::Corrupt {
            store: STORE,
            message,
        },
        redb::Error::ValueTooLarge(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::LockProtocolMismatch
        | redb::Error::Unsupported => StoreError::Refused {
            store: STORE,
            message,
        },
        // Locked by another process, a latched I/O error (reopened on the
        // next call), and anything transient.
        _ => StoreError::Unavailable {
            store: STORE,
            message,
        },
    }
}

fn corrupt(id: &str, what: &str) -> Fail {
    Fail::Store(StoreError::Corrupt {
        store: STORE,
        message: format!("session {id}: {what}"),
    })
}

// ---- encoding ----

/// Session metadata: everything but `id` (the key), `last_activity` (its
/// own table) and `streams` (the points table).
fn encode_session(s: &Session, out: &mut Vec<u8>) {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.clear();
    out.push(if s.binding.is_some() {
        SESSION_RECORD_V3
    } else if s.resume_key.is_some() {
        SESSION_RECORD_V2
    } else {
        SESSION_RECORD_V1
    });
    out.extend_from_slice(&s.created_at.to_le_bytes());
    put_str(out, &s.upstream);
    put_str(out, &s.protocol_version);
    match &s.upstream_session_id {
        None => out.push(0),
        Some(u) => {
            out.push(1);
            put_str(out, u);
        }
    }
    if let Some(binding) = &s.binding {
        // V3: a key flag, the key, then the binding.
        match &s.resume_key {
            Some(key) => {
                out.push(1);
                out.extend_from_slice(&key.0);
            }
            None => out.push(0),
        }
        put_str(out, binding);
    } else if let Some(key) = &s.resume_key {
        out.extend_from_slice(&key.0);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*b))
    }
    fn u64(&mut self) -> Option<u64> {
        let (b, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*b))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        if len > self.0.len() {
            return None;
        }
        let (b, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(b).ok()
    }
}

/// The parts of a session record; `id`, activity and streams come from
/// elsewhere.
struct SessionRecord<'a> {
    created_at: UnixMillis,
    upstream: &'a str,
    protocol_version: &'a str,
    upstream_session_id: Option<&'a str>,
    resume_key: Option<ResumeKey>,
    binding: Option<&'a str>,
}

fn decode_session(bytes: &[u8]) -> Option<SessionRecord<'_>> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if !matches!(
        version,
        SESSION_RECORD_V1 | SESSION_RECORD_V2 | SESSION_RECORD_V3
    ) {
        return None;
    }
    let created_at = r.u64()?;
    let upstream = r.str()?;
    let protocol_version = r.str()?;
    let upstream_session_id = match r.u8()? {
        0 => None,
        1 => Some(r.str()?),
        _ => return None,
    };
    let has_key = match version {
        SESSION_RECORD_V2 => true,
        SESSION_RECORD_V3 => r.u8()? == 1,
        _ => false,
    };
    let resume_key = if has_key {
        let (key, rest) = r.0.split_first_chunk::<RESUME_KEY_LEN>()?;
        r.0 = rest;
        Some(ResumeKey(*key))
    } else {
        None
    };
    let binding = if version == SESSION_RECORD_V3 {
        Some(r.str()?)
    } else {
        None
    };
    r.0.is_empty().then_some(SessionRecord {
        created_at,
        upstream,
        protocol_version,
        upstream_session_id,
        resume_key,
        binding,
    })
}

/// A point: `client_seq` (u64 LE), then 0 (no upstream id) or 1 followed by
/// the id's UTF-8 bytes to the end.
fn encode_point(p: &ResumptionPoint, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&p.client_seq.to_le_bytes());
    match &p.upstream_event_id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id.as_bytes());
        }
    }
}

fn decode_point(bytes: &[u8]) -> Option<ResumptionPoint> {
    let mut r = Reader(bytes);
    let client_seq = r.u64()?;
    let upstream_event_id = match r.u8()? {
        0 if r.0.is_empty() => None,
        1 => Some(std::str::from_utf8(r.0).ok()?.to_owned()),
        _ => return None,
    };
    Some(ResumptionPoint {
        upstream_event_id,
        client_seq,
    })
}

// ---- table operations (blocking) ----

type PointKey<'a> = (&'a str, u32);

fn stream_range(id: &str) -> std::ops::RangeInclusive<PointKey<'_>> {
    (id, 0)..=(id, u32::MAX)
}

fn load_streams(
    points: &impl ReadableTable<PointKey<'static>, &'static [u8]>,
    id: &str,
) -> Result<SmallVec<[StreamPoint; 1]>, Fail> {
    let mut out = SmallVec::new();
    for entry in points.range(stream_range(id))? {
        let (k, v) = entry?;
        let (_, stream) = k.value();
        let point =
            decode_point(v.value()).ok_or_else(|| corrupt(id, "undecodable resumption point"))?;
        out.push(StreamPoint {
            stream: StreamId(stream),
            point,
        });
    }
    Ok(out)
}

fn load_session(
    id: &str,
    record: &[u8],
    activity: &impl ReadableTable<&'static str, u64>,
    points: &impl ReadableTable<PointKey<'static>, &'static [u8]>,
) -> Result<Session, Fail> {
    let parsed = SessionId::parse(id).map_err(|e| corrupt(id, &e.to_string()))?;
    let rec = decode_session(record).ok_or_else(|| corrupt(id, "undecodable session record"))?;
    let last_activity = activity
        .get(id)?
        .map(|v| v.value())
        .ok_or_else(|| corrupt(id, "no activity record"))?;
    Ok(Session {
        id: parsed,
        upstream_session_id: rec.upstream_session_id.map(str::to_owned),
        upstream: rec.upstream.to_owned(),
        protocol_version: rec.protocol_version.to_owned(),
        created_at: rec.created_at,
        last_activity,
        streams: load_streams(points, id)?,
        resume_key: rec.resume_key,
        binding: rec.binding.map(str::to_owned),
    })
}

/// Removes every point of session `id`.
fn clear_streams(
    points: &mut redb::Table<'_, PointKey<'static>, &'static [u8]>,
    id: &str,
) -> Result<(), Fail> {
    points.retain_in(stream_range(id), |_, _| false)?;
    Ok(())
}

/// Writes a whole session: record, activity, and exactly its streams.
fn write_session(txn: &redb::WriteTransaction, s: &Session) -> Result<(), Fail> {
    let id = s.id.as_str();
    let mut buf = Vec::with_capacity(64);
    encode_session(s, &mut buf);
    txn.open_table(SESSIONS)?.insert(id, buf.as_slice())?;
    txn.open_table(ACTIVITY)?.insert(id, s.last_activity)?;
    let mut points = txn.open_table(POINTS)?;
    clear_streams(&mut points, id)?;
    for sp in &s.streams {
        encode_point(&sp.point, &mut buf);
        points.insert((id, sp.stream.0), buf.as_slice())?;
    }
    Ok(())
}

fn exists(txn: &redb::WriteTransaction, id: &str) -> Result<bool, Fail> {
    Ok(txn.open_table(SESSIONS)?.get(id)?.is_some())
}

/// What an expiry reports about session `id` from its record; `None` when
/// the id or the record does not decode.
fn expired_of(id: &str, record: &[u8]) -> Option<ExpiredSession> {
    let rec = decode_session(record)?;
    Some(ExpiredSession {
        id: SessionId::parse(id).ok()?,
        upstream: rec.upstream.to_owned(),
        upstream_session_id: rec.upstream_session_id.map(str::to_owned),
        protocol_version: rec.protocol_version.to_owned(),
    })
}

/// Removes a session and everything about it; true if it existed.
fn remove_session(txn: &redb::WriteTransaction, id: &str) -> Result<bool, Fail> {
    let existed = txn.open_table(SESSIONS)?.remove(id)?.is_some();
    txn.open_table(ACTIVITY)?.remove(id)?;
    clear_streams(&mut txn.open_table(POINTS)?, id)?;
    Ok(existed)
}

/// Applies a batch in one transaction; returns how many updates were
/// skipped because their session is unknown.
fn apply_updates(db: &Database, updates: &[Update]) -> Result<u64, Fail> {
    let txn = db.begin_write()?;
    let mut skipped = 0;
    {
        let sessions = txn.open_table(SESSIONS)?;
        let mut activity = txn.open_table(ACTIVITY)?;
        let mut points = txn.open_table(POINTS)?;
        let mut buf = Vec::with_capacity(64);
        // Updates of one session tend to be adjacent: remember the last answer.
        let mut known: Option<(&SessionId, bool)> = None;
        for update in updates {
            let session = update.session();
            let present = match known {
                Some((k, present)) if k == session => present,
                _ => {
                    let present = sessions.get(session.as_str())?.is_some();
                    known = Some((session, present));
                    present
                }
            };
            if !present {
                skipped += 1;
                continue;
            }
            let id = session.as_str();
            match update {
                Update::Point { stream, point, .. } => {
                    encode_point(point, &mut buf);
                    points.insert((id, stream.0), buf.as_slice())?;
                }
                Update::Touch { at, .. } => {
                    let current = activity.get(id)?.map_or(0, |v| v.value());
                    if *at > current {
                        activity.insert(id, *at)?;
                    }
                }
                Update::EndStream { stream, .. } => {
                    points.remove((id, stream.0))?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(skipped)
}

#[async_trait]
impl SessionStore for RedbStore {
    fn kind(&self) -> &'static str {
        STORE
    }

    async fn create_bounded(&self, session: &Session, max_sessions: u64) -> Result<(), StoreError> {
        let session = session.clone();
        self.run("create", move |db| {
            // Write transactions are serialized: the count and the insert
            // are one step.
            let txn = db.begin_write()?;
            if exists(&txn, session.id.as_str())? {
                return Err(StoreError::AlreadyExists(session.id).into());
            }
            if txn.open_table(SESSIONS)?.len()? >= max_sessions {
                return Err(StoreError::Full {
                    store: STORE,
                    limit: max_sessions,
                }
                .into());
            }
            write_session(&txn, &session)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let id = id.clone();
        self.run("get", move |db| {
            let txn = db.begin_read()?;
            let sessions = txn.open_table(SESSIONS)?;
            let Some(record) = sessions.get(id.as_str())? else {
                return Ok(None);
            };
            let activity = txn.open_table(ACTIVITY)?;
            let points = txn.open_table(POINTS)?;
            load_session(id.as_str(), record.value(), &activity, &points).map(Some)
        })
        .await
    }

    async fn update(&self, session: &Session) -> Result<(), StoreError> {
        let session = session.clone();
        self.run("update", move |db| {
            let txn = db.begin_write()?;
            if !exists(&txn, session.id.as_str())? {
                return Err(StoreError::NotFound(session.id).into());
            }
            write_session(&txn, &session)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.run("delete", move |db| {
            let txn = db.begin_write()?;
            let existed = remove_session(&txn, id.as_str())?;
            txn.commit()?;
            Ok(existed)
        })
        .await
    }

    async fn list(&self, after: Option<&SessionId>, limit: usize) -> Result<Page, StoreError> {
        let after = after.cloned();
        self.run("list", move |db| {
            let txn = db.begin_read()?;
            let sessions = txn.open_table(SESSIONS)?;
            let activity = txn.open_table(ACTIVITY)?;
            let points = txn.open_table(POINTS)?;
            let lower = after
                .as_ref()
                .map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_str()));
            let mut iter = sessions.range::<&str>((lower, Bound::Unbounded))?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for entry in iter.by_ref().take(limit) {
                let (k, v) = entry?;
                out.push(load_session(k.value(), v.value(), &activity, &points)?);
            }
            let more = iter.next().transpose()?.is_some();
            let next = match (more, out.last()) {
                (true, Some(last)) => Some(last.id.clone()),
                _ => None,
            };
            Ok(Page {
                sessions: out,
                next,
            })
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.run("count", |db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(SESSIONS)?.len()?)
        })
        .await
    }

    async fn apply_batch(&self, updates: &[Update]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let updates = updates.to_vec();
        let skipped = self
            .run("apply_batch", move |db| apply_updates(db, &updates))
            .await?;
        if skipped > 0 {
            tracing::debug!(
                store = STORE,
                skipped,
                "batch updates for unknown sessions skipped"
            );
            metrics::counter!("shadowcat_store_skipped_updates_total", "store" => STORE)
                .increment(skipped);
        }
        Ok(())
    }

    async fn expire_idle(
        &self,
        now: UnixMillis,
        max_idle: Duration,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
        let (gone, unreadable) = self
            .run("expire_idle", move |db| {
                let txn = db.begin_write()?;
                let mut idle = Vec::new();
                for entry in txn.open_table(ACTIVITY)?.iter()? {
                    let (k, v) = entry?;
                    if is_idle(v.value(), now, max_idle) {
                        idle.push(k.value().to_owned());
                    }
                }
                let mut gone = Vec::with_capacity(idle.len());
                let mut unreadable = Vec::new();
                for id in idle {
                    let expired = {
                        let sessions = txn.open_table(SESSIONS)?;
                        let record = sessions.get(id.as_str())?;
                        record.map(|r| expired_of(&id, r.value()))
                    };
                    if remove_session(&txn, &id)? {
                        match expired {
                            Some(Some(e)) => gone.push(e),
                            _ => unreadable.push(id),
                        }
                    }
                }
                txn.commit()?;
                Ok((gone, unreadable))
            })
            .await?;
        for id in unreadable {
            // Removed all the same: an unreadable record cannot be ended
            // upstream, only forgotten.
            tracing::warn!(store = STORE, session = %id, "expired a session whose record did not decode; it is not ended upstream");
            metrics::counter!("shadowcat_store_errors_total", "store" => STORE, "op" => "expire_idle", "kind" => "corrupt")
                .increment(1);
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io;
    use std::sync::atomic::AtomicUsize;

    use redb::backends::FileBackend;
    use redb::{BackendError, StorageBackend};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "shadowcat-redb-unit-{tag}-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                crate::model::now_millis()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn point(id: Option<&str>, seq: u64) -> ResumptionPoint {
        ResumptionPoint {
            upstream_event_id: id.map(str::to_owned),
            client_seq: seq,
        }
    }

    #[test]
    fn point_encoding_roundtrips_and_rejects_garbage() {
        let mut buf = Vec::new();
        for p in [
            point(None, 0),
            point(Some(""), 1),
            point(Some("0/17"), u64::MAX),
            point(Some("caf\u{e9} | id"), 42),
        ] {
            encode_point(&p, &mut buf);
            assert_eq!(decode_point(&buf), Some(p));
        }
        assert_eq!(decode_point(&[]), None);
        assert_eq!(decode_point(&[0; 8]), None, "no tag");
        assert_eq!(decode_point(&[0, 0, 0, 0, 0, 0, 0, 0, 2]), None, "bad tag");
        assert_eq!(
            decode_point(&[0, 0, 0, 0, 0, 0, 0, 0, 0, b'x']),
            None,
            "trailing"
        );
        assert_eq!(
            decode_point(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]),
            None,
            "not UTF-8"
        );
    }

    #[test]
    fn session_record_roundtrips_and_rejects_garbage() {
        let mut s = Session::new(
            SessionId::parse("abc").unwrap(),
            "http://[::1]:9/mcp",
            "2025-11-25",
        );
        let mut buf = Vec::new();
        let keys = [None, Some(ResumeKey([7; RESUME_KEY_LEN])), None];
        for (usid, key) in [None, Some(String::new()), Some("up-\u{e9}".to_string())]
            .into_iter()
            .zip(keys)
        {
            s.upstream_session_id = usid;
            s.resume_key = key;
            encode_session(&s, &mut buf);
            let rec = decode_session(&buf).expect("decodes");
            assert_eq!(rec.created_at, s.created_at);
            assert_eq!(rec.upstream, s.upstream);
            assert_eq!(rec.protocol_version, s.protocol_version);
            assert_eq!(rec.upstream_session_id, s.upstream_session_id.as_deref());
            assert_eq!(rec.resume_key, s.resume_key);
            // Every strict prefix is rejected, as is a trailing byte.
            for cut in 0..buf.len() {
                assert!(decode_session(&buf[..cut]).is_none(), "prefix {cut}");
            }
            let mut longer = buf.clone();
            longer.push(0);
            assert!(decode_session(&longer).is_none());
        }
        encode_session(&s, &mut buf);
        buf[0] = 9;
        assert!(decode_session(&buf).is_none(), "unknown record version");
    }

    fn raw_db(store: &RedbStore) -> Arc<Database> {
        store.inner.acquire().unwrap()
    }

    #[tokio::test]
    async fn undecodable_records_are_corrupt() {
        let dir = TempDir::new("corrupt-rec");
        let store = RedbStore::open(dir.0.join("s.redb")).unwrap();
        let s = Session::new(SessionId::parse("victim").unwrap(), "u", "2025-11-25");
        store.create(&s).await.unwrap();
        {
            let db = raw_db(&store);
            let txn = db.begin_write().unwrap();
            txn.open_table(POINTS)
                .unwrap()
                .insert(("victim", 3), [7u8, 7].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = store.get(&s.id).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("victim"), "{err}");
        let err = store.list(None, 10).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(!err.is_retryable());
        {
            let db = raw_db(&store);
            let txn = db.begin_write().unwrap();
            txn.open_table(SESSIONS)
                .unwrap()
                .insert("victim", [1u8, 2, 3].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let err = store.get(&s.id).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_newer_file_format_is_refused() {
        let dir = TempDir::new("format");
        let path = dir.0.join("s.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            let db = raw_db(&store);
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(FORMAT_KEY, FORMAT + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
        assert!(err.to_string().contains("format 2"), "{err}");
    }

    /// A real file whose writes fail while `fail` holds an error kind.
    #[derive(Debug)]
    struct Flaky {
        file: FileBackend,
        fail: Arc<Mutex<Option<io::ErrorKind>>>,
    }

    impl Flaky {
        fn check(&self) -> Result<(), io::Error> {
            match *self.fail.lock() {
                Some(kind) => Err(io::Error::new(kind, "injected fault")),
                None => Ok(()),
            }
        }
    }

    impl StorageBackend for Flaky {
        fn len(&self) -> Result<u64, io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> Result<(), io::Error> {
            self.file.close()
        }
        fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.file.try_lock_range(s, e)
        }
        fn try_lock_shared_range(
            &self,
            s: Bound<u64>,
            e: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.file.try_lock_shared_range(s, e)
        }
        fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.file.lock_range(s, e)
        }
        fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.file.lock_shared_range(s, e)
        }
        fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.file.unlock_range(s, e)
        }
        fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.file.query_lock_range(s, e)
        }
    }

    fn flaky_store(path: PathBuf, fail: Arc<Mutex<Option<io::ErrorKind>>>) -> RedbStore {
        let file_path = path.clone();
        let open = move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file_path)?;
            let backend = Flaky {
                file: FileBackend::new(file)?,
                fail: Arc::clone(&fail),
            };
            Builder::new()
                .set_check_integrity_on_open(true)
                .create_with_backend(backend)
        };
        RedbStore::with_opener(path, Box::new(open)).unwrap()
    }

    fn touch(id: &SessionId, seq: u64) -> Vec<Update> {
        vec![Update::Point {
            session: id.clone(),
            stream: StreamId(0),
            point: point(Some(&seq.to_string()), seq),
        }]
    }

    /// An I/O error latches redb's handle; the store reopens the file on a
    /// later call, so a transient fault or a freed disk heals without a
    /// restart, and nothing committed before is lost.
    #[tokio::test]
    async fn the_store_reopens_after_an_io_error() {
        let dir = TempDir::new("flaky");
        let fail = Arc::new(Mutex::new(None));
        let store = flaky_store(dir.0.join("s.redb"), Arc::clone(&fail));
        let s = Session::new(SessionId::parse("survivor").unwrap(), "u", "2025-11-25");
        store.create(&s).await.unwrap();
        store.apply_batch(&touch(&s.id, 1)).await.unwrap();

        for (kind, retryable) in [
            (io::ErrorKind::Other, true),
            (io::ErrorKind::StorageFull, false),
        ] {
            *fail.lock() = Some(kind);
            let err = store.apply_batch(&touch(&s.id, 2)).await.unwrap_err();
            assert_eq!(err.is_retryable(), retryable, "{kind:?}: {err:?}");
            let expected_refused = !retryable;
            assert_eq!(
                matches!(err, StoreError::Refused { .. }),
                expected_refused,
                "{err:?}"
            );
            // Still failing: the reopen itself fails, cleanly.
            let err = store.apply_batch(&touch(&s.id, 2)).await.unwrap_err();
            assert!(!matches!(err, StoreError::Corrupt { .. }), "{err:?}");

            *fail.lock() = None;
            let got = store.get(&s.id).await.unwrap().unwrap();
            assert_eq!(
                got.stream(StreamId(0)),
                Some(&point(Some("1"), 1)),
                "{kind:?}: the failed batch is absent, the committed one present"
            );
            store.apply_batch(&touch(&s.id, 3)).await.unwrap();
            store.apply_batch(&touch(&s.id, 1)).await.unwrap();
        }
        assert_eq!(store.count().await.unwrap(), 1);
    }
}
