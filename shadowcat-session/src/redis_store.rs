//! `RedisStore`: sessions in Redis, shared by several proxy instances.
//!
//! # Keys
//!
//! Everything lives under the namespace `ns` (default `shadowcat`):
//!
//! - `{ns}:s:{id}`: one hash per session. Fields `up` (upstream), `pv`
//!   (protocol version), `ca` / `la` (created / last activity, decimal
//!   millis), `usid` (upstream session id, absent when none) and one field
//!   `p:{stream}` per stream, valued `{client_seq}` or
//!   `{client_seq}|{upstream_event_id}`.
//! - `{ns}:index`: a sorted set of session ids, all with score 0, so
//!   `ZRANGEBYLEX` pages them in ascending byte order (the trait's order).
//!
//! Every write refreshes the session key's TTL to
//! [`RedisStoreConfig::idle_ttl`], so forgotten sessions vanish by
//! themselves even with no proxy sweeping. The TTL is set well past the
//! idle timeout so that idle sessions normally leave through
//! [`SessionStore::expire_idle`], which reports them (to be ended
//! upstream); one dropped by TTL is not reported. The index entry of a
//! session that expired this way is pruned by [`SessionStore::count`],
//! [`SessionStore::expire_idle`], a create at the session bound (at most
//! once per [`FULL_PRUNE_EVERY`]) and (for the ids it meets)
//! [`SessionStore::list`].
//!
//! # The session bound
//!
//! [`SessionStore::create_bounded`] checks the index's size (`ZCARD`) and
//! creates in one script, so instances sharing the namespace never
//! overshoot the bound together.
//!
//! # Round trips
//!
//! Writes that must not resurrect a session run as Lua scripts (`EVALSHA`,
//! falling back to `EVAL` once after a server restart flushed the script
//! cache). [`SessionStore::apply_batch`] is one script call whatever its
//! size, with one `HSET` per session. Scripts run atomically and validate
//! before they write, so a batch lands whole or not at all.
//!
//! Scripts touch keys they derive from the namespace, so the store needs a
//! single Redis server (or primary), not Redis Cluster.
//!
//! # Failing fast
//!
//! The connection is a [`ConnectionManager`]: when Redis goes away, calls
//! fail with [`StoreError::Unavailable`] and the manager reconnects on the
//! next call, so the same store works again once Redis is back (the first
//! call after the return may still fail). No call waits longer than
//! [`RedisStoreConfig::call_timeout`]. A write that timed out may still have
//! landed; retrying it is harmless (points and touches are idempotent; a
//! retried `create` reports `AlreadyExists`).
//!
//! # Errors
//!
//! - connection refused / reset / timeouts, `LOADING`, `BUSY`, `TRYAGAIN`,
//!   `MASTERDOWN`, `READONLY` (a failover in progress) → `Unavailable`;
//! - `WRONGTYPE`, undecodable values → `Corrupt`;
//! - `OOM`, `MISCONF`, auth and permission errors, cluster redirects, other
//!   server errors → `Refused`: an operator has to act (free memory, fix
//!   the disk, fix the configuration).
//!
//! Failures are logged (`tracing`, target this module) and counted in
//! `shadowcat_store_errors_total{store="redis",op,kind}`; every round trip
//! is counted in `shadowcat_store_round_trips_total{store="redis"}`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, ServerErrorKind};
use smallvec::SmallVec;

use crate::model::{
    ResumeKey, ResumptionPoint, Session, SessionId, StreamId, StreamPoint, UnixMillis, Update,
};
use crate::store::{ExpiredSession, Page, SessionStore, StoreError};

const STORE: &str = "redis";

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// Prefix of every key the store writes (`{namespace}:…`). Default
    /// `shadowcat`. Two proxies share sessions when they share it.
    pub namespace: String,
    /// TTL of a session key, refreshed by every write and touch. A session
    /// nobody writes for this long disappears by itself, unreported: no
    /// [`SessionStore::expire_idle`] returns it, so it is never ended
    /// upstream. Keep it well past the idle timeout plus the sweep
    /// interval ([`crate::SweeperConfig::store_ttl`], which `shadowcat
    /// reverse` uses). Default 62 minutes: that of the default sweeper
    /// (30-minute timeout, 60-second interval).
    pub idle_ttl: Duration,
    /// Limit of one TCP connect and handshake attempt. Default 1 s.
    pub connect_timeout: Duration,
    /// Limit of the wait for one reply. Default 1 s.
    pub response_timeout: Duration,
    /// Hard limit of one store call, reconnect attempts and every round
    /// trip included; past it the call fails with
    /// [`StoreError::Unavailable`]. Default 3 s.
    pub call_timeout: Duration,
    /// Ids looked at per script call when `count` and `expire_idle` walk
    /// the index; bounds how long one call holds the Redis server.
    /// Default 256.
    pub sweep_chunk: usize,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        RedisStoreConfig {
            namespace: "shadowcat".to_owned(),
            idle_ttl: crate::SweeperConfig::default().store_ttl(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(3),
            sweep_chunk: 256,
        }
    }
}

/// Reconnect attempts the manager makes per failed connection, and the
/// first pause between them. Longer backoff is the caller's job (the
/// batching writer retries with backoff), so calls fail fast.
const RECONNECT_RETRIES: usize = 1;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// At the session bound, a create prunes the index of sessions Redis
/// dropped by TTL at most this often (a walk of the whole index).
pub const FULL_PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Creates (`ARGV[3] == 'create'`) or replaces a session hash and indexes it.
/// KEYS: session hash, index. ARGV: ttl ms, id, mode, most sessions ('' for
/// no bound; create only), field, value, ... Returns 1 when written, 0 when
/// the session exists (create) or does not (replace), -1 when the index
/// holds the most sessions already (create).
/// HSET is the first write, so an OOM refusal happens before anything changes.
const WRITE_LUA: &str = r"
local key, index = KEYS[1], KEYS[2]
local t = redis.call('TYPE', key).ok
if t ~= 'none' and t ~= 'hash' then
  return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. t)
end
if ARGV[3] == 'create' then
  if t == 'hash' then return 0 end
  if ARGV[4] ~= '' and redis.call('ZCARD', index) >= tonumber(ARGV[4]) then
    return -1
  end
elseif t == 'none' then
  return 0
end
redis.call('HSET', key, unpack(ARGV, 5))
if ARGV[3] == 'replace' then
  local keep = {}
  for i = 5, #ARGV, 2 do keep[ARGV[i]] = true end
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if not keep[f] then redis.call('HDEL', key, f) end
  end
end
redis.call('PEXPIRE', key, ARGV[1])
redis.call('ZADD', index, 0, ARGV[2])
return 1
";

/// Applies grouped updates; sessions that do not exist are skipped.
/// KEYS: one session hash per group. ARGV[1]: ttl ms; then per group:
/// touch millis ('' for none), n, n field/value pairs, m, m fields to delete.
/// Returns how many groups found their session.
const APPLY_LUA: &str = r"
local function newer(a, b) return #a > #b or (#a == #b and a > b) end
for i = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= 'hash' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' is a ' .. t)
  end
end
local a, applied = 2, 0
for i = 1, #KEYS do
  local key = KEYS[i]
  local touch = ARGV[a]
  local sets, dels = {}, {}
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for j = 1, 2 * n do sets[j] = ARGV[a + j - 1] end
  a = a + 2 * n
  local m = tonumber(ARGV[a])
  a = a + 1
  for j = 1, m do dels[j] = ARGV[a + j - 1] end
  a = a + m
  if redis.call('EXISTS', key) == 1 then
    if touch ~= '' then
      local la = redis.call('HGET', key, 'la')
      if not la or newer(touch, la) then
        sets[#sets + 1] = 'la'
        sets[#sets + 1] = touch
      end
    end
    if #sets > 0 then redis.call('HSET', key, unpack(sets)) end
    if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
    redis.call('PEXPIRE', key, ARGV[1])
    applied = applied + 1
  end
end
return applied
";

/// Walks one chunk of the index: drops entries whose hash is gone and, with
/// a cutoff, deletes sessions last active before it.
/// KEYS: index. ARGV: start ('-' or '(' .. id), chunk, key prefix, cutoff
/// millis ('' for prune only). Returns {ids seen, last id, expired,
/// pruned}; each expired session is {id, up, pv} or {id, up, pv, usid}.
/// The script deletes what it reports, atomically: of several instances
/// sweeping one namespace, exactly one reports a given session.
const SWEEP_LUA: &str = r"
local function older(a, b) return #a < #b or (#a == #b and a < b) end
local index, prefix, cutoff = KEYS[1], ARGV[3], ARGV[4]
local ids = redis.call('ZRANGEBYLEX', index, ARGV[1], '+', 'LIMIT', 0, ARGV[2])
local expired, pruned = {}, 0
for _, id in ipairs(ids) do
  local key = prefix .. id
  local t = redis.call('TYPE', key).ok
  if t == 'none' then
    redis.call('ZREM', index, id)
    pruned = pruned + 1
  elseif t == 'hash' and cutoff ~= '' then
    local la = redis.call('HGET', key, 'la')
    if la and older(la, cutoff) then
      local f = redis.call('HMGET', key, 'up', 'pv', 'usid')
      local e = {id, f[1] or '', f[2] or ''}
      if f[3] then e[4] = f[3] end
      expired[#expired + 1] = e
      redis.call('DEL', key)
      redis.call('ZREM', index, id)
    end
  end
end
return {#ids, ids[#ids] or '', expired, pruned}
";

/// Drops the index entries of the given ids whose hash is gone.
/// KEYS: index. ARGV: key prefix, id, id, ... Returns how many went.
const PRUNE_LUA: &str = r"
local pruned = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    pruned = pruned + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return pruned
";

#[derive(Debug, Clone, Copy)]
enum Lua {
    Write = 0,
    Apply = 1,
    Sweep = 2,
    Prune = 3,
}

const SOURCES: [&str; 4] = [WRITE_LUA, APPLY_LUA, SWEEP_LUA, PRUNE_LUA];

/// A [`SessionStore`] in Redis. See the module docs for the key layout,
/// error mapping and timeouts. Cheap to share behind an `Arc`.
pub struct RedisStore {
    conn: ConnectionManager,
    config: RedisStoreConfig,
    /// `host:port` only: never the password.
    addr: String,
    index_key: String,
    /// `{ns}:s:`
    key_prefix: String,
    /// SHA1 of each script, as the server reported at connect.
    shas: [String; 4],
    idle_ttl_ms: u64,
    round_trips: AtomicU64,
    /// When a create at the bound last pruned the index (millis).
    last_full_prune: AtomicU64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.addr)
            .field("namespace", &self.config.namespace)
            .field("round_trips", &self.round_trips())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]`) and loads
    /// the store's scripts. Fails with [`StoreError::Unavailable`] if Redis
    /// does not answer within `config.call_timeout`, and with
    /// [`StoreError::Refused`] for a bad URL or an empty namespace.
    pub async fn connect(url: &str, config: RedisStoreConfig) -> Result<RedisStore, StoreError> {
        if config.namespace.is_empty() {
            return Err(refused("the namespace is empty"));
        }
        if config.sweep_chunk == 0 {
            return Err(refused("sweep_chunk is 0"));
        }
        let client = redis::Client::open(url).map_err(|e| {
            tracing::error!(store = STORE, error = %e, "invalid redis url");
            refused(format!("invalid redis url: {e}"))
        })?;
        let addr = client.get_connection_info().addr().to_string();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let call_timeout = config.call_timeout;
        let setup = async {
            let mut conn = ConnectionManager::new_with_config(client, manager_config)
                .await
                .map_err(|e| map_redis_error(&e))?;
            let mut load = redis::pipe();
            for src in SOURCES {
                load.cmd("SCRIPT").arg("LOAD").arg(src);
            }
            let shas: Vec<String> = load
                .query_async(&mut conn)
                .await
                .map_err(|e| map_redis_error(&e))?;
            let shas: [String; 4] = shas
                .try_into()
                .map_err(|_| corrupt("SCRIPT LOAD answered with the wrong count"))?;
            Ok::<_, StoreError>((conn, shas))
        };
        let (conn, shas) = match tokio::time::timeout(call_timeout, setup).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                record_error("connect", &addr, &e);
                return Err(e);
            }
            Err(_) => {
                let e = timed_out(call_timeout);
                record_error("connect", &addr, &e);
                return Err(e);
            }
        };
        let ns = &config.namespace;
        Ok(RedisStore {
            conn,
            addr,
            index_key: format!("{ns}:index"),
            key_prefix: format!("{ns}:s:"),
            shas,
            idle_ttl_ms: (config.idle_ttl.as_millis() as u64).max(1),
            round_trips: AtomicU64::new(0),
            last_full_prune: AtomicU64::new(0),
            config,
        })
    }

    /// Round trips to Redis (commands, pipelines, script calls) made so
    /// far. `apply_batch` makes one per batch, two after a Redis restart.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The key prefix in use.
    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// The hash that holds session `id`.
    pub fn session_key(&self, id: &SessionId) -> String {
        format!("{}{}", self.key_prefix, id)
    }

    /// The sorted set that indexes session ids.
    pub fn index_key(&self) -> &str {
        &self.index_key
    }

    /// Runs one store call under `call_timeout`; logs and counts failures.
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.config.call_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(self.config.call_timeout)),
        };
        if let Err(e) = &result {
            record_error(op, &self.addr, e);
        }
        result
    }

    fn count_round_trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("shadowcat_store_round_trips_total", "store" => STORE).increment(1);
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.count_round_trip();
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| map_redis_error(&e))
    }

    async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, StoreError> {
        self.count_round_trip();
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn)
            .await
            .map_err(|e| map_redis_error(&e))
    }

    /// Runs a script by hash; if the server lost its script cache (it
    /// restarted), once more by source, which caches it again.
    /// `fill` appends numkeys, keys and args.
    async fn eval<T: FromRedisValue>(
        &self,
        lua: Lua,
        fill: impl Fn(&mut Cmd),
    ) -> Result<T, StoreError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.shas[lua as usize]);
        fill(&mut cmd);
        self.count_round_trip();
        let mut conn = self.conn.clone();
        match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                tracing::debug!(store = STORE, script = ?lua, "script cache empty; sending source");
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(SOURCES[lua as usize]);
                fill(&mut cmd);
                self.query(&cmd).await
            }
            Err(e) => Err(map_redis_error(&e)),
        }
    }

    /// The write script's answer: 1 written, 0 exists (create) or missing
    /// (replace), -1 at `max` (create).
    async fn write(
        &self,
        session: &Session,
        mode: &'static str,
        max: Option<u64>,
    ) -> Result<i64, StoreError> {
        let key = self.session_key(&session.id);
        let fields = encode_session(session);
        let max = max.map(|m| m.to_string()).unwrap_or_default();
        self.eval(Lua::Write, |cmd| {
            cmd.arg(2).arg(&key).arg(&self.index_key);
            cmd.arg(self.idle_ttl_ms)
                .arg(session.id.as_str())
                .arg(mode)
                .arg(&max);
            for (f, v) in &fields {
                cmd.arg(&**f).arg(v.as_str());
            }
        })
        .await
    }

    /// At the bound, the index may still name sessions whose keys Redis
    /// dropped by TTL: prune it (at most once per [`FULL_PRUNE_EVERY`])
    /// and say whether it was pruned.
    async fn prune_when_full(&self) -> Result<bool, StoreError> {
        let now = crate::model::now_millis();
        let last = self.last_full_prune.load(Ordering::Relaxed);
        let every = FULL_PRUNE_EVERY.as_millis() as u64;
        if now.saturating_sub(last) < every
            || self
                .last_full_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(false);
        }
        let pruned = self.sweep(None, &mut Vec::new()).await?;
        if pruned > 0 {
            tracing::debug!(
                store = STORE,
                pruned,
                "pruned index entries of expired sessions at the session bound"
            );
        }
        Ok(pruned > 0)
    }

    /// Walks the whole index in chunks, pushing what it expired onto
    /// `expired` as it goes (so a walk cut short keeps what it removed);
    /// returns how many index entries it pruned.
    async fn sweep(
        &self,
        cutoff: Option<UnixMillis>,
        expired: &mut Vec<ExpiredSession>,
    ) -> Result<u64, StoreError> {
        let cutoff = cutoff.map(|c| c.to_string()).unwrap_or_default();
        let chunk = self.config.sweep_chunk;
        let mut start = String::from("-");
        let mut pruned = 0u64;
        loop {
            let (seen, last, e, p): (usize, String, Vec<Vec<String>>, u64) = self
                .eval(Lua::Sweep, |cmd| {
                    cmd.arg(1).arg(&self.index_key);
                    cmd.arg(&start)
                        .arg(chunk)
                        .arg(&self.key_prefix)
                        .arg(&cutoff);
                })
                .await?;
            for fields in e {
                match expired_of(fields) {
                    Ok(x) => expired.push(x),
                    Err(bad) => {
                        tracing::warn!(store = STORE, error = %bad, "expired a session whose record did not decode; it is not ended upstream");
                        metrics::counter!("shadowcat_store_errors_total", "store" => STORE, "op" => "expire_idle", "kind" => "corrupt")
                            .increment(1);
                    }
                }
            }
            pruned += p;
            if seen < chunk {
                return Ok(pruned);
            }
            start.clear();
            start.push('(');
            start.push_str(&last);
        }
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn kind(&self) -> &'static str {
        STORE
    }

    async fn create_bounded(&self, session: &Session, max_sessions: u64) -> Result<(), StoreError> {
        let max = (max_sessions != u64::MAX).then_some(max_sessions);
        self.bounded("create", async {
            let mut written = self.write(session, "create", max).await?;
            if written < 0 && self.prune_when_full().await? {
                written = self.write(session, "create", max).await?;
            }
            match written {
                1 => Ok(()),
                0 => Err(StoreError::AlreadyExists(session.id.clone())),
                _ => Err(StoreError::Full {
                    store: STORE,
                    limit: max_sessions,
                }),
            }
        })
        .await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.bounded("get", async {
            let key = self.session_key(id);
            let fields: Vec<(String, String)> = self.query(redis::cmd("HGETALL").arg(&key)).await?;
            if fields.is_empty() {
                return Ok(None);
            }
            decode_session(id.clone(), fields, &key).map(Some)
        })
        .await
    }

    async fn update(&self, session: &Session) -> Result<(), StoreError> {
        self.bounded("update", async {
            if self.write(session, "replace", None).await? == 1 {
                Ok(())
            } else {
                Err(StoreError::NotFound(session.id.clone()))
            }
        })
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.bounded("delete", async {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("DEL")
                .arg(self.session_key(id))
                .cmd("ZREM")
                .arg(&self.index_key)
                .arg(id.as_str());
            let (deleted, _unindexed): (u64, u64) = self.query_pipe(&pipe).await?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn list(&self, after: Option<&SessionId>, limit: usize) -> Result<Page, StoreError> {
        self.bounded("list", async {
            if limit == 0 {
                return Ok(Page::default());
            }
            // One extra live session tells whether there is a next page.
            let want = limit.saturating_add(1);
            let mut sessions = Vec::with_capacity(want.min(1024));
            let mut stale: Vec<String> = Vec::new();
            let mut start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
            while sessions.len() < want {
                let ask = want - sessions.len();
                let ids: Vec<String> = self
                    .query(
                        redis::cmd("ZRANGEBYLEX")
                            .arg(&self.index_key)
                            .arg(&start)
                            .arg("+")
                            .arg("LIMIT")
                            .arg(0)
                            .arg(ask),
                    )
                    .await?;
                let Some(last) = ids.last() else { break };
                start = format!("({last}");
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("HGETALL").arg(format!("{}{id}", self.key_prefix));
                }
                let records: Vec<Vec<(String, String)>> = self.query_pipe(&pipe).await?;
                let fetched = ids.len();
                for (id, fields) in ids.into_iter().zip(records) {
                    if fields.is_empty() {
                        stale.push(id);
                        continue;
                    }
                    let key = format!("{}{id}", self.key_prefix);
                    let id = SessionId::parse(&id).map_err(|e| corrupt(format!("{key}: {e}")))?;
                    sessions.push(decode_session(id, fields, &key)?);
                }
                if fetched < ask {
                    break;
                }
            }
            if !stale.is_empty() {
                // The script re-checks each key, so a session created again
                // since the read keeps its entry.
                let pruned: u64 = self
                    .eval(Lua::Prune, |cmd| {
                        cmd.arg(1)
                            .arg(&self.index_key)
                            .arg(&self.key_prefix)
                            .arg(&stale);
                    })
                    .await?;
                tracing::debug!(
                    store = STORE,
                    pruned,
                    "pruned index entries of expired sessions"
                );
            }
            let next = if sessions.len() > limit {
                sessions.truncate(limit);
                sessions.last().map(|s| s.id.clone())
            } else {
                None
            };
            Ok(Page { sessions, next })
        })
        .await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.bounded("count", async {
            let pruned = self.sweep(None, &mut Vec::new()).await?;
            if pruned > 0 {
                tracing::debug!(
                    store = STORE,
                    pruned,
                    "pruned index entries of expired sessions"
                );
            }
            self.query(redis::cmd("ZCARD").arg(&self.index_key)).await
        })
        .await
    }

    async fn apply_batch(&self, updates: &[Update]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.bounded("apply_batch", async {
            let groups = group_updates(updates);
            let keys: Vec<String> = groups.iter().map(|g| self.session_key(g.session)).collect();
            let applied: u64 = self
                .eval(Lua::Apply, |cmd| {
                    cmd.arg(keys.len()).arg(&keys).arg(self.idle_ttl_ms);
                    for g in &groups {
                        g.write_args(cmd);
                    }
                })
                .await?;
            let skipped = groups.len() as u64 - applied;
            if skipped > 0 {
                tracing::debug!(
                    store = STORE,
                    skipped,
                    "batch updates for unknown sessions skipped"
                );
            }
            Ok(())
        })
        .await
    }

    async fn expire_idle(
        &self,
        now: UnixMillis,
        max_idle: Duration,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
        let max_idle_ms = max_idle.as_millis().min(u64::MAX as u128) as u64;
        // Idle means now - last_activity > max_idle, i.e. last_activity
        // < now - max_idle; nothing is idle while now <= max_idle.
        let cutoff = now.checked_sub(max_idle_ms);
        let mut expired = Vec::new();
        let walk = self.bounded("expire_idle", self.sweep(cutoff, &mut expired));
        let pruned = match walk.await {
            Ok(pruned) => pruned,
            // Failed or timed out part way (logged and counted): what was
            // removed so far is still reported, the rest goes next time.
            Err(e) if expired.is_empty() => return Err(e),
            Err(_) => 0,
        };
        tracing::debug!(
            store = STORE,
            expired = expired.len(),
            pruned,
            "expire_idle done"
        );
        Ok(expired)
    }
}

/// The updates of one session in a batch, reduced to their net effect.
struct Group<'a> {
    session: &'a SessionId,
    /// Newest touch in the batch.
    touch: Option<UnixMillis>,
    /// Per stream, the last word: a new point, or `None` for ended.
    streams: SmallVec<[(StreamId, Option<&'a ResumptionPoint>); 2]>,
}

impl Group<'_> {
    fn write_args(&self, cmd: &mut Cmd) {
        match self.touch {
            Some(at) => cmd.arg(at),
            None => cmd.arg(""),
        };
        let sets = self.streams.iter().filter(|(_, p)| p.is_some()).count();
        cmd.arg(sets);
        for (stream, point) in &self.streams {
            if let Some(point) = point {
                cmd.arg(point_field(*stream)).arg(encode_point(point));
            }
        }
        cmd.arg(self.streams.len() - sets);
        for (stream, point) in &self.streams {
            if point.is_none() {
                cmd.arg(point_field(*stream));
            }
        }
    }
}

/// Groups a batch per session, in order: the last update of a stream wins,
/// the newest touch wins.
fn group_updates(updates: &[Update]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut by_id: HashMap<&SessionId, usize> = HashMap::new();
    for u in updates {
        let i = *by_id.entry(u.session()).or_insert_with(|| {
            groups.push(Group {
                session: u.session(),
                touch: None,
                streams: SmallVec::new(),
            });
            groups.len() - 1
        });
        let g = &mut groups[i];
        let (stream, point) = match u {
            Update::Touch { at, .. } => {
                g.touch = Some(g.touch.map_or(*at, |t| t.max(*at)));
                continue;
            }
            Update::Point { stream, point, .. } => (*stream, Some(point)),
            Update::EndStream { stream, .. } => (*stream, None),
        };
        match g.streams.iter_mut().find(|(s, _)| *s == stream) {
            Some(slot) => slot.1 = point,
            None => g.streams.push((stream, point)),
        }
    }
    groups
}

fn point_field(stream: StreamId) -> String {
    format!("p:{}", stream.0)
}

fn encode_point(point: &ResumptionPoint) -> String {
    match &point.upstream_event_id {
        Some(id) => format!("{}|{id}", point.client_seq),
        None => point.client_seq.to_string(),
    }
}

fn decode_point(value: &str) -> Option<ResumptionPoint> {
    let (seq, id) = match value.split_once('|') {
        Some((seq, id)) => (seq, Some(id.to_owned())),
        None => (value, None),
    };
    Some(ResumptionPoint {
        upstream_event_id: id,
        client_seq: seq.parse().ok()?,
    })
}

fn encode_session(s: &Session) -> Vec<(std::borrow::Cow<'static, str>, String)> {
    let mut fields = Vec::with_capacity(5 + s.streams.len());
    fields.push(("up".into(), s.upstream.clone()));
    fields.push(("pv".into(), s.protocol_version.clone()));
    fields.push(("ca".into(), s.created_at.to_string()));
    fields.push(("la".into(), s.last_activity.to_string()));
    if let Some(usid) = &s.upstream_session_id {
        fields.push(("usid".into(), usid.clone()));
    }
    if let Some(key) = &s.resume_key {
        fields.push(("rk".into(), key.to_hex()));
    }
    if let Some(b) = &s.binding {
        fields.push(("bind".into(), b.clone()));
    }
    for p in &s.streams {
        fields.push((point_field(p.stream).into(), encode_point(&p.point)));
    }
    fields
}

fn decode_session(
    id: SessionId,
    fields: Vec<(String, String)>,
    key: &str,
) -> Result<Session, StoreError> {
    let mut upstream = None;
    let mut protocol_version = None;
    let mut created_at = None;
    let mut last_activity = None;
    let mut upstream_session_id = None;
    let mut resume_key = None;
    let mut binding = None;
    let mut streams: SmallVec<[StreamPoint; 1]> = SmallVec::new();
    let millis = |f: &str, v: &str| {
        v.parse::<UnixMillis>()
            .map_err(|_| corrupt(format!("{key}: field {f} is not a number: {v:?}")))
    };
    for (f, v) in fields {
        match f.as_str() {
            "up" => upstream = Some(v),
            "pv" => protocol_version = Some(v),
            "ca" => created_at = Some(millis(&f, &v)?),
            "la" => last_activity = Some(millis(&f, &v)?),
            "usid" => upstream_session_id = Some(v),
            "bind" => binding = Some(v),
            "rk" => {
                resume_key = Some(
                    ResumeKey::from_hex(&v)
                        .ok_or_else(|| corrupt(format!("{key}: field rk is not a key")))?,
                );
            }
            _ => {
                let Some(n) = f.strip_prefix("p:") else {
                    // A field a newer version added: not ours to judge.
                    continue;
                };
                let stream = n
                    .parse()
                    .map(StreamId)
                    .map_err(|_| corrupt(format!("{key}: bad stream field {f:?}")))?;
                let point = decode_point(&v)
                    .ok_or_else(|| corrupt(format!("{key}: bad point {v:?} in {f}")))?;
                streams.push(StreamPoint { stream, point });
            }
        }
    }
    let missing = |f: &str| corrupt(format!("{key}: field {f} missing"));
    streams.sort_unstable_by_key(|p| p.stream);
    Ok(Session {
        id,
        upstream_session_id,
        upstream: upstream.ok_or_else(|| missing("up"))?,
        protocol_version: protocol_version.ok_or_else(|| missing("pv"))?,
        created_at: created_at.ok_or_else(|| missing("ca"))?,
        last_activity: last_activity.ok_or_else(|| missing("la"))?,
        streams,
        resume_key,
        binding,
    })
}

/// One expired session as the sweep script reports it: id, upstream,
/// protocol version and, when there is one, the upstream session id.
fn expired_of(fields: Vec<String>) -> Result<ExpiredSession, StoreError> {
    let mut f = fields.into_iter();
    let (Some(id), Some(upstream), Some(protocol_version)) = (f.next(), f.next(), f.next()) else {
        return Err(corrupt("the sweep script reported a short record"));
    };
    let id = SessionId::parse(&id).map_err(|e| corrupt(format!("expired id {id:?}: {e}")))?;
    Ok(ExpiredSession {
        id,
        upstream,
        upstream_session_id: f.next(),
        protocol_version,
    })
}

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        store: STORE,
        message: message.into(),
    }
}

fn refused(message: impl Into<String>) -> StoreError {
    StoreError::Refused {
        store: STORE,
        message: message.into(),
    }
}

fn unavailable(message: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        store: STORE,
        message: message.into(),
    }
}

fn timed_out(limit: Duration) -> StoreError {
    unavailable(format!("no answer within {} ms", limit.as_millis()))
}

/// Sorts a redis-rs error into the store's classes (see the module docs).
fn map_redis_error(e: &RedisError) -> StoreError {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::Io => unavailable(message),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => corrupt(message),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::ReadOnly,
        ) => unavailable(message),
        ErrorKind::Server(_) => refused(message),
        ErrorKind::Extension => match e.code() {
            Some("BUSY" | "LOADING" | "READONLY" | "MASTERDOWN") => unavailable(message),
            Some("WRONGTYPE") => corrupt(message),
            _ => refused(message),
        },
        _ => refused(message),
    }
}

fn record_error(op: &'static str, addr: &str, e: &StoreError) {
    let kind = match e {
        StoreError::Unavailable { .. } => "unavailable",
        StoreError::Corrupt { .. } => "corrupt",
        StoreError::Refused { .. } => "refused",
        // Answers, not failures.
        StoreError::AlreadyExists(_) | StoreError::NotFound(_) | StoreError::Full { .. } => return,
    };
    tracing::warn!(store = STORE, op, addr, kind, error = %e, "redis store call failed");
    metrics::counter!("shadowcat_store_errors_total", "store" => STORE, "op" => op, "kind" => kind)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: Option<&str>, seq: u64) -> ResumptionPoint {
        ResumptionPoint {
            upstream_event_id: id.map(str::to_owned),
            client_seq: seq,
        }
    }

    #[test]
    fn points_round_trip() {
        for p in [
            point(None, 0),
            point(Some(""), 7),
            point(Some("a|b|c"), u64::MAX),
            point(Some("12|x"), 3),
        ] {
            assert_eq!(decode_point(&encode_point(&p)), Some(p));
        }
        assert_eq!(decode_point("x|y"), None);
        assert_eq!(decode_point(""), None);
    }

    #[test]
    fn grouping_keeps_the_last_word_per_stream() {
        let a = SessionId::parse("a").unwrap();
        let b = SessionId::parse("b").unwrap();
        let p = |seq| Update::Point {
            session: a.clone(),
            stream: StreamId(1),
            point: point(None, seq),
        };
        let updates = vec![
            p(1),
            Update::Touch {
                session: a.clone(),
                at: 9,
            },
            Update::EndStream {
                session: b.clone(),
                stream: StreamId(2),
            },
            p(2),
            Update::Touch {
                session: a.clone(),
                at: 5,
            },
            Update::EndStream {
                session: a.clone(),
                stream: StreamId(3),
            },
        ];
        let groups = group_updates(&updates);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].session, &a);
        assert_eq!(groups[0].touch, Some(9));
        assert_eq!(
            groups[0].streams.as_slice(),
            &[(StreamId(1), Some(&point(None, 2))), (StreamId(3), None)]
        );
        assert_eq!(groups[1].streams.as_slice(), &[(StreamId(2), None)]);
    }

    #[test]
    fn error_classes() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(map_redis_error(&io).is_retryable());
        let oom = redis::make_extension_error("OOM".into(), Some("maxmemory".into()));
        assert!(matches!(map_redis_error(&oom), StoreError::Refused { .. }));
        let wrong = redis::make_extension_error("WRONGTYPE".into(), None);
        assert!(matches!(
            map_redis_error(&wrong),
            StoreError::Corrupt { .. }
        ));
        let busy = redis::make_extension_error("BUSY".into(), None);
        assert!(map_redis_error(&busy).is_retryable());
    }
}
