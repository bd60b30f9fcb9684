//! One function per attack of issue 17 (F1, F2, F4–F11). Each starts its
//! own proxy and upstream, is bounded in count and time, and returns a
//! [`Report`]. The `CI_*` constants are the limits the CI scale sets, for
//! the tests to assert against.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};
use tokio::task::JoinSet;

use super::client::{
    self, ATTACKER, Failure, Mcp, call_body, connect_from, fresh_ip, fresh_session_works,
    initialize_body, label, post_head, raw_exchange, read_head, read_response, rpc_error,
};
use super::procs;
use super::proxy::{Config, Proxy};
use super::upstream::HostileUpstream;
use super::{AttackError, Recovery, Report, Scale, Target};

/// `max_buffered_bytes` at CI scale.
pub const CI_BUDGET_BYTES: u64 = 16 << 20;
/// `body_idle_timeout_ms` at CI scale.
pub const CI_BODY_IDLE_MS: u64 = 500;
/// `body_read_timeout_ms` at CI scale.
pub const CI_BODY_READ_MS: u64 = 2_000;
/// `max_session_creates_per_minute` at CI scale.
pub const CI_CREATES_PER_MINUTE: u64 = 60;
/// `max_sessions` for the concurrency attack at CI scale.
pub const CI_MAX_SESSIONS: u64 = 50;
/// `max_connections` at CI scale.
pub const CI_MAX_CONNECTIONS: u64 = 100;
/// `max_response_bytes` at CI scale.
pub const CI_MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// How long a fresh client is retried after an attack at full scale.
const FULL_RECOVERY: Duration = Duration::from_secs(60);
/// The same at CI scale.
const CI_RECOVERY: Duration = Duration::from_secs(10);
/// A stream a flood tool sends: more than a stream's replay buffer holds.
const FLOOD_BYTES: u64 = 4 << 20;
/// How long a live stream may send nothing before its client stops waiting.
const STALL: Duration = Duration::from_secs(3);
/// A live stream: more than its clients will read.
const LIVE_STREAM_BYTES: u64 = 64 << 20;

fn setup(e: impl std::fmt::Display) -> AttackError {
    AttackError::Setup(e.to_string())
}

fn recovery_bound(scale: Scale) -> Duration {
    match scale {
        Scale::Full => FULL_RECOVERY,
        Scale::Ci => CI_RECOVERY,
    }
}

/// One attack's proxy, upstream and report in progress.
struct Run {
    proxy: Proxy,
    upstream: HostileUpstream,
    report: Report,
    peak: Arc<AtomicU64>,
    _sampler: Sampler,
}

/// The task that keeps the peak; stopped when the run ends, however.
struct Sampler(tokio::task::JoinHandle<()>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Run {
    /// Starts upstream and proxy (`DIR/NAME.toml`, `DIR/NAME.log`) and
    /// checks a fresh session works.
    async fn start(
        target: &Target,
        id: &'static str,
        name: &str,
        attack: String,
        config: &Config,
    ) -> Result<Self, AttackError> {
        let upstream = HostileUpstream::start().await.map_err(setup)?;
        let proxy = Proxy::start(target, name, upstream.addr(), config).await?;
        fresh_session_works(proxy.addr)
            .await
            .map_err(AttackError::NotWorking)?;
        // VmHWM is lost if the process dies: keep the last one seen.
        let peak = Arc::new(AtomicU64::new(proxy.peak_kib()));
        let (pid, p) = (proxy.pid, Arc::clone(&peak));
        let sampler = tokio::spawn(async move {
            loop {
                if let Some(k) = procs::status_field(pid, "VmHWM:") {
                    p.fetch_max(k, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let report = Report {
            id,
            attack,
            rss_before_kib: proxy.rss_kib(),
            rss_peak_kib: 0,
            rss_after_kib: None,
            statuses: Default::default(),
            recovery: Recovery::NotApplicable,
            up: true,
            facts: Default::default(),
            notes: Vec::new(),
        };
        Ok(Run {
            proxy,
            upstream,
            report,
            peak,
            _sampler: Sampler(sampler),
        })
    }

    fn saw(&mut self, what: impl Into<String>) {
        *self.report.statuses.entry(what.into()).or_insert(0) += 1;
    }

    fn fact(&mut self, name: &'static str, v: u64) {
        self.report.facts.insert(name, v);
    }

    fn note(&mut self, s: impl Into<String>) {
        self.report.notes.push(s.into());
    }

    fn peak_now(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.proxy.peak_kib())
    }

    /// Waits (up to `bound`) until RSS stopped growing for 2 s.
    async fn settle(&self, bound: Duration) {
        let start = Instant::now();
        let mut last = self.proxy.rss_kib();
        let mut since = Instant::now();
        while start.elapsed() < bound && since.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.proxy.rss_kib();
            if now > last + 1024 {
                since = Instant::now();
            }
            last = last.max(now);
        }
    }

    /// A fresh client retried every 100 ms up to `bound`, then RSS and
    /// the peak (VmHWM, so never below RSS).
    async fn finish(mut self, bound: Duration) -> Report {
        let start = Instant::now();
        self.report.recovery = loop {
            if !self.proxy.up() {
                break Recovery::NotWithin(start.elapsed());
            }
            if fresh_session_works(self.proxy.addr).await.is_ok() {
                break Recovery::After(start.elapsed());
            }
            if start.elapsed() >= bound {
                break Recovery::NotWithin(bound);
            }
            // Retrying another process: nothing to wait on.
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.report.up = self.proxy.up();
        self.report.rss_after_kib = self.report.up.then(|| self.proxy.rss_kib());
        self.report.rss_peak_kib = self.report.rss_peak_kib.max(self.peak_now());
        self.report
    }
}

/// Runs `jobs` with at most `limit` at once; their outputs in order.
async fn all<T, F>(jobs: Vec<F>, limit: usize) -> Vec<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(limit.max(1)));
    let mut set = JoinSet::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let sem = Arc::clone(&sem);
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("never closed");
            (i, job.await)
        });
    }
    let mut out: Vec<Option<T>> = Vec::new();
    out.resize_with(set.len(), || None);
    while let Some(r) = set.join_next().await {
        if let Ok((i, v)) = r {
            out[i] = Some(v);
        }
    }
    out.into_iter().flatten().collect()
}

// ---------------------------------------------------------------- F1

/// The body timeouts at `scale`; `total` is the CI body-read timeout.
fn f1_config(scale: Scale, total: u64) -> Config {
    match scale {
        Scale::Full => Config::new(),
        Scale::Ci => Config::new()
            .new_limit("body_idle_timeout_ms", CI_BODY_IDLE_MS)
            .new_limit("body_read_timeout_ms", total),
    }
}

/// An `initialize` body padded with spaces to `len` bytes.
fn padded_initialize(len: usize) -> Vec<u8> {
    let mut b = initialize_body("slow").into_bytes();
    if b.len() < len {
        b.resize(len, b' ');
    }
    b
}

/// Sends a POST whose head goes in one write and whose `body` goes one
/// byte per write (`TCP_NODELAY`: one byte per segment), `gap` apart; the
/// outcome.
async fn one_byte_per_segment(to: SocketAddr, body: Vec<u8>, gap: Duration) -> String {
    let tcp = match connect_from(ATTACKER, to).await {
        Ok(t) => t,
        Err(e) => return e.label(),
    };
    let head = post_head(to, body.len(), "");
    let std = match tcp.into_std() {
        Ok(s) => s,
        Err(e) => return format!("socket: {e}"),
    };
    // A blocking thread paces the bytes closer than tokio's 1 ms timer.
    let sent = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut s = std;
        s.set_nonblocking(false)?;
        let written = s.write_all(head.as_bytes()).and_then(|()| {
            for b in &body {
                s.write_all(std::slice::from_ref(b))?;
                std::thread::sleep(gap);
            }
            Ok(())
        });
        s.set_nonblocking(true)?;
        // Refused part way: what the proxy said is still to be read.
        Ok::<_, std::io::Error>((s, written.err()))
    })
    .await;
    let (std, write_error) = match sent {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("socket: {e}"),
        Err(e) => return format!("writer: {e}"),
    };
    let mut tcp = match TcpStream::from_std(std) {
        Ok(t) => t,
        Err(e) => return format!("socket: {e}"),
    };
    match (
        read_response(&mut tcp, Duration::from_secs(15)).await,
        write_error,
    ) {
        (Ok(a), _) => a.status.to_string(),
        (Err(_), Some(w)) => format!("write failed ({})", w.kind()),
        (Err(e), None) => e.label(),
    }
}

/// F1: request bodies sent one byte per TCP segment: `conns` connections
/// at once, `bytes` body bytes each. Full: 1 × 30,001 and 20 × 3,000; CI:
/// 1 × 30,001 with short body timeouts.
pub async fn f1_one_byte_segments(
    target: &Target,
    scale: Scale,
    conns: usize,
    bytes: usize,
) -> Result<Report, AttackError> {
    let gap = Duration::from_micros(200);
    let mut run = Run::start(
        target,
        "F1",
        &format!("f1-segments-{conns}x{bytes}"),
        format!("body one byte per segment, {conns} conn × {bytes} B"),
        // Time for the whole body: this attack is about memory.
        &f1_config(scale, 60_000),
    )
    .await?;
    let to = run.proxy.addr;
    let start = Instant::now();
    let jobs: Vec<_> = (0..conns)
        .map(|_| one_byte_per_segment(to, padded_initialize(bytes), gap))
        .collect();
    for outcome in all(jobs, conns).await {
        run.saw(outcome);
    }
    run.note(format!(
        "{} body bytes in {:.1} s",
        conns * bytes,
        start.elapsed().as_secs_f64()
    ));
    run.fact("body_bytes", (conns * bytes) as u64);
    Ok(run.finish(recovery_bound(scale)).await)
}

/// Writes a POST head declaring `declared` body bytes, then one byte every
/// `every` until the answer or `observe` ends; the outcome (`open` when the
/// proxy neither answered nor closed).
async fn drip_body(to: SocketAddr, declared: usize, every: Duration, observe: Duration) -> String {
    let tcp = match connect_from(ATTACKER, to).await {
        Ok(t) => t,
        Err(e) => return e.label(),
    };
    let (mut rd, mut wr) = tcp.into_split();
    let head = post_head(to, declared, "");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(b"{").await?;
        for _ in 0..declared {
            tokio::time::sleep(every).await;
            wr.write_all(b" ").await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let outcome = match tokio::time::timeout(observe, read_head(&mut rd)).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(Failure::NoResponse(_))) => "closed".into(),
        Ok(Err(e)) => e.label(),
        Err(_) => "open".into(),
    };
    writer.abort();
    outcome
}

/// F1: many connections each sending a body byte every `every`, watched
/// for `observe`. Full: 1,000 × every 5 s for 65 s; CI: 50 × every 200 ms
/// for 6 s with a 2 s body-read timeout.
pub async fn f1_drip_bodies(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let (conns, every, observe) = match scale {
        Scale::Full => (1_000, Duration::from_secs(5), Duration::from_secs(65)),
        Scale::Ci => (50, Duration::from_millis(200), Duration::from_secs(6)),
    };
    let mut run = Run::start(
        target,
        "F1",
        "f1-drip",
        format!(
            "{conns} conns, a body byte every {} ms, watched {} s",
            every.as_millis(),
            observe.as_secs()
        ),
        &f1_config(scale, CI_BODY_READ_MS),
    )
    .await?;
    let to = run.proxy.addr;
    let jobs: Vec<_> = (0..conns)
        .map(|_| drip_body(to, 100_000, every, observe))
        .collect();
    for outcome in all(jobs, conns).await {
        run.saw(outcome);
    }
    let open = run.report.count("open");
    run.fact("open_at_end", open);
    Ok(run.finish(recovery_bound(scale)).await)
}

/// F1: a body that stops arriving: a head declaring 100 bytes, 10 of them,
/// then nothing. Full: watched 20 s (default idle timeout 10 s); CI: 5 s
/// with a 500 ms idle timeout.
pub async fn f1_idle_body(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let observe = match scale {
        Scale::Full => Duration::from_secs(20),
        Scale::Ci => Duration::from_secs(5),
    };
    let mut run = Run::start(
        target,
        "F1",
        "f1-idle",
        format!(
            "body stops after 10 of 100 B, watched {} s",
            observe.as_secs()
        ),
        &f1_config(scale, CI_BODY_READ_MS),
    )
    .await?;
    let to = run.proxy.addr;
    let mut tcp = connect_from(ATTACKER, to).await.map_err(setup)?;
    let start = Instant::now();
    let mut req = post_head(to, 100, "").into_bytes();
    req.extend_from_slice(b"{\"jsonrpc\"");
    let outcome = raw_exchange(&mut tcp, &req, observe).await;
    let answered = start.elapsed();
    match &outcome {
        Ok(a) => {
            run.saw(a.status.to_string());
            run.fact("answered_ms", answered.as_millis() as u64);
            run.fact(
                "jsonrpc",
                u64::from(
                    serde_json::from_slice::<serde_json::Value>(&a.body)
                        .is_ok_and(|v| v["jsonrpc"] == "2.0" && v["error"]["message"].is_string()),
                ),
            );
            run.note(format!("answered after {} ms", answered.as_millis()));
        }
        Err(Failure::Timeout) => run.saw("open"),
        Err(e) => run.saw(e.label()),
    }
    drop(tcp);
    Ok(run.finish(recovery_bound(scale)).await)
}

// ---------------------------------------------------------------- F2

fn f2_config(scale: Scale) -> Config {
    match scale {
        Scale::Full => Config::new(),
        Scale::Ci => Config::new().new_limit("max_buffered_bytes", CI_BUDGET_BYTES),
    }
}

/// A session initialized from `from`: its id.
async fn new_session(from: IpAddr, to: SocketAddr) -> Result<HeaderValue, String> {
    let mut c = Mcp::connect(from, to).await.map_err(|e| e.label())?;
    let a = c.initialize().await.map_err(|e| e.label())?;
    c.session.ok_or_else(|| a.status.to_string())
}

/// Opens a flood stream in `session`, reads its first bytes and drops
/// the connection; the outcome.
async fn open_and_drop(to: SocketAddr, session: HeaderValue) -> String {
    let mut c = match Mcp::connect(ATTACKER, to).await {
        Ok(c) => c,
        Err(e) => return e.label(),
    };
    c.session = Some(session);
    let req = c.post(call_body(
        1,
        "flood",
        &format!(r#"{{"bytes":{FLOOD_BYTES}}}"#),
    ));
    match c.head(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            if status == 200 {
                let _ = tokio::time::timeout(Duration::from_secs(5), body.frame()).await;
            }
            status.to_string()
        }
        Err(e) => e.label(),
    }
}

/// F2: `sessions` × `streams` streams of a tool that sends 4 MiB as fast
/// as it can, each dropped after its first bytes. Full: 50 × 16, 64 at
/// once, at the defaults; CI: 8 × 8, 8 at once, with a 16 MiB budget.
pub async fn f2_dropped_streams(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let (sessions, streams, at_once, settle) = match scale {
        Scale::Full => (50, 16, 64, Duration::from_secs(30)),
        // Few at once: what is measured is what dropped streams keep, not
        // what live connections in full flow hold.
        Scale::Ci => (8, 8, 8, Duration::from_secs(10)),
    };
    let mut run = Run::start(
        target,
        "F2",
        "f2-dropped",
        format!("{sessions} sessions × {streams} streams of 4 MiB, {at_once} at once, dropped"),
        &f2_config(scale),
    )
    .await?;
    let to = run.proxy.addr;
    let mut jobs = Vec::new();
    for _ in 0..sessions {
        match new_session(ATTACKER, to).await {
            Ok(sid) => {
                for _ in 0..streams {
                    jobs.push(open_and_drop(to, sid.clone()));
                }
            }
            Err(e) => run.saw(format!("initialize {e}")),
        }
    }
    for outcome in all(jobs, at_once).await {
        run.saw(outcome);
    }
    run.settle(settle).await;
    if let Some(b) = run.proxy.metric("shadowcat_buffered_bytes").await {
        run.fact("buffered_kib", (b / 1024.0) as u64);
        run.note(format!("buffered {:.0} MiB", b / 1048576.0));
    }
    if let Some(n) = run.proxy.metric("shadowcat_budget_releases_total").await {
        run.note(format!("{n} budget releases"));
    }
    Ok(run.finish(recovery_bound(scale)).await)
}

/// Opens a flood stream of `stream_bytes` in `session` on a raw
/// connection, reads `read_bytes` of it (so the proxy keeps what it wrote
/// for resumption; less if it stalls for [`STALL`]) and returns the
/// connection, no longer read.
async fn open_read_hold(
    to: SocketAddr,
    session: HeaderValue,
    stream_bytes: u64,
    read_bytes: usize,
) -> (String, Option<TcpStream>) {
    let mut tcp = match connect_from(ATTACKER, to).await {
        Ok(t) => t,
        Err(e) => return (e.label(), None),
    };
    let body = call_body(1, "flood", &format!(r#"{{"bytes":{stream_bytes}}}"#));
    let sid = session.to_str().unwrap_or("");
    let mut req = post_head(to, body.len(), &format!("Mcp-Session-Id: {sid}\r\n")).into_bytes();
    req.extend_from_slice(body.as_bytes());
    if let Err(e) = tcp.write_all(&req).await {
        return (format!("write failed ({})", e.kind()), None);
    }
    let status = match tokio::time::timeout(client::REQUEST_TIMEOUT, read_head(&mut tcp)).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return (e.label(), None),
        Err(_) => return ("timeout".into(), None),
    };
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while status == 200 && got < read_bytes {
        match tokio::time::timeout(STALL, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got += n,
            // Paused by the proxy (its budget): still live, still held.
            Err(_) => return (format!("{status} stalled"), Some(tcp)),
            _ => return (format!("{status} ended"), None),
        }
    }
    (status.to_string(), Some(tcp))
}

/// F2: live streams opened one after another, each read 2 MiB and then
/// held unread (the proxy keeps what it wrote for resumption), until one
/// is refused or `max` are open; then one more stream from a new client.
/// Full: up to 320 at the defaults; CI: up to 48 with a 16 MiB budget.
/// Facts `admitted` (streams open before the first refusal),
/// `new_stream_status`.
pub async fn f2_live_streams(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let (max, settle) = match scale {
        Scale::Full => (320, Duration::from_secs(30)),
        Scale::Ci => (48, Duration::from_secs(10)),
    };
    let mut run = Run::start(
        target,
        "F2",
        "f2-live",
        format!("up to {max} live streams one by one, 2 MiB read then held; then a new stream"),
        &f2_config(scale),
    )
    .await?;
    let to = run.proxy.addr;
    let mut held = Vec::new();
    let mut session = None;
    for n in 0..max {
        // A session holds at most 16 live streams (max_streams_per_session).
        if n % 16 == 0 {
            session = match new_session(ATTACKER, to).await {
                Ok(sid) => Some(sid),
                Err(e) => {
                    run.saw(format!("initialize {e}"));
                    break;
                }
            };
        }
        let Some(sid) = session.clone() else { break };
        let (outcome, tcp) = open_read_hold(to, sid, LIVE_STREAM_BYTES, 2 << 20).await;
        let refused = !outcome.starts_with("200");
        run.saw(outcome);
        if !refused {
            held.extend(tcp);
        }
        if refused {
            break;
        }
    }
    run.fact("admitted", held.len() as u64);
    run.settle(settle).await;
    if let Some(b) = run.proxy.metric("shadowcat_buffered_bytes").await {
        run.fact("buffered_kib", (b / 1024.0) as u64);
        run.note(format!("buffered {:.0} MiB", b / 1048576.0));
    }
    // A new client's stream while the others hold the memory.
    let new = match new_session(fresh_ip(), to).await {
        Ok(sid) => {
            let (outcome, tcp) = open_read_hold(to, sid, LIVE_STREAM_BYTES, 0).await;
            drop(tcp);
            outcome
        }
        Err(e) => format!("initialize {e}"),
    };
    run.note(format!("{} held; new stream: {new}", held.len()));
    run.fact("new_stream_status", new.parse().unwrap_or(0));
    drop(held);
    Ok(run.finish(recovery_bound(scale)).await)
}

// ---------------------------------------------------------------- F4

/// F4: one client address sends `count` initializes, 8 at a time. Full:
/// 10,100 at the defaults; CI: 150 with 60 creates per minute. Facts
/// `created`, `retry_after` (429s with `Retry-After` and a JSON-RPC
/// error), `second_address`
/// (the status of an initialize from another address right after).
pub async fn f4_initialize_flood(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let (count, config) = match scale {
        Scale::Full => (10_100, Config::new()),
        Scale::Ci => (
            150,
            Config::new().new_limit("max_session_creates_per_minute", CI_CREATES_PER_MINUTE),
        ),
    };
    let mut run = Run::start(
        target,
        "F4",
        "f4-flood",
        format!("one address, {count} initializes, 8 at a time"),
        &config,
    )
    .await?;
    let to = run.proxy.addr;
    let left = Arc::new(AtomicU64::new(count));
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = Instant::now();
    let worker = |left: Arc<AtomicU64>| async move {
        let mut seen: Vec<(String, bool)> = Vec::new();
        let mut c: Option<Mcp> = None;
        while Instant::now() < deadline
            && left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            if c.is_none() {
                c = Mcp::connect(ATTACKER, to).await.ok();
            }
            let Some(conn) = c.as_mut() else {
                seen.push(("connect failed".into(), false));
                continue;
            };
            conn.session = None;
            let r = conn.initialize().await;
            // A 429 a client can act on: when to retry, and why.
            let retry = r.as_ref().is_ok_and(|a| {
                a.headers.contains_key(http::header::RETRY_AFTER) && a.rpc_error().is_some()
            });
            if r.is_err() {
                c = None;
            }
            seen.push((label(&r), retry));
        }
        seen
    };
    let jobs: Vec<_> = (0..8).map(|_| worker(Arc::clone(&left))).collect();
    let mut retry_after = 0;
    for seen in all(jobs, 8).await {
        for (l, retry) in seen {
            retry_after += u64::from(l == "429" && retry);
            run.saw(l);
        }
    }
    let took = start.elapsed();
    let created = run.report.count("200");
    run.fact("created", created);
    run.fact("retry_after", retry_after);
    run.note(format!("{created} created in {:.1} s", took.as_secs_f64()));
    let mut other = Mcp::connect(fresh_ip(), to).await.map_err(setup)?;
    let second = other.initialize().await;
    run.fact(
        "second_address",
        second.as_ref().map_or(0, |a| u64::from(a.status)),
    );
    run.note(format!("another address right after: {}", label(&second)));
    Ok(run.finish(recovery_bound(scale)).await)
}

/// F4: `workers` clients, each from its own address, initialize at once
/// until `attempts` were made, against `max_sessions`; then the sessions
/// expire (idle timeout) and the upstream counts its DELETEs. Full: 2,200
/// attempts by 64 against 2,000, 5 s idle; CI: 64 by 64 against 50, 1 s
/// idle. Facts `created`, `max_sessions`, `upstream_deletes`.
pub async fn f4_concurrent_initializes(
    target: &Target,
    scale: Scale,
) -> Result<Report, AttackError> {
    let (attempts, max, idle, wait) = match scale {
        Scale::Full => (2_200u64, 2_000u64, 5u64, Duration::from_secs(40)),
        Scale::Ci => (64, CI_MAX_SESSIONS, 1, Duration::from_secs(10)),
    };
    let workers = 64;
    let config = Config::new()
        .limit("max_sessions", max)
        .top("session_idle_timeout_secs", idle);
    let mut run = Run::start(
        target,
        "F4",
        "f4-concurrent",
        format!("{workers} addresses at once, {attempts} initializes, max_sessions {max}"),
        &config,
    )
    .await?;
    let to = run.proxy.addr;
    // The probe's session expires before the attack (idle timeout).
    let start = Instant::now();
    while run.proxy.metric("shadowcat_sessions_expired_total").await < Some(1.0)
        && start.elapsed() < Duration::from_secs(idle * 10)
    {
        // Another process's sweeper: nothing to wait on but its counter.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = Arc::new(AtomicU64::new(attempts));
    let barrier = Arc::new(Barrier::new(workers));
    let jobs: Vec<_> = (0..workers)
        .map(|_| {
            let (left, barrier) = (Arc::clone(&left), Arc::clone(&barrier));
            async move {
                let mut seen = Vec::new();
                let mut c = Mcp::connect(fresh_ip(), to).await;
                barrier.wait().await;
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let Ok(conn) = c.as_mut() else {
                        seen.push("connect failed".to_owned());
                        break;
                    };
                    conn.session = None;
                    let r = conn.initialize().await;
                    seen.push(label(&r));
                    if r.is_err() {
                        break;
                    }
                }
                seen
            }
        })
        .collect();
    for seen in all(jobs, workers).await {
        for l in seen {
            run.saw(l);
        }
    }
    let created = run.report.count("200");
    run.fact("created", created);
    run.fact("max_sessions", max);
    // Every session expires; each should be ended upstream.
    let start = Instant::now();
    let deletes = || run.upstream.stats().deletes.load(Ordering::Relaxed);
    while deletes() < created && start.elapsed() < wait {
        // Counting another process's requests: no signal to wait on.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deletes = deletes();
    run.fact("upstream_deletes", deletes);
    run.note(format!(
        "{created} created of max {max}; {deletes} DELETEs upstream {} s after",
        start.elapsed().as_secs()
    ));
    Ok(run.finish(recovery_bound(scale)).await)
}

// ---------------------------------------------------------------- F5

/// F5: 16 streams in flight in one session, their connections dropped;
/// then `tools/list` in the same session every 100 ms until it is not
/// 429 (full: up to 90 s; CI: 3 s). Facts `first_status`, `last_status`,
/// `blocked_ms`.
pub async fn f5_dropped_in_flight(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let bound = match scale {
        Scale::Full => Duration::from_secs(90),
        Scale::Ci => Duration::from_secs(3),
    };
    let mut run = Run::start(
        target,
        "F5",
        "f5-in-flight",
        "16 streams in flight, connections dropped; tools/list in the session".into(),
        &Config::new(),
    )
    .await?;
    let to = run.proxy.addr;
    let from = fresh_ip();
    let mut main = Mcp::connect(from, to).await.map_err(setup)?;
    main.initialize().await.map_err(setup)?;
    let sid = main.session.clone().ok_or_else(|| setup("no session"))?;
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut c = Mcp::connect(from, to).await.map_err(setup)?;
        c.session = Some(sid.clone());
        let resp = c
            .head(c.post(call_body(1, "drip", r#"{"ms":120000}"#)))
            .await;
        match resp {
            Ok(r) => {
                run.saw(format!("stream {}", r.status().as_u16()));
                let mut body = r.into_body();
                let _ = tokio::time::timeout(Duration::from_secs(5), body.frame()).await;
                open.push((c, body));
            }
            Err(e) => run.saw(format!("stream {}", e.label())),
        }
    }
    drop(open);
    let start = Instant::now();
    let mut first = None;
    let mut last = String::new();
    let blocked = loop {
        let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#;
        let r = main.send(main.post(list.to_owned())).await;
        let l = label(&r);
        first.get_or_insert_with(|| l.clone());
        run.saw(format!("tools/list {l}"));
        last.clone_from(&l);
        if l != "429" || start.elapsed() >= bound {
            break start.elapsed();
        }
        if r.is_err() {
            main = Mcp::connect(from, to).await.map_err(setup)?;
            main.session = Some(sid.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = first.unwrap_or_default();
    run.fact("first_status", first.parse().unwrap_or(0));
    run.fact("last_status", last.parse().unwrap_or(0));
    run.fact("blocked_ms", blocked.as_millis() as u64);
    run.note(format!(
        "tools/list first {first}, not 429 after {} ms",
        blocked.as_millis()
    ));
    Ok(run.finish(recovery_bound(scale)).await)
}

// ---------------------------------------------------------------- F6

/// Checks an idle connection without waiting: `open`, `closed` or the
/// status the proxy wrote.
async fn idle_state(tcp: &mut TcpStream) -> String {
    match tokio::time::timeout(Duration::from_millis(20), read_head(tcp)).await {
        Err(_) => "idle open".into(),
        Ok(Ok(status)) => format!("idle {status}"),
        Ok(Err(_)) => "idle closed".into(),
    }
}

/// F6: more idle connections than the process has file descriptors; then
/// `/metrics` and a new client. Full: 1,100 against 1,024 descriptors;
/// CI: 300 against 256 with `max_connections` 100. Facts `metrics_ok`,
/// `legit_status`, `accept_failed_lines`.
pub async fn f6_idle_connections(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let (conns, fds, cap) = match scale {
        Scale::Full => (1_100, 1_024, 900),
        Scale::Ci => (300, 256, CI_MAX_CONNECTIONS),
    };
    let config = Config::new()
        .fd_limit(fds)
        .new_limit("max_connections", cap);
    let mut run = Run::start(
        target,
        "F6",
        "f6-idle",
        format!("{conns} idle connections, {fds} descriptors (max_connections {cap})"),
        &config,
    )
    .await?;
    let to = run.proxy.addr;
    let jobs: Vec<_> = (0..conns)
        .map(|_| async move { connect_from(ATTACKER, to).await })
        .collect();
    let mut idle = Vec::new();
    for r in all(jobs, 64).await {
        match r {
            Ok(t) => idle.push(t),
            Err(e) => run.saw(format!("idle {}", e.label())),
        }
    }
    // Give the proxy a moment to accept (or refuse) them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let metrics = run.proxy.metrics().await;
    let metrics_ok = metrics.is_some();
    run.fact("metrics_ok", u64::from(metrics_ok));
    run.note(format!(
        "/metrics {} after {} ms",
        if metrics_ok { "answered" } else { "no answer" },
        t.elapsed().as_millis()
    ));
    if let Some(open) = metrics
        .as_deref()
        .and_then(|m| procs::metric_sum(m, "shadowcat_connections_open"))
    {
        run.note(format!("{open} connections open"));
    }
    let t = Instant::now();
    // Raw: the proxy may answer (and close) before it reads the request.
    let body = initialize_body("legit");
    let mut req = post_head(to, body.len(), "").into_bytes();
    req.extend_from_slice(body.as_bytes());
    let legit = match connect_from(fresh_ip(), to).await {
        Ok(mut tcp) => raw_exchange(&mut tcp, &req, client::REQUEST_TIMEOUT).await,
        Err(e) => Err(e),
    };
    let l = match &legit {
        Ok(a) => a.status.to_string(),
        Err(e) => e.label(),
    };
    run.fact("legit_status", l.parse().unwrap_or(0));
    run.fact(
        "legit_jsonrpc",
        u64::from(legit.as_ref().is_ok_and(|a| rpc_error(&a.body).is_some())),
    );
    run.note(format!(
        "new client: {l} after {} ms",
        t.elapsed().as_millis()
    ));
    for tcp in &mut idle {
        let s = idle_state(tcp).await;
        run.saw(s);
    }
    drop(idle);
    let accept_failed = run
        .proxy
        .log_text()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count() as u64;
    run.fact("accept_failed_lines", accept_failed);
    run.note(format!("{accept_failed} 'accept failed' log lines"));
    Ok(run.finish(recovery_bound(scale)).await)
}

// ---------------------------------------------------------------- F7

/// F7: an upstream that answers 500 and 404 with HTML, 200 with HTML,
/// cuts a JSON body short, or answers JSON over `max_response_bytes`.
/// Facts per case: `<case>_status`, `<case>_jsonrpc` (a JSON-RPC error
/// body), `<case>_quotes` (it names the upstream status); `body_cut`
/// (the counter).
pub async fn f7_upstream_failures(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let (max, big) = match scale {
        Scale::Full => (16u64 << 20, 20u64 << 20),
        Scale::Ci => (CI_MAX_RESPONSE_BYTES, 2 * CI_MAX_RESPONSE_BYTES),
    };
    let config = match scale {
        Scale::Full => Config::new(),
        Scale::Ci => Config::new().new_limit("max_response_bytes", max),
    };
    let mut run = Run::start(
        target,
        "F7",
        "f7-upstream",
        format!(
            "upstream 500/404/200 HTML, cut JSON, {} MiB JSON",
            big >> 20
        ),
        &config,
    )
    .await?;
    let to = run.proxy.addr;
    let big_args = format!(r#"{{"bytes":{big}}}"#);
    let cases: [(&'static str, &str, &str, Option<&str>); 5] = [
        ("html500", "html500", "{}", Some("500")),
        ("html404", "", "{}", Some("404")),
        ("html200", "html200", "{}", None),
        ("cut", "cut", "{}", None),
        ("bigjson", "bigjson", &big_args, None),
    ];
    for (name, tool, args, quote) in cases {
        let mut c = Mcp::connect(fresh_ip(), to).await.map_err(setup)?;
        let r = if tool.is_empty() {
            // A 404 page in answer to initialize (no session yet).
            c.initialize_as(name).await
        } else {
            c.initialize().await.map_err(setup)?;
            c.call(tool, args).await
        };
        let l = label(&r);
        run.saw(format!("{name} {l}"));
        let status: u64 = match &r {
            Ok(a) => u64::from(a.status),
            Err(Failure::Cut { status, .. }) => u64::from(*status),
            Err(_) => 0,
        };
        let msg = r.as_ref().ok().and_then(|a| a.rpc_error());
        let (status_key, jsonrpc_key, quotes_key) = fact_keys(name);
        run.fact(status_key, status);
        run.fact(jsonrpc_key, u64::from(msg.is_some()));
        if let (Some(q), Some(m)) = (quote, &msg) {
            run.fact(quotes_key, u64::from(m.contains(q)));
        }
        if let Some(m) = msg {
            let short: String = m.chars().take(60).collect();
            run.note(format!("{name}: {short}…"));
        }
    }
    let cut = run
        .proxy
        .metric_with("shadowcat_upstream_errors_total", "body_cut")
        .await
        .unwrap_or(0.0);
    run.fact("body_cut", cut as u64);
    let warns = run
        .proxy
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("\"level\":\"warn\""))
        .count() as u64;
    run.fact("warn_lines", warns);
    run.note(format!("body_cut counter {cut}, {warns} warn lines"));
    Ok(run.finish(recovery_bound(scale)).await)
}

fn fact_keys(case: &str) -> (&'static str, &'static str, &'static str) {
    match case {
        "html500" => ("html500_status", "html500_jsonrpc", "html500_quotes"),
        "html404" => ("html404_status", "html404_jsonrpc", "html404_quotes"),
        "html200" => ("html200_status", "html200_jsonrpc", "html200_quotes"),
        "cut" => ("cut_status", "cut_jsonrpc", "cut_quotes"),
        _ => ("bigjson_status", "bigjson_jsonrpc", "bigjson_quotes"),
    }
}

// ---------------------------------------------------------------- F8

/// An `initialize` whose head is about `head_bytes` long (an `X-Pad`
/// header makes up the rest); sent in one write or `piece` bytes per write.
async fn big_head(to: SocketAddr, head_bytes: usize, piece: Option<usize>) -> String {
    let body = initialize_body("big-head");
    let base = post_head(to, body.len(), "");
    let pad = head_bytes.saturating_sub(base.len() + "X-Pad: \r\n".len());
    let mut req =
        post_head(to, body.len(), &format!("X-Pad: {}\r\n", "a".repeat(pad))).into_bytes();
    req.extend_from_slice(body.as_bytes());
    let mut tcp = match connect_from(ATTACKER, to).await {
        Ok(t) => t,
        Err(e) => return e.label(),
    };
    if let Some(piece) = piece {
        let split = req.len() - body.len();
        for part in req[..split].chunks(piece) {
            if tcp.write_all(part).await.is_err() {
                // Refused part way: read what the proxy said.
                break;
            }
            // Let each piece arrive on its own.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        req.drain(..split);
    }
    match raw_exchange(&mut tcp, &req, client::REQUEST_TIMEOUT).await {
        Ok(a) => a.status.to_string(),
        Err(e) => e.label(),
    }
}

/// F8: a 108 KB request head against the default 64 KiB limit, in one
/// write and in 1 KiB writes, and a 60 KB one (under the limit). Facts
/// `one_write`, `pieces`, `under_limit` (statuses).
pub async fn f8_big_head(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let mut run = Run::start(
        target,
        "F8",
        "f8-head",
        "108 KB head (64 KiB limit) in one write / 1 KiB writes; 60 KB head".into(),
        &Config::new(),
    )
    .await?;
    let to = run.proxy.addr;
    for (name, bytes, piece) in [
        ("one_write", 108_000, None),
        ("pieces", 108_000, Some(1024)),
        ("under_limit", 60_000, None),
    ] {
        let s = big_head(to, bytes, piece).await;
        run.fact(name, s.parse().unwrap_or(0));
        run.saw(format!("{name} {s}"));
    }
    Ok(run.finish(recovery_bound(scale)).await)
}

// ---------------------------------------------------------------- F9

/// `TcpExt: ListenOverflows` from /proc/net/netstat (the whole machine).
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// F9: `conns` connections at once, each one request. Facts `served`
/// (got a response), `stalls` (connects that took ≥ 900 ms: a dropped SYN),
/// `max_connect_ms`.
pub async fn f9_connect_burst(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let conns = 1_200;
    let mut run = Run::start(
        target,
        "F9",
        "f9-connects",
        format!("{conns} connects at once, one request each"),
        &Config::new(),
    )
    .await?;
    let to = run.proxy.addr;
    let overflows = listen_overflows();
    let barrier = Arc::new(Barrier::new(conns));
    let jobs: Vec<_> = (0..conns)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                let t = Instant::now();
                let mut tcp = match connect_from(ATTACKER, to).await {
                    Ok(tcp) => tcp,
                    Err(e) => return (e.label(), t.elapsed()),
                };
                let took = t.elapsed();
                let req =
                    format!("GET /healthz HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
                let l = match raw_exchange(&mut tcp, req.as_bytes(), client::REQUEST_TIMEOUT).await
                {
                    Ok(a) => a.status.to_string(),
                    Err(e) => e.label(),
                };
                (l, took)
            }
        })
        .collect();
    let mut served = 0;
    let mut stalls = 0;
    let mut max = Duration::ZERO;
    for (l, took) in all(jobs, conns).await {
        served += u64::from(l.parse::<u16>().is_ok());
        stalls += u64::from(took >= Duration::from_millis(900));
        max = max.max(took);
        run.saw(l);
    }
    run.fact("served", served);
    run.fact("stalls", stalls);
    run.fact("max_connect_ms", max.as_millis() as u64);
    let mut note = format!(
        "{served} served, {stalls} connects ≥ 0.9 s, slowest {} ms",
        max.as_millis()
    );
    if let (Some(a), Some(b)) = (overflows, listen_overflows()) {
        note.push_str(&format!(", ListenOverflows +{}", b.saturating_sub(a)));
    }
    run.note(note);
    Ok(run.finish(recovery_bound(scale)).await)
}

// ---------------------------------------------------------------- F10

/// F10: a request in flight (the upstream answers after 10 s) when SIGTERM
/// comes and the drain timeout (1 s) ends. Facts `status`, `jsonrpc`,
/// `exit_code`.
pub async fn f10_drain(target: &Target, _scale: Scale) -> Result<Report, AttackError> {
    let config = Config::new().top("drain_timeout_secs", 1);
    let mut run = Run::start(
        target,
        "F10",
        "f10-drain",
        "request in flight at the 1 s drain deadline".into(),
        &config,
    )
    .await?;
    let to = run.proxy.addr;
    let mut c = Mcp::connect(fresh_ip(), to).await.map_err(setup)?;
    c.initialize().await.map_err(setup)?;
    let call = tokio::spawn(async move { c.call("slow", r#"{"ms":10000}"#).await });
    {
        let stats = run.upstream.stats();
        let arrived = stats.slow_notify.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if stats.slow_started.load(Ordering::Relaxed) == 0 {
            tokio::time::timeout(client::REQUEST_TIMEOUT, arrived)
                .await
                .map_err(|_| setup("the slow call never reached the upstream"))?;
        }
    }
    run.report.rss_peak_kib = run.peak_now();
    run.proxy.terminate();
    let r = call
        .await
        .unwrap_or_else(|e| Err(Failure::NoResponse(e.to_string())));
    let l = label(&r);
    run.saw(l.clone());
    run.fact("status", l.parse().unwrap_or(0));
    let msg = r.as_ref().ok().and_then(|a| a.rpc_error());
    run.fact("jsonrpc", u64::from(msg.is_some()));
    if let Some(m) = msg {
        run.note(format!("client got: {m}"));
    }
    let code = run.proxy.wait_exit(Duration::from_secs(15)).await;
    match code {
        Some(c) => {
            run.fact("exit_code", c.map_or(u64::MAX, |c| c as u64));
            run.note(format!("exited with {c:?} after SIGTERM"));
        }
        None => run.note("still running 15 s after SIGTERM"),
    }
    let mut report = run.finish(Duration::ZERO).await;
    report.recovery = Recovery::NotApplicable;
    Ok(report)
}

// ---------------------------------------------------------------- F11

/// F11: sessions, one of them forgotten by the upstream (which the proxy
/// logs), a request with two `Origin` headers (the second bad) and one
/// with a foreign `Host`. Facts `ids_in_log` (full session ids found in
/// the log), `fingerprints_in_log`, `two_origins`, `bad_host`,
/// `localhost_host`, `configured_host` (statuses; `allowed_hosts` names
/// `mcp.internal`).
pub async fn f11_logs_and_headers(target: &Target, scale: Scale) -> Result<Report, AttackError> {
    let mut run = Run::start(
        target,
        "F11",
        "f11-logs",
        "session ids in logs; two Origin headers; foreign Host".into(),
        &Config::new().new_top("allowed_hosts", r#"["mcp.internal"]"#),
    )
    .await?;
    let to = run.proxy.addr;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut c = Mcp::connect(fresh_ip(), to).await.map_err(setup)?;
        c.initialize().await.map_err(setup)?;
        let sid = c.session.clone().ok_or_else(|| setup("no session"))?;
        ids.push(sid.to_str().unwrap_or("").to_owned());
        let tool = if i == 0 { "gone" } else { "echo" };
        let r = c.call(tool, "{}").await;
        run.saw(format!("{tool} {}", label(&r)));
        // The forgotten session, used again.
        if i == 0 {
            let r = c.call("echo", "{}").await;
            run.saw(format!("after gone {}", label(&r)));
        }
    }
    let headers_case = |origins: &'static [&'static str], host: Option<&'static str>| async move {
        let mut c = Mcp::connect(fresh_ip(), to).await?;
        let mut req = c.post(initialize_body("headers"));
        for o in origins {
            req.headers_mut()
                .append(http::header::ORIGIN, HeaderValue::from_static(o));
        }
        if let Some(h) = host {
            req.headers_mut()
                .insert(http::header::HOST, HeaderValue::from_static(h));
        }
        c.send(req).await
    };
    for (name, origins, host) in [
        (
            "two_origins",
            &["http://localhost:3000", "http://evil.example"][..],
            None,
        ),
        ("bad_host", &[][..], Some("evil.example")),
        ("localhost_host", &[][..], Some("localhost:1234")),
        ("configured_host", &[][..], Some("mcp.internal:8080")),
    ] {
        let r = headers_case(origins, host).await;
        let l = label(&r);
        run.fact(name, l.parse().unwrap_or(0));
        run.saw(format!("{name} {l}"));
    }
    let log = run.proxy.log_text();
    let leaked = ids
        .iter()
        .filter(|id| !id.is_empty() && log.contains(id.as_str()))
        .count();
    run.fact("ids_in_log", leaked as u64);
    run.fact(
        "fingerprints_in_log",
        log.matches("session_fp").count() as u64,
    );
    run.note(format!(
        "{leaked} of {} session ids found in the log",
        ids.len()
    ));
    Ok(run.finish(recovery_bound(scale)).await)
}

/// An attack's id and outcome (an error: it could not run).
pub type Outcome = (&'static str, Result<Report, AttackError>);

/// Every attack at `scale`, in issue order (`only`: just these ids); `long`
/// adds the 65 s drip of 1,000 connections at full scale. `done` sees each
/// outcome as it comes.
pub async fn all_attacks(
    target: &Target,
    scale: Scale,
    long: bool,
    only: &[String],
    mut done: impl FnMut(&Outcome),
) -> Vec<Outcome> {
    let wanted = |id: &str| only.is_empty() || only.iter().any(|o| o.eq_ignore_ascii_case(id));
    let mut out = Vec::new();
    let mut keep = |o: Outcome| {
        done(&o);
        out.push(o);
    };
    if wanted("F1") {
        keep(("F1", f1_one_byte_segments(target, scale, 1, 30_001).await));
        if scale == Scale::Full {
            keep(("F1", f1_one_byte_segments(target, scale, 20, 3_000).await));
        }
        keep(("F1", f1_idle_body(target, scale).await));
        if scale == Scale::Ci || long {
            keep(("F1", f1_drip_bodies(target, scale).await));
        }
    }
    if wanted("F2") {
        keep(("F2", f2_dropped_streams(target, scale).await));
        keep(("F2", f2_live_streams(target, scale).await));
    }
    if wanted("F4") {
        keep(("F4", f4_initialize_flood(target, scale).await));
        keep(("F4", f4_concurrent_initializes(target, scale).await));
    }
    if wanted("F5") {
        keep(("F5", f5_dropped_in_flight(target, scale).await));
    }
    if wanted("F6") {
        keep(("F6", f6_idle_connections(target, scale).await));
    }
    if wanted("F7") {
        keep(("F7", f7_upstream_failures(target, scale).await));
    }
    if wanted("F8") {
        keep(("F8", f8_big_head(target, scale).await));
    }
    if wanted("F9") {
        keep(("F9", f9_connect_burst(target, scale).await));
    }
    if wanted("F10") {
        keep(("F10", f10_drain(target, scale).await));
    }
    if wanted("F11") {
        keep(("F11", f11_logs_and_headers(target, scale).await));
    }
    out
}
