//! Shadowcat's persistence side: the `Session` model, the `SessionStore`
//! trait with its stores (memory, embedded redb file, Redis) and the
//! `BatchingWriter`, the one task per store that gets resumption points and
//! activity times into the store without ever slowing a stream; plus the
//! `ReplayLog` primitives (a shared, fenced event log on Redis Streams).
//!
//! Architecture invariant: this crate knows nothing about SSE or transports;
//! it never depends on `shadowcat-transport`.
#![forbid(unsafe_code)]

pub mod memory;
pub mod model;
pub mod store;

pub use memory::MemoryStore;
pub use model::{
    Fingerprint, InvalidSessionId, RESUME_KEY_LEN, ResumeKey, ResumptionPoint, Session, SessionId,
    StreamId, StreamPoint, UnixMillis, Update, now_millis,
};
pub use store::{ExpiredSession, Page, SessionStore, StoreError};

pub mod redb_store;
pub mod redis_store;
pub mod replay_log;
pub mod replay_notify;
pub mod writer;
pub use redb_store::RedbStore;
pub use redis_store::{RedisStore, RedisStoreConfig};
pub use replay_log::{
    Lease, LogEntry, Probe, Renewed, ReplayLog, ReplayLogConfig, ReplayLogError, ReplayLogs,
    Retention,
};
pub use replay_notify::{Notifier, Watch};
pub use writer::{
    BatchingWriter, BreakerState, ShutdownReport, WriterConfig, WriterConfigError, WriterHandle,
    WriterStats,
};
pub mod sweeper;
pub use sweeper::{ExpiryHook, IdleSweeper, SweeperConfig};
