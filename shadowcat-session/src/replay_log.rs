//! `ReplayLog`: a stream's encoded events in a Redis Stream, shared by
//! several proxy instances, with a lease naming the one instance that
//! appends (the owner) and a fencing token that stops a former owner.
//!
//! # Keys
//!
//! Per (session, stream), under `{ns}:rl:{session}:{stream}:`:
//!
//! - `log`: the Redis Stream. Entry id `{seq}-0`, fields `d` (the encoded
//!   event) and `t` (Redis server time, millis, for age retention).
//! - `lease`: `{owner}|{token}`, set with `PX`; absent when nobody owns.
//! - `fence`: the stream's fencing counter. `acquire` increments it, so a
//!   token is never reused; it has no TTL on purpose.
//! - `meta`: a hash: `seq` (the last appended seq), `up` (the upstream
//!   resume id of the last batch that carried one).
//!
//! # Fencing
//!
//! `append` runs as one script that compares `fence` with the lease's
//! token before it writes: once another instance acquired the lease (and
//! so incremented `fence`), a former owner's append is refused whole with
//! [`ReplayLogError::Fenced`], even if its lease expired unnoticed.
//!
//! # Round trips
//!
//! Every call is one round trip (`EVALSHA`, or one more `EVAL` after a
//! server restart emptied the script cache). [`ReplayLogs::round_trips`]
//! counts them. `tail` uses a second connection without reply timeout, so
//! a blocking read never delays appends; tails on one `ReplayLogs` queue
//! behind each other on that connection.
//!
//! # Retention
//!
//! After each append the script trims the log to [`Retention::max_len`]
//! entries (exact `MAXLEN`) and drops entries older than
//! [`Retention::max_age`] (by `t`, looking at most [`AGE_SCAN`] entries
//! per append, so one append's work stays bounded).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind};

use crate::model::{SessionId, StreamId};

/// Oldest entries the age trim inspects per append.
pub const AGE_SCAN: usize = 64;

/// Largest seq the log accepts: Lua numbers are doubles.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Settings of [`ReplayLogs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayLogConfig {
    /// Prefix of every key (`{namespace}:rl:…`). Default `shadowcat`.
    pub namespace: String,
    /// Limit of one TCP connect and handshake attempt. Default 1 s.
    pub connect_timeout: Duration,
    /// Hard limit of one call (for `tail`: on top of its block time).
    /// Default 3 s.
    pub call_timeout: Duration,
}

impl Default for ReplayLogConfig {
    fn default() -> Self {
        ReplayLogConfig {
            namespace: "shadowcat".to_owned(),
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(3),
        }
    }
}

/// How much of a log Redis keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most entries kept (at least 1).
    pub max_len: u64,
    /// Entries older than this are dropped (`None`: no age limit).
    pub max_age: Option<Duration>,
}

/// Failures of replay-log calls.
#[derive(Debug, thiserror::Error)]
pub enum ReplayLogError {
    /// The lease's token is no longer the stream's fence: another instance
    /// took the stream over. Nothing was written.
    #[error("replay log append refused: lease token {token} was fenced off by a newer owner")]
    Fenced {
        /// The stale token.
        token: u64,
    },
    /// Redis refused or failed the call.
    #[error("replay log {op} on {addr}: redis error: {source}")]
    Redis {
        /// The call.
        op: &'static str,
        /// `host:port` (never a password).
        addr: String,
        /// What redis-rs reported.
        #[source]
        source: RedisError,
    },
    /// No answer within the call limit.
    #[error("replay log {op} on {addr}: no answer within {} ms", .limit.as_millis())]
    Timeout {
        /// The call.
        op: &'static str,
        /// `host:port`.
        addr: String,
        /// The limit that passed.
        limit: Duration,
    },
    /// The caller's input cannot be logged (seqs not increasing, 0, too
    /// large; empty namespace; bad URL).
    #[error("replay log {op}: invalid input: {message}")]
    Invalid {
        /// The call.
        op: &'static str,
        /// What to fix.
        message: String,
    },
    /// Redis answered with something the log did not write.
    #[error("replay log {op}: unexpected data: {message}")]
    Corrupt {
        /// The call.
        op: &'static str,
        /// What was found.
        message: String,
    },
}

impl ReplayLogError {
    /// Whether retrying later can help (Redis down, timeout, loading).
    pub fn is_transient(&self) -> bool {
        match self {
            ReplayLogError::Timeout { .. } => true,
            ReplayLogError::Redis { source, .. } => matches!(
                source.kind(),
                ErrorKind::Io
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                    )
            ),
            _ => false,
        }
    }
}

/// One logged event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The client sequence number.
    pub seq: u64,
    /// The encoded event, as sent to clients (may be empty on an end
    /// marker).
    pub data: Bytes,
    /// The stream ends with this entry.
    pub end: bool,
}

/// A log's entries from a seq on, and its state ([`ReplayLog::probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Entries from the seq asked for, in order.
    pub entries: Vec<LogEntry>,
    /// The last seq appended (`None`: no such log).
    pub last_seq: Option<u64>,
    /// The upstream resume id of the last batch that carried one.
    pub upstream_id: Option<String>,
    /// The stream ended (its last entry says so).
    pub ended: bool,
    /// The lease holder's name, when someone holds it.
    pub owner: Option<String>,
}

/// What a renewal learned ([`ReplayLog::renew_info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The lease is (still, or again) ours.
    pub held: bool,
    /// The highest seq a reader on another instance reported sent.
    pub read: u64,
    /// How long ago a reader last reported (`None`: never).
    pub reported_ago: Option<Duration>,
}

/// Ownership of one stream's log: who and with which fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    owner: String,
    token: u64,
}

impl Lease {
    /// The owner name given to `acquire`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token (strictly greater than every earlier one).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// A lease record for `owner` and `token` (a lease taken elsewhere and
    /// handed over).
    pub fn new(owner: String, token: u64) -> Lease {
        Lease { owner, token }
    }

    fn value(&self) -> String {
        format!("{}|{}", self.owner, self.token)
    }
}

/// Takes the lease if nobody holds it. KEYS: lease, fence. ARGV: owner, ttl
/// ms. Returns the new token, or 0 when held.
const ACQUIRE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
";

/// Extends the lease if it is still ours; takes it again when it expired
/// (a Redis restart, a stall) and nobody acquired it since (the fence is
/// still our token). KEYS: lease, fence, meta. ARGV: value, ttl ms, token.
/// Returns {held (1/0), readers' position, ms since a reader reported
/// (-1: never)}.
const RENEW_LUA: &str = r"
local held = 0
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  held = 1
elseif not cur and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  held = 1
end
local m = redis.call('HMGET', KEYS[3], 'rd', 'rt')
local age = -1
if m[2] then
  local t = redis.call('TIME')
  age = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(m[2])
end
return {held, tonumber(m[1] or '0'), age}
";

/// A reader on another instance reports how far it sent. KEYS: meta.
/// ARGV: seq. Keeps the highest position and the time.
const REPORT_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = tonumber(redis.call('HGET', KEYS[1], 'rd') or '0')
if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'rd', ARGV[1]) end
redis.call('HSET', KEYS[1], 'rt', now)
return 1
";

/// Drops the lease if it is still ours and moves the fence on, so the
/// released token can neither append nor take the lease again. KEYS:
/// lease, fence. ARGV: value.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('INCR', KEYS[2])
  return 1
end
return 0
";

// The append scripts, in parts. KEYS: log, fence, meta, lease. ARGV:
// token (append) or owner (acquire-append), max_len, max_age ms ('' none),
// upstream id ('' none), age scan, end ('1': the last entry ends the
// stream), channel, lease ttl ms (acquire-append), then seq, data pairs.

/// The batch's seqs must be above the last logged one: {-1}, nothing
/// written, otherwise.
macro_rules! append_seqs {
    () => {
        r"
local m = redis.call('HMGET', KEYS[3], 'seq', 'tc', 'rd')
local last = tonumber(m[1] or '0')
for i = 9, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq <= last then return {-1} end
  last = seq
end
"
    };
}

/// Fencing: only the fence's current token appends ({0} otherwise).
macro_rules! append_fenced {
    () => {
        r"
local token = ARGV[1]
if redis.call('GET', KEYS[2]) ~= token then return {0} end
"
    };
}

/// Takes the lease ({-2} when another instance holds it).
macro_rules! append_acquire {
    () => {
        r"
if redis.call('EXISTS', KEYS[4]) == 1 then return {-2} end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[4], ARGV[1] .. '|' .. token, 'PX', ARGV[8])
"
    };
}

/// Writes the entries, trims by length and (once the oldest entry is due:
/// the meta's `tc`) by age, updates the meta and publishes the last seq.
/// Returns {1, readers' position, token}.
macro_rules! append_write {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 9, #ARGV, 2 do
  if ARGV[6] == '1' and i + 1 == #ARGV then
    redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 'd', ARGV[i + 1], 't', now, 'e', '1')
  else
    redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 'd', ARGV[i + 1], 't', now)
  end
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2])
local fields = {'seq', string.format('%d', last)}
if ARGV[3] ~= '' and now >= tonumber(m[2] or '0') then
  local age = tonumber(ARGV[3])
  local cutoff = now - age
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[5])
  local keep = nil
  for _, e in ipairs(old) do
    local f = e[2]
    local et = nil
    for j = 1, #f, 2 do if f[j] == 't' then et = tonumber(f[j + 1]) end end
    if et and et >= cutoff then keep = e[1] break end
  end
  if keep then
    redis.call('XTRIM', KEYS[1], 'MINID', keep)
  elseif #old > 0 then
    local id = old[#old][1]
    local s = tonumber(string.match(id, '^(%d+)'))
    redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', s + 1) .. '-0')
  end
  local due = now + age
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first > 0 then
    local f = first[1][2]
    for j = 1, #f, 2 do if f[j] == 't' then due = tonumber(f[j + 1]) + age end end
  end
  fields[#fields + 1] = 'tc'
  fields[#fields + 1] = string.format('%d', due)
end
if ARGV[4] ~= '' then
  fields[#fields + 1] = 'up'
  fields[#fields + 1] = ARGV[4]
end
if ARGV[6] == '1' then
  fields[#fields + 1] = 'end'
  fields[#fields + 1] = '1'
end
redis.call('HSET', KEYS[3], unpack(fields))
if #ARGV >= 9 then redis.call('PUBLISH', ARGV[7], last) end
return {1, tonumber(m[3] or '0'), tonumber(token)}
"
    };
}

/// Appends a batch under fencing (the fence is checked first, so a fenced
/// owner learns it even when its seqs are behind the log).
const APPEND_LUA: &str = concat!(append_fenced!(), append_seqs!(), append_write!());

/// Takes the lease and appends the stream's first batch, in one round
/// trip; nothing is taken when the seqs are behind the log.
const ACQUIRE_APPEND_LUA: &str = concat!(append_seqs!(), append_acquire!(), append_write!());

/// A batch for the append scripts.
struct Batch<'a> {
    entries: &'a [(u64, Bytes)],
    upstream_id: Option<&'a str>,
    end: bool,
    retain: Retention,
}

/// What an append script answered.
enum Appended {
    Ok {
        read: u64,
        token: u64,
    },
    /// Another instance holds the lease (acquire-append).
    Held,
    Fenced,
}

#[derive(Debug, Clone, Copy)]
enum Lua {
    Acquire = 0,
    Renew = 1,
    Release = 2,
    Append = 3,
    Report = 4,
    AcquireAppend = 5,
}

const SOURCES: [&str; 6] = [
    ACQUIRE_LUA,
    RENEW_LUA,
    RELEASE_LUA,
    APPEND_LUA,
    REPORT_LUA,
    ACQUIRE_APPEND_LUA,
];

struct Shared {
    conn: ConnectionManager,
    /// For `XREAD BLOCK`: no reply timeout of its own.
    blocking: ConnectionManager,
    addr: String,
    shas: [String; 6],
    config: ReplayLogConfig,
    round_trips: AtomicU64,
    appends: AtomicU64,
}

/// The connections and scripts every stream's [`ReplayLog`] shares.
#[derive(Clone)]
pub struct ReplayLogs {
    shared: Arc<Shared>,
}

impl fmt::Debug for ReplayLogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayLogs")
            .field("addr", &self.shared.addr)
            .field("namespace", &self.shared.config.namespace)
            .field("round_trips", &self.round_trips())
            .finish_non_exhaustive()
    }
}

impl ReplayLogs {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`) and loads
    /// the scripts.
    pub async fn connect(url: &str, config: ReplayLogConfig) -> Result<ReplayLogs, ReplayLogError> {
        const OP: &str = "connect";
        if config.namespace.is_empty() {
            return Err(invalid(OP, "the namespace is empty"));
        }
        let client =
            redis::Client::open(url).map_err(|e| invalid(OP, format!("invalid redis url: {e}")))?;
        let addr = client.get_connection_info().addr().to_string();
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let redis_err = |source| ReplayLogError::Redis {
            op: OP,
            addr: addr.clone(),
            source,
        };
        let setup = async {
            let mut conn = ConnectionManager::new_with_config(
                client.clone(),
                base.clone().set_response_timeout(Some(config.call_timeout)),
            )
            .await
            .map_err(redis_err)?;
            let blocking =
                ConnectionManager::new_with_config(client, base.set_response_timeout(None))
                    .await
                    .map_err(redis_err)?;
            let mut load = redis::pipe();
            for src in SOURCES {
                load.cmd("SCRIPT").arg("LOAD").arg(src);
            }
            let shas: Vec<String> = load.query_async(&mut conn).await.map_err(redis_err)?;
            let shas: [String; 6] = shas.try_into().map_err(|_| ReplayLogError::Corrupt {
                op: OP,
                message: "SCRIPT LOAD answered with the wrong count".to_owned(),
            })?;
            Ok::<_, ReplayLogError>((conn, blocking, shas))
        };
        let (conn, blocking, shas) = match tokio::time::timeout(config.call_timeout, setup).await {
            Ok(r) => r.inspect_err(record_error)?,
            Err(_) => {
                let e = ReplayLogError::Timeout {
                    op: OP,
                    addr: addr.clone(),
                    limit: config.call_timeout,
                };
                record_error(&e);
                return Err(e);
            }
        };
        Ok(ReplayLogs {
            shared: Arc::new(Shared {
                conn,
                blocking,
                addr,
                shas,
                config,
                round_trips: AtomicU64::new(0),
                appends: AtomicU64::new(0),
            }),
        })
    }

    /// The log of one stream of one session.
    pub fn log(&self, session: &SessionId, stream: StreamId) -> ReplayLog {
        let base = format!(
            "{}:rl:{}:{}:",
            self.shared.config.namespace,
            session.as_str(),
            stream.0
        );
        ReplayLog {
            shared: Arc::clone(&self.shared),
            log_key: format!("{base}log"),
            lease_key: format!("{base}lease"),
            fence_key: format!("{base}fence"),
            meta_key: format!("{base}meta"),
            channel: format!("{base}ch"),
        }
    }

    /// Round trips to Redis made so far by every log of this client.
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// Batches appended so far by every log of this client.
    pub fn appends(&self) -> u64 {
        self.shared.appends.load(Ordering::Relaxed)
    }
}

/// One (session, stream)'s log. Cheap to create; see the module docs.
#[derive(Clone)]
pub struct ReplayLog {
    shared: Arc<Shared>,
    log_key: String,
    lease_key: String,
    fence_key: String,
    meta_key: String,
    channel: String,
}

impl fmt::Debug for ReplayLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayLog")
            .field("log_key", &self.log_key)
            .finish_non_exhaustive()
    }
}

type Entry = (String, Vec<Vec<u8>>);

impl ReplayLog {
    /// The Redis Stream key of this log.
    pub fn log_key(&self) -> &str {
        &self.log_key
    }

    /// Round trips made by every log of the same [`ReplayLogs`].
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    /// Takes the lease for `ttl` if nobody holds it; the lease carries a
    /// fresh fencing token. `None` when another owner holds it.
    pub async fn acquire(
        &self,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, ReplayLogError> {
        const OP: &str = "acquire";
        if owner.is_empty() || owner.contains('|') {
            return Err(invalid(OP, "the owner name is empty or contains '|'"));
        }
        let ttl = ttl_ms(OP, ttl)?;
        let token: u64 = self
            .eval(OP, Lua::Acquire, |cmd| {
                cmd.arg(2)
                    .arg(&self.lease_key)
                    .arg(&self.fence_key)
                    .arg(owner)
                    .arg(ttl);
            })
            .await?;
        Ok((token > 0).then(|| Lease {
            owner: owner.to_owned(),
            token,
        }))
    }

    /// Extends `lease` to `ttl` from now; `false` when it is no longer held
    /// (taken over, or released).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, ReplayLogError> {
        Ok(self.renew_info(lease, ttl).await?.held)
    }

    /// [`ReplayLog::renew`], with what readers on other instances reported.
    /// An expired lease nobody acquired since is taken again.
    pub async fn renew_info(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Renewed, ReplayLogError> {
        const OP: &str = "renew";
        let ttl = ttl_ms(OP, ttl)?;
        let value = lease.value();
        let (held, read, age): (i64, u64, i64) = self
            .eval(OP, Lua::Renew, |cmd| {
                cmd.arg(3)
                    .arg(&self.lease_key)
                    .arg(&self.fence_key)
                    .arg(&self.meta_key)
                    .arg(&value)
                    .arg(ttl)
                    .arg(lease.token);
            })
            .await?;
        Ok(Renewed {
            held: held == 1,
            read,
            reported_ago: (age >= 0).then(|| Duration::from_millis(age as u64)),
        })
    }

    /// Records that a reader sent the client every event up to `seq` (the
    /// owner reads it back with [`ReplayLog::renew_info`]).
    pub async fn report_read(&self, seq: u64) -> Result<(), ReplayLogError> {
        let _: i64 = self
            .eval("report_read", Lua::Report, |cmd| {
                cmd.arg(1).arg(&self.meta_key).arg(seq);
            })
            .await?;
        Ok(())
    }

    /// The Pub/Sub channel each append publishes its last seq on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// In one round trip: entries from `from_seq` on (up to `max`), and
    /// the log's state (last seq, resume id, ended, lease holder).
    pub async fn probe(&self, from_seq: u64, max: usize) -> Result<Probe, ReplayLogError> {
        const OP: &str = "probe";
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(&self.log_key)
            .arg(format!("{from_seq}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(max.max(1))
            .cmd("HMGET")
            .arg(&self.meta_key)
            .arg("seq")
            .arg("up")
            .arg("end")
            .cmd("GET")
            .arg(&self.lease_key);
        let shared = &self.shared;
        type Reply = (
            Vec<Entry>,
            (Option<u64>, Option<String>, Option<String>),
            Option<String>,
        );
        let (entries, (last, up, end), lease): Reply = self
            .bounded(OP, shared.config.call_timeout, async {
                shared.round_trips.fetch_add(1, Ordering::Relaxed);
                let mut conn = shared.conn.clone();
                pipe.query_async(&mut conn)
                    .await
                    .map_err(|e| redis_err(shared, OP, e))
            })
            .await?;
        Ok(Probe {
            entries: decode_log_entries(OP, entries)?,
            last_seq: last,
            upstream_id: up.filter(|u| !u.is_empty()),
            ended: end.is_some(),
            owner: lease.map(|v| v.rsplit_once('|').map_or(v.clone(), |(o, _)| o.to_owned())),
        })
    }

    /// Gives the lease up; `false` when it was no longer held.
    pub async fn release(&self, lease: &Lease) -> Result<bool, ReplayLogError> {
        const OP: &str = "release";
        let value = lease.value();
        let done: i64 = self
            .eval(OP, Lua::Release, |cmd| {
                cmd.arg(2)
                    .arg(&self.lease_key)
                    .arg(&self.fence_key)
                    .arg(&value);
            })
            .await?;
        Ok(done == 1)
    }

    /// Appends a batch in one round trip, then trims to `retain` and
    /// records `upstream_id` (when given) as the resume id. Seqs must be
    /// in `1..=MAX_SEQ`, strictly increasing and above every seq logged
    /// so far. [`ReplayLogError::Fenced`] when `lease` was taken over;
    /// then nothing is written.
    pub async fn append(
        &self,
        lease: &Lease,
        entries: &[(u64, Bytes)],
        upstream_id: Option<&str>,
        retain: Retention,
    ) -> Result<(), ReplayLogError> {
        self.append_batch(lease, entries, upstream_id, false, retain)
            .await
            .map(|_| ())
    }

    /// [`ReplayLog::append`]; with `end` the last entry ends the stream
    /// (readers stop after it). Publishes the last seq on
    /// [`ReplayLog::channel`]. Returns the readers' reported position.
    pub async fn append_batch(
        &self,
        lease: &Lease,
        entries: &[(u64, Bytes)],
        upstream_id: Option<&str>,
        end: bool,
        retain: Retention,
    ) -> Result<u64, ReplayLogError> {
        let batch = Batch {
            entries,
            upstream_id,
            end,
            retain,
        };
        match self
            .append_script(Lua::Append, &batch, &lease.token.to_string(), "")
            .await?
        {
            Appended::Ok { read, .. } => Ok(read),
            _ => {
                let e = ReplayLogError::Fenced { token: lease.token };
                tracing::warn!(key = %self.log_key, error = %e, "replay log append fenced");
                metrics::counter!("shadowcat_replay_log_fenced_total").increment(1);
                Err(e)
            }
        }
    }

    /// Takes the lease for `owner` (for `ttl`) and appends the stream's
    /// first batch, in one round trip. `None` (nothing written) when
    /// another instance holds the lease. Otherwise as
    /// [`ReplayLog::append_batch`], with the lease taken.
    pub async fn acquire_append(
        &self,
        owner: &str,
        ttl: Duration,
        entries: &[(u64, Bytes)],
        upstream_id: Option<&str>,
        end: bool,
        retain: Retention,
    ) -> Result<Option<(Lease, u64)>, ReplayLogError> {
        const OP: &str = "append";
        if owner.is_empty() || owner.contains('|') {
            return Err(invalid(OP, "the owner name is empty or contains '|'"));
        }
        let ttl = ttl_ms(OP, ttl)?;
        let batch = Batch {
            entries,
            upstream_id,
            end,
            retain,
        };
        match self
            .append_script(Lua::AcquireAppend, &batch, owner, &ttl.to_string())
            .await?
        {
            Appended::Ok { read, token } => Ok(Some((
                Lease {
                    owner: owner.to_owned(),
                    token,
                },
                read,
            ))),
            _ => Ok(None),
        }
    }

    async fn append_script(
        &self,
        lua: Lua,
        batch: &Batch<'_>,
        first: &str,
        ttl: &str,
    ) -> Result<Appended, ReplayLogError> {
        const OP: &str = "append";
        if batch.retain.max_len == 0 {
            return Err(invalid(OP, "retention max_len is 0"));
        }
        let mut prev = 0;
        for (seq, _) in batch.entries {
            if *seq <= prev || *seq > MAX_SEQ {
                return Err(invalid(
                    OP,
                    format!("seq {seq} is not in {}..={MAX_SEQ}", prev + 1),
                ));
            }
            prev = *seq;
        }
        let max_age = batch
            .retain
            .max_age
            .map(|a| (a.as_millis() as u64).max(1).to_string())
            .unwrap_or_default();
        let answer: Vec<i64> = self
            .eval(OP, lua, |cmd| {
                cmd.arg(4)
                    .arg(&self.log_key)
                    .arg(&self.fence_key)
                    .arg(&self.meta_key)
                    .arg(&self.lease_key)
                    .arg(first)
                    .arg(batch.retain.max_len)
                    .arg(&max_age)
                    .arg(batch.upstream_id.unwrap_or(""))
                    .arg(AGE_SCAN)
                    .arg(if batch.end { "1" } else { "0" })
                    .arg(&self.channel)
                    .arg(ttl);
                for (seq, data) in batch.entries {
                    cmd.arg(*seq).arg(data.as_ref());
                }
            })
            .await?;
        match answer.first().copied() {
            Some(1) => {
                self.shared.appends.fetch_add(1, Ordering::Relaxed);
                Ok(Appended::Ok {
                    read: answer.get(1).copied().unwrap_or(0).max(0) as u64,
                    token: answer.get(2).copied().unwrap_or(0).max(0) as u64,
                })
            }
            Some(-1) => {
                let e = invalid(
                    OP,
                    format!(
                        "seqs {}..={prev} are not all above the last logged seq",
                        batch.entries.first().map_or(0, |e| e.0)
                    ),
                );
                record_error(&e);
                Err(e)
            }
            Some(-2) => Ok(Appended::Held),
            _ => Ok(Appended::Fenced),
        }
    }

    /// Up to `max` entries with seq above `after_seq` (all when `None`),
    /// in seq order.
    pub async fn read_after(
        &self,
        after_seq: Option<u64>,
        max: usize,
    ) -> Result<Vec<(u64, Bytes)>, ReplayLogError> {
        const OP: &str = "read_after";
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.log_key)
            .arg(start_id(after_seq))
            .arg("+")
            .arg("COUNT")
            .arg(max);
        let entries: Vec<Entry> = self.query(OP, &cmd).await?;
        decode_entries(OP, entries)
    }

    /// The upstream resume id recorded by the last append that had one.
    pub async fn last_upstream_id(&self) -> Result<Option<String>, ReplayLogError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&self.meta_key).arg("up");
        self.query("last_upstream_id", &cmd).await
    }

    /// Entries with seq above `after_seq`, waiting up to `block` for one
    /// to arrive; empty when none did.
    pub async fn tail(
        &self,
        after_seq: Option<u64>,
        block: Duration,
        max: usize,
    ) -> Result<Vec<(u64, Bytes)>, ReplayLogError> {
        const OP: &str = "tail";
        let block_ms = (block.as_millis() as u64).max(1);
        let after = match after_seq {
            Some(s) => format!("{s}-0"),
            None => "0-0".to_owned(),
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(max.max(1))
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.log_key)
            .arg(after);
        let limit = block + self.shared.config.call_timeout;
        let shared = &self.shared;
        let reply: Option<Vec<(String, Vec<Entry>)>> = self
            .bounded(OP, limit, async {
                shared.round_trips.fetch_add(1, Ordering::Relaxed);
                let mut conn = shared.blocking.clone();
                cmd.query_async(&mut conn)
                    .await
                    .map_err(|e| redis_err(shared, OP, e))
            })
            .await?;
        match reply.and_then(|streams| streams.into_iter().next()) {
            Some((_, entries)) => decode_entries(OP, entries),
            None => Ok(Vec::new()),
        }
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, ReplayLogError>>,
    ) -> Result<T, ReplayLogError> {
        let result = match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(ReplayLogError::Timeout {
                op,
                addr: self.shared.addr.clone(),
                limit,
            }),
        };
        if let Err(e) = &result {
            record_error(e);
        }
        result
    }

    async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
    ) -> Result<T, ReplayLogError> {
        let shared = &self.shared;
        self.bounded(op, shared.config.call_timeout, async {
            shared.round_trips.fetch_add(1, Ordering::Relaxed);
            let mut conn = shared.conn.clone();
            cmd.query_async(&mut conn)
                .await
                .map_err(|e| redis_err(shared, op, e))
        })
        .await
    }

    /// Runs a script by hash; after a server restart emptied the script
    /// cache, once more by source. `fill` appends numkeys, keys and args.
    async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        lua: Lua,
        fill: impl Fn(&mut Cmd),
    ) -> Result<T, ReplayLogError> {
        let shared = &self.shared;
        self.bounded(op, shared.config.call_timeout, async {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&shared.shas[lua as usize]);
            fill(&mut cmd);
            shared.round_trips.fetch_add(1, Ordering::Relaxed);
            let mut conn = shared.conn.clone();
            match cmd.query_async(&mut conn).await {
                Ok(v) => Ok(v),
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(SOURCES[lua as usize]);
                    fill(&mut cmd);
                    shared.round_trips.fetch_add(1, Ordering::Relaxed);
                    cmd.query_async(&mut conn)
                        .await
                        .map_err(|e| redis_err(shared, op, e))
                }
                Err(e) => Err(redis_err(shared, op, e)),
            }
        })
        .await
    }
}

fn start_id(after_seq: Option<u64>) -> String {
    match after_seq {
        Some(s) => format!("({s}-0"),
        None => "-".to_owned(),
    }
}

fn decode_entries(
    op: &'static str,
    entries: Vec<Entry>,
) -> Result<Vec<(u64, Bytes)>, ReplayLogError> {
    Ok(decode_log_entries(op, entries)?
        .into_iter()
        .map(|e| (e.seq, e.data))
        .collect())
}

fn decode_log_entries(
    op: &'static str,
    entries: Vec<Entry>,
) -> Result<Vec<LogEntry>, ReplayLogError> {
    let mut out = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let seq = id
            .split_once('-')
            .and_then(|(s, _)| s.parse::<u64>().ok())
            .ok_or_else(|| corrupt(op, format!("entry id {id:?} is not {{seq}}-0")))?;
        let mut data = None;
        let mut end = false;
        let mut it = fields.into_iter();
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            if f == b"d" {
                data = Some(Bytes::from(v));
            } else if f == b"e" {
                end = true;
            }
        }
        let data = data.ok_or_else(|| corrupt(op, format!("entry {id} has no field d")))?;
        out.push(LogEntry { seq, data, end });
    }
    Ok(out)
}

fn ttl_ms(op: &'static str, ttl: Duration) -> Result<u64, ReplayLogError> {
    match ttl.as_millis() as u64 {
        0 => Err(invalid(op, "the lease ttl is under 1 ms")),
        ms => Ok(ms),
    }
}

fn invalid(op: &'static str, message: impl Into<String>) -> ReplayLogError {
    ReplayLogError::Invalid {
        op,
        message: message.into(),
    }
}

fn corrupt(op: &'static str, message: impl Into<String>) -> ReplayLogError {
    ReplayLogError::Corrupt {
        op,
        message: message.into(),
    }
}

fn redis_err(shared: &Shared, op: &'static str, source: RedisError) -> ReplayLogError {
    ReplayLogError::Redis {
        op,
        addr: shared.addr.clone(),
        source,
    }
}

fn record_error(e: &ReplayLogError) {
    let (op, kind) = match e {
        // An answer, logged by `append`.
        ReplayLogError::Fenced { .. } => return,
        ReplayLogError::Redis { op, .. } => (*op, "redis"),
        ReplayLogError::Timeout { op, .. } => (*op, "timeout"),
        ReplayLogError::Invalid { op, .. } => (*op, "invalid"),
        ReplayLogError::Corrupt { op, .. } => (*op, "corrupt"),
    };
    tracing::warn!(op, kind, error = %e, "replay log call failed");
    metrics::counter!("shadowcat_replay_log_errors_total", "op" => op, "kind" => kind).increment(1);
}
