//! One mode's run: the cluster (Redis, the paced test upstream, three
//! Shadowcat instances, nginx), the client that reads slowly and cuts, and
//! the chaos that kills owners and restarts Redis, side by side in one
//! task until the client is done or the deadline passes.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use shadowcat_proxy::test_util::TestUpstream;
use shadowcat_transport::sse::{Decoder, SseItem};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::check::{End, Mode, StreamTally, Tally, names_owner_loss};
use crate::client::{Exchange, Mcp};
use crate::plan::{Action, Plan};
use crate::procs::{Instance, Nginx, Redis, instance_spec};
use crate::relay::Relay;

/// Everything a run needs from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) shadowcat: PathBuf,
    pub(crate) redis: PathBuf,
    pub(crate) nginx: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) seed: u64,
    pub(crate) events: u64,
    pub(crate) min_cuts: u64,
    pub(crate) kills: u64,
    pub(crate) deadline: Duration,
    /// Notifications per second the client reads at most.
    pub(crate) client_rate: f64,
    /// Notifications per second the upstream sends at most.
    pub(crate) upstream_rate: f64,
    /// Leave out the `[cluster]` section and `--instance-id` (a binary
    /// from before the replay log rejects them).
    pub(crate) legacy: bool,
}

/// Bytes of one progress event as the test upstream writes it (about),
/// to turn the upstream's rate into the relay's bytes per second.
const UPSTREAM_EVENT_BYTES: f64 = 140.0;
/// A read that sees nothing this long is a stall: the client resumes.
const IDLE: Duration = Duration::from_secs(10);
/// Resume attempts in a row that bring no event before the client gives
/// a stream up.
const MAX_FRUITLESS_RESUMES: u32 = 30;
/// How long the chaos watches a killed owner's lease for a takeover.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(15);
/// How long a kill waits for the stream's lease to exist.
const LEASE_WITHIN: Duration = Duration::from_secs(10);
/// Longest one Redis command of the chaos may take.
const REDIS_WITHIN: Duration = Duration::from_secs(2);

/// What the client shows the chaos.
#[derive(Debug, Default, Clone)]
struct Seen {
    delivered: u64,
    session: Option<String>,
    last_id: Option<String>,
    served_by: Option<String>,
    done: bool,
}

/// What the chaos did.
#[derive(Debug, Default)]
pub(crate) struct ChaosStats {
    /// `kill -9`s, of the lease's owner or (no lease found) of the
    /// instance serving the client.
    pub(crate) kills: u64,
    pub(crate) owner_kills: u64,
    pub(crate) no_lease_kills: u64,
    pub(crate) redis_restarts: u64,
    /// Leases of killed owners taken by another token within
    /// [`TAKEOVER_WITHIN`], and how long after the kill.
    pub(crate) takeovers: u64,
    pub(crate) takeover_ms: Vec<u64>,
    /// Leases of killed owners that were gone (or unchanged) after
    /// [`TAKEOVER_WITHIN`].
    pub(crate) no_takeover: u64,
    /// Takeovers by the instance, by id.
    pub(crate) new_owners: Vec<String>,
    pub(crate) errors: Vec<String>,
}

/// One mode's result.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) tally: Tally,
    pub(crate) chaos: ChaosStats,
    pub(crate) elapsed: Duration,
    pub(crate) timed_out: bool,
    /// Set-up or client failure (not a check).
    pub(crate) error: Option<String>,
    /// Panics the instances logged.
    pub(crate) panics: Vec<String>,
    pub(crate) dir: PathBuf,
}

/// Runs `mode` within the deadline; every child is gone when it returns.
pub(crate) async fn run_mode(s: &Settings, mode: Mode) -> Outcome {
    let dir = s.out.join(mode.name());
    let _ = std::fs::remove_dir_all(&dir);
    let mut tally = Tally::default();
    let mut chaos = ChaosStats::default();
    let started = Instant::now();
    let mut error = None;
    if let Err(e) = std::fs::create_dir_all(&dir) {
        error = Some(format!("{}: {e}", dir.display()));
    }
    let mut timed_out = false;
    if error.is_none() {
        let run = run_cluster(s, mode, &dir, &mut tally, &mut chaos);
        match tokio::time::timeout(s.deadline, run).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error = Some(e),
            Err(_) => timed_out = true,
        }
    }
    Outcome {
        tally,
        chaos,
        elapsed: started.elapsed(),
        timed_out,
        error,
        panics: panics_in_logs(&dir),
        dir,
    }
}

/// Lines of the instances' logs that report a panic.
fn panics_in_logs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("shadowcat-") && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked")) {
            out.push(format!(
                "{name}: {}",
                line.chars().take(300).collect::<String>()
            ));
        }
    }
    out
}

async fn run_cluster(
    s: &Settings,
    mode: Mode,
    dir: &Path,
    tally: &mut Tally,
    chaos: &mut ChaosStats,
) -> Result<(), String> {
    let upstream = TestUpstream::start()
        .await
        .map_err(|e| format!("test upstream: {e}"))?;
    upstream.set_event_store(mode == Mode::EventStore);
    let up_port = upstream
        .url()
        .port_u16()
        .ok_or("test upstream has no port")?;
    let relay = Relay::start(
        crate::procs::loopback(up_port),
        s.upstream_rate * UPSTREAM_EVENT_BYTES,
    )
    .await?;
    let mut redis = Redis::start(&s.redis, &dir.join("redis")).await?;
    let mut instances = Vec::new();
    for id in ["i0", "i1", "i2"] {
        let spec = instance_spec(&s.shadowcat, dir, id, &redis.url(), relay.addr, s.legacy)?;
        instances.push(Instance::start(spec).await?);
    }
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.spec.addr).collect();
    let names: HashMap<SocketAddr, String> = instances
        .iter()
        .map(|i| (i.spec.addr, i.spec.id.clone()))
        .collect();
    let nginx = Nginx::start(&s.nginx, &dir.join("nginx"), &addrs).await?;
    let plan = Plan::new(s.seed, s.events, s.min_cuts, s.kills);
    let (tx, rx) = watch::channel(Seen::default());
    let client = async {
        let r = drive_client(s, nginx.addr, &plan, &names, tally, &tx).await;
        tx.send_modify(|seen| seen.done = true);
        r
    };
    let url = redis.url();
    let lease_wait = if s.legacy {
        Duration::ZERO
    } else {
        LEASE_WITHIN
    };
    let chaos_run = drive_chaos(
        &plan,
        &url,
        &mut instances,
        &mut redis,
        rx,
        lease_wait,
        chaos,
    );
    let (r, ()) = tokio::join!(client, chaos_run);
    drop(nginx);
    drop(instances);
    drop(relay);
    drop(upstream);
    r
}

/// Paces the client: at most `rate` notifications a second, never in a
/// burst to catch up after a pause.
#[derive(Debug)]
struct Pacer {
    start: tokio::time::Instant,
    n: u64,
    interval: Duration,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Pacer {
            start: tokio::time::Instant::now(),
            n: 0,
            interval: Duration::from_secs_f64(1.0 / rate),
        }
    }

    async fn tick(&mut self) {
        self.n += 1;
        let steps = u32::try_from(self.n).unwrap_or(u32::MAX);
        let due = self.start + self.interval * steps;
        let now = tokio::time::Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        } else if now - due > Duration::from_millis(200) {
            self.start = now - self.interval * steps;
        }
    }
}

/// The client's cut plan as it goes.
#[derive(Debug)]
struct Cuts {
    left: BTreeSet<u64>,
    head: BTreeSet<u64>,
}

async fn drive_client(
    s: &Settings,
    nginx: SocketAddr,
    plan: &Plan,
    names: &HashMap<SocketAddr, String>,
    tally: &mut Tally,
    tx: &watch::Sender<Seen>,
) -> Result<(), String> {
    let mut mcp = Mcp::new(nginx);
    let mut attempt = 0;
    loop {
        match mcp.initialize().await {
            Ok(()) => break,
            Err(e) if attempt < 5 => {
                eprintln!("cluster-chaos: initialize: {e}; again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("initialize through nginx: {e}")),
        }
    }
    tx.send_modify(|seen| seen.session = mcp.session.clone());
    let mut pacer = Pacer::new(s.client_rate);
    let mut cuts = Cuts {
        left: plan.cuts.clone(),
        head: plan.head_cuts.clone(),
    };
    // Each owner death may end a stream (no event store); a few more for
    // other failures, so the run always ends.
    let max_calls = s.kills as usize + 10;
    let mut call_id = 0;
    while tally.delivered() < s.events && tally.streams.len() < max_calls {
        let left = s.events - tally.delivered();
        tally.streams.push(StreamTally::new(left));
        call_id += 1;
        let mut f = Follow {
            mcp: &mcp,
            names,
            tally: &mut *tally,
            tx,
            pacer: &mut pacer,
            cuts: &mut cuts,
            call_id,
            last_id: None,
            server: None,
        };
        let end = f.run().await;
        if let Some(st) = tally.streams.last_mut() {
            st.end = Some(end);
        }
    }
    Ok(())
}

/// Following one `tools/call` stream through cuts and resumes.
struct Follow<'a> {
    mcp: &'a Mcp,
    names: &'a HashMap<SocketAddr, String>,
    tally: &'a mut Tally,
    tx: &'a watch::Sender<Seen>,
    pacer: &'a mut Pacer,
    cuts: &'a mut Cuts,
    call_id: u64,
    last_id: Option<String>,
    /// The instance serving the current connection.
    server: Option<String>,
}

/// How one read of one connection ended.
#[derive(Debug)]
enum Read {
    Result,
    Error(String),
    /// The client cut it as planned; `true`: cut the next resume at its
    /// head too.
    Cut(bool),
    /// It broke or ended without the result.
    Dropped,
    /// Nothing came for [`IDLE`].
    Stalled,
}

impl Follow<'_> {
    fn note_server(&mut self, ex: &Exchange) -> Option<String> {
        let name = ex.served_by().and_then(|a| self.names.get(&a).cloned());
        self.tx.send_modify(|seen| seen.served_by.clone_from(&name));
        self.server.clone_from(&name);
        name
    }

    async fn run(&mut self) -> End {
        let count = self.stream().requested;
        let mut ex = match self.mcp.call_progress(self.call_id, count).await {
            Ok(ex) => ex,
            Err(e) => return End::Unresumable(format!("tools/call: {e}")),
        };
        if ex.status() != http::StatusCode::OK || !ex.is_sse() {
            let status = ex.status();
            return End::OtherError(format!("tools/call answered {status}: {}", ex.text().await));
        }
        self.note_server(&ex);
        let mut first_event_from: Option<Instant> = None;
        let mut fruitless = 0u32;
        loop {
            let before = self.stream().distinct;
            let read = self.read(&mut ex, &mut first_event_from).await;
            if self.stream().distinct > before {
                fruitless = 0;
            }
            let head_cut = match read {
                Read::Result => return End::Result,
                Read::Error(m) if names_owner_loss(&m) => return End::NamedError(m),
                Read::Error(m) => return End::OtherError(m),
                Read::Cut(head) => {
                    self.tally.cuts += 1;
                    head
                }
                Read::Dropped => {
                    eprintln!(
                        "cluster-chaos: connection to {} dropped at {} notifications; resuming",
                        self.server.as_deref().unwrap_or("?"),
                        self.tally.delivered()
                    );
                    self.tally.drops += 1;
                    false
                }
                Read::Stalled => {
                    eprintln!(
                        "cluster-chaos: nothing for {IDLE:?} from {} at {} notifications; resuming",
                        self.server.as_deref().unwrap_or("?"),
                        self.tally.delivered()
                    );
                    self.tally.stalls += 1;
                    false
                }
            };
            drop(ex);
            ex = match self.resume(head_cut, &mut fruitless).await {
                Ok((ex, t0)) => {
                    first_event_from = Some(t0);
                    ex
                }
                Err(end) => return end,
            };
        }
    }

    fn stream(&self) -> &StreamTally {
        self.tally.streams.last().expect("a stream is followed")
    }

    /// GET + `Last-Event-ID` until a stream answers (bounded); the
    /// exchange and when its GET was sent.
    async fn resume(
        &mut self,
        mut head_cut: bool,
        fruitless: &mut u32,
    ) -> Result<(Exchange, Instant), End> {
        loop {
            let Some(id) = self.last_id.clone() else {
                return Err(End::Unresumable(
                    "the connection ended before any event id".into(),
                ));
            };
            self.tally.resumes += 1;
            let t0 = Instant::now();
            let (status, message) = match self.mcp.resume(&id).await {
                Ok(ex) if ex.status() == http::StatusCode::OK && ex.is_sse() => {
                    let name = self.note_server(&ex).unwrap_or_else(|| "?".into());
                    *self.tally.resumes_by_instance.entry(name).or_default() += 1;
                    if head_cut {
                        head_cut = false;
                        self.tally.cuts += 1;
                        continue;
                    }
                    *fruitless += 1;
                    if *fruitless > MAX_FRUITLESS_RESUMES {
                        return Err(End::Unresumable(format!(
                            "{MAX_FRUITLESS_RESUMES} resumes in a row brought no event"
                        )));
                    }
                    return Ok((ex, t0));
                }
                Ok(ex) => {
                    let status = ex.status().as_u16();
                    let by = self.note_server(&ex).unwrap_or_else(|| "?".into());
                    eprintln!(
                        "cluster-chaos: resume refused {status} by {by} at {} notifications",
                        self.tally.delivered()
                    );
                    (status, ex.text().await)
                }
                Err(e) => (0, e),
            };
            let at = self.tally.delivered();
            let entry = self.tally.refusals.entry(status).or_default();
            entry.0 += 1;
            entry.1 = format!("(last at {at} notifications) {message}");
            *fruitless += 1;
            if *fruitless > MAX_FRUITLESS_RESUMES {
                return Err(End::Unresumable(format!(
                    "resume refused {MAX_FRUITLESS_RESUMES} times in a row, last {status}: {message}"
                )));
            }
            let backoff = Duration::from_millis(50 << (*fruitless).min(3));
            tokio::time::sleep(backoff).await;
        }
    }

    /// Reads one connection until the result, an error, a planned cut, a
    /// drop or a stall.
    async fn read(&mut self, ex: &mut Exchange, first_from: &mut Option<Instant>) -> Read {
        let mut decoder = Decoder::default();
        loop {
            let data = match tokio::time::timeout(IDLE, ex.next_data()).await {
                Err(_) => return Read::Stalled,
                Ok(Err(_) | Ok(None)) => return Read::Dropped,
                Ok(Ok(Some(d))) => d,
            };
            decoder.push(data);
            for item in decoder.by_ref() {
                let ev = match item {
                    Err(e) => {
                        self.unexpected(format!("undecodable SSE: {e}"));
                        return Read::Dropped;
                    }
                    Ok(SseItem::Retry(_)) => continue,
                    Ok(SseItem::IdOnly(id)) => {
                        if let Some(id) = id {
                            self.last_id = Some(id.as_str().to_owned());
                        }
                        continue;
                    }
                    Ok(SseItem::Event(ev)) => ev,
                };
                if let Some(t0) = first_from.take() {
                    let ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
                    self.tally.resume_ms.push(ms);
                }
                if let Some(id) = &ev.id {
                    self.last_id = Some(id.as_str().to_owned());
                }
                if ev.data.is_empty() {
                    // A priming event: an id to resume from, nothing else.
                    self.publish(false);
                    continue;
                }
                let Ok(msg) = serde_json::from_slice::<Value>(&ev.data) else {
                    self.unexpected(String::from_utf8_lossy(&ev.data).into_owned());
                    continue;
                };
                if msg["method"] == "notifications/progress" {
                    let Some(p) = msg["params"]["progress"].as_u64() else {
                        self.unexpected(msg.to_string());
                        continue;
                    };
                    let Some(st) = self.tally.streams.last_mut() else {
                        continue;
                    };
                    st.progress(p);
                    self.publish(true);
                    self.pacer.tick().await;
                    let delivered = self.tally.delivered();
                    let mut cut = None;
                    while let Some(&at) = self.cuts.left.first() {
                        if at > delivered {
                            break;
                        }
                        self.cuts.left.pop_first();
                        cut = Some(self.cuts.head.contains(&at));
                    }
                    if let Some(head) = cut {
                        return Read::Cut(head);
                    }
                } else if let Some(err) = msg.get("error") {
                    let m = err["message"].as_str().unwrap_or("").to_owned();
                    return Read::Error(format!("{} {m}", err["code"]));
                } else if msg.get("result").is_some() && msg["id"] == self.call_id {
                    return Read::Result;
                } else {
                    self.unexpected(msg.to_string());
                }
            }
        }
    }

    fn publish(&mut self, progressed: bool) {
        let delivered = if progressed {
            Some(self.tally.delivered())
        } else {
            None
        };
        let id = self.last_id.clone();
        self.tx.send_modify(|seen| {
            if let Some(d) = delivered {
                seen.delivered = d;
            }
            seen.last_id = id;
        });
    }

    fn unexpected(&mut self, what: String) {
        self.tally.unexpected_count += 1;
        if self.tally.unexpected.len() < 5 {
            self.tally.unexpected.push(what);
        }
    }
}

async fn drive_chaos(
    plan: &Plan,
    redis_url: &str,
    instances: &mut [Instance],
    redis: &mut Redis,
    mut rx: watch::Receiver<Seen>,
    lease_wait: Duration,
    stats: &mut ChaosStats,
) {
    let mut watchers = Vec::new();
    for &(at, action) in &plan.actions {
        let seen = match rx.wait_for(|s| s.done || s.delivered >= at).await {
            Ok(seen) => seen.clone(),
            Err(_) => break,
        };
        if seen.done {
            break;
        }
        match action {
            Action::RestartRedis => match redis.restart().await {
                Ok(()) => {
                    eprintln!(
                        "cluster-chaos: redis-server restarted at {} notifications",
                        seen.delivered
                    );
                    stats.redis_restarts += 1;
                }
                Err(e) => stats.errors.push(format!("redis restart: {e}")),
            },
            Action::KillOwner => {
                if let Some(w) = kill_owner(&rx, redis_url, instances, lease_wait, stats).await {
                    watchers.push(w);
                }
            }
        }
    }
    for w in watchers {
        match w.await {
            Ok(Some((new, after))) => {
                stats.takeovers += 1;
                stats
                    .takeover_ms
                    .push(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
                stats
                    .new_owners
                    .push(new.split('|').next().unwrap_or("").to_owned());
            }
            Ok(None) => stats.no_takeover += 1,
            Err(e) => stats.errors.push(format!("takeover watch: {e}")),
        }
    }
}

/// The lease naming the owner of the client's current stream, waiting up
/// to `wait` for one to exist (after an owner's death the next one takes
/// the lease when it needs to read on); key, value and owner index.
async fn find_owner(
    rx: &watch::Receiver<Seen>,
    redis_url: &str,
    instances: &[Instance],
    wait: Duration,
    stats: &mut ChaosStats,
) -> Option<(String, String, usize)> {
    let deadline = Instant::now() + wait;
    loop {
        let seen = rx.borrow().clone();
        let stream = seen
            .last_id
            .as_deref()
            .and_then(|id| id.split('.').next())
            .unwrap_or("")
            .to_owned();
        let session = seen.session.unwrap_or_default();
        match leases_of(redis_url, &session).await {
            Ok(leases) => {
                let suffix = format!(":{stream}:lease");
                let found = leases.into_iter().find(|(k, _)| k.ends_with(&suffix));
                if let Some((key, value)) = found {
                    let owner = value.split('|').next().unwrap_or("");
                    if let Some(i) = instances.iter().position(|i| i.spec.id == owner) {
                        return Some((key, value, i));
                    }
                }
            }
            Err(e) => stats.errors.push(format!("lease lookup: {e}")),
        }
        if Instant::now() >= deadline || seen.done {
            eprintln!(
                "cluster-chaos:   no lease for stream {stream} of session {session} within {wait:?}"
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the owner of the client's stream (by its lease in Redis) and
/// starts it again; then a task watches the lease for the takeover.
async fn kill_owner(
    rx: &watch::Receiver<Seen>,
    redis_url: &str,
    instances: &mut [Instance],
    lease_wait: Duration,
    stats: &mut ChaosStats,
) -> Option<JoinHandle<Option<(String, Duration)>>> {
    let looked = Instant::now();
    let lease = find_owner(rx, redis_url, instances, lease_wait, stats).await;
    let delivered = rx.borrow().delivered;
    let index = match &lease {
        Some((_, _, i)) => *i,
        None => {
            // No lease (a binary without the replay log): kill the
            // instance serving the client instead.
            let served = rx.borrow().served_by.clone().unwrap_or_default();
            instances
                .iter()
                .position(|i| i.spec.id == served)
                .unwrap_or(0)
        }
    };
    let killed_at = Instant::now();
    let pid = instances[index].pid();
    if let Err(e) = instances[index].kill_and_restart().await {
        stats
            .errors
            .push(format!("restart {}: {e}", instances[index].spec.id));
    }
    stats.kills += 1;
    eprintln!(
        "cluster-chaos: kill -9 {} (pid {pid:?}, {}) at {delivered} notifications{}",
        instances[index].spec.id,
        if lease.is_some() {
            "lease owner"
        } else {
            "no lease"
        },
        match killed_at.duration_since(looked) {
            d if d > Duration::from_millis(100) => format!(" (waited {d:?} for a lease)"),
            _ => String::new(),
        }
    );
    let Some((key, old, _)) = lease else {
        stats.no_lease_kills += 1;
        return None;
    };
    stats.owner_kills += 1;
    let url = redis_url.to_owned();
    Some(tokio::spawn(async move {
        let new = watch_takeover(&url, &key, &old).await;
        let after = killed_at.elapsed();
        match &new {
            Some(v) => eprintln!("cluster-chaos:   {key}: {v} {after:?} after the kill"),
            None => eprintln!(
                "cluster-chaos:   {key}: no takeover within {TAKEOVER_WITHIN:?} of the kill"
            ),
        }
        new.map(|v| (v, after))
    }))
}

/// Escapes Redis glob characters.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    tokio::time::timeout(REDIS_WITHIN, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| "redis connect timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// Every lease key of `session` with its value.
async fn leases_of(url: &str, session: &str) -> Result<Vec<(String, String)>, String> {
    let mut conn = redis_conn(url).await?;
    let pattern = format!("*:rl:*{}*:lease", glob_escape(session));
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..10_000 {
        let (next, batch): (u64, Vec<String>) = tokio::time::timeout(
            REDIS_WITHIN,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| "SCAN timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let v: Option<String> = tokio::time::timeout(
            REDIS_WITHIN,
            redis::cmd("GET").arg(&k).query_async(&mut conn),
        )
        .await
        .map_err(|_| "GET timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        if let Some(v) = v {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Polls `key` until it holds a value other than `old`; that value, or
/// `None` after [`TAKEOVER_WITHIN`].
async fn watch_takeover(url: &str, key: &str, old: &str) -> Option<String> {
    let deadline = Instant::now() + TAKEOVER_WITHIN;
    while Instant::now() < deadline {
        if let Ok(mut conn) = redis_conn(url).await {
            while Instant::now() < deadline {
                let got = tokio::time::timeout(
                    REDIS_WITHIN,
                    redis::cmd("GET")
                        .arg(key)
                        .query_async::<Option<String>>(&mut conn),
                )
                .await;
                match got {
                    Ok(Ok(Some(v))) if v != old => return Some(v),
                    Ok(Ok(_)) => {}
                    // Reconnect after an error.
                    _ => break,
                }
                // Polling a key: Redis offers no signal for it here.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("ab*c?[d]\\"), "ab\\*c\\?\\[d\\]\\\\");
        assert_eq!(glob_escape("0f3a-99"), "0f3a-99");
    }
}
