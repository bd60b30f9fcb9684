//! The measured runs: SSE streams at a rate (or as fast as they go),
//! tools/call round trips answered with JSON or SSE, and idle streams held
//! open. Each run gives one [`Sample`] for one target; the measured window
//! starts after a warm-up, and the proxy's CPU, RSS and counters, the
//! upstream's accepted connections and the socket table are read at both
//! ends of it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{Answer, ClientError, Conn, EventScanner};
use crate::procs::{self, Nginx, PortSockets, Proc, Shadowcat, metric_sum};
use crate::upstream::{self, instant_at, now_ns};

/// Connections set up at once (initialize, open a stream).
const SETUP_CONCURRENCY: usize = 128;
/// Longest a set-up phase may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Unpaced streams record the latency of one event in this many.
const UNPACED_SAMPLE_EVERY: u64 = 16;

/// What a run is measured through.
#[derive(Debug)]
pub(crate) enum Via {
    /// Straight to the upstream.
    Direct,
    /// Through Shadowcat.
    Shadowcat(Shadowcat),
    /// Through nginx.
    Nginx(Nginx),
}

/// One target of a scenario.
#[derive(Debug)]
pub(crate) struct Target {
    /// Its name in reports (`direct`, `shadowcat`, `nginx`, …).
    pub(crate) name: String,
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    /// The process in between, if any.
    pub(crate) via: Via,
    /// The upstream behind it.
    pub(crate) up: upstream::Handle,
}

/// One run's figures by name (absent: not applicable or not available).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// The target's name.
    pub(crate) target: String,
    /// The figures.
    pub(crate) values: BTreeMap<&'static str, f64>,
}

impl Sample {
    fn new(target: &str) -> Self {
        Sample {
            target: target.to_owned(),
            values: BTreeMap::new(),
        }
    }

    /// Sets a figure when it is there and finite.
    pub(crate) fn set(&mut self, key: &'static str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.values.insert(key, v);
        }
    }

    /// A figure, if present.
    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

/// The proxy's state at one end of the window.
#[derive(Debug, Default)]
struct Snap {
    cpu: Option<f64>,
    threads: Option<HashMap<u32, u64>>,
    harness: HashMap<u32, u64>,
    metrics: Option<String>,
    redis: Option<procs::RedisSnap>,
    accepted: u64,
    sockets: PortSockets,
}

impl Target {
    fn proc(&self) -> Option<&Proc> {
        match &self.via {
            Via::Direct => None,
            Via::Shadowcat(s) => Some(&s.proc),
            Via::Nginx(n) => Some(&n.proc),
        }
    }

    async fn snap(&self) -> Snap {
        let (metrics, redis) = match &self.via {
            Via::Shadowcat(s) => match s.redis {
                Some(w) => tokio::join!(s.metrics(), w.snap()),
                None => (s.metrics().await, None),
            },
            _ => (None, None),
        };
        let mut harness = HashMap::new();
        procs::thread_cpu_ns(std::process::id(), &mut harness);
        Snap {
            cpu: self.proc().and_then(Proc::cpu_seconds),
            threads: self.proc().map(Proc::thread_cpu),
            harness,
            metrics,
            redis,
            accepted: self.up.accepted(),
            sockets: procs::port_sockets(
                self.up.port,
                self.proc().map_or(&[std::process::id()], Proc::pids),
            ),
        }
    }

    /// Fills the proxy figures over a window from `a` to `b`.
    fn window_figures(&self, s: &mut Sample, a: &Snap, b: &Snap, seconds: f64) {
        let cpu = a
            .threads
            .as_ref()
            .zip(b.threads.as_ref())
            .map(|(a, b)| procs::cpu_between(a, b));
        s.set("proxy_cpu_s", cpu);
        s.set("proxy_cpu_ticks_s", a.cpu.zip(b.cpu).map(|(a, b)| b - a));
        s.set("proxy_cpu_percent", cpu.map(|c| 100.0 * c / seconds));
        if let Some(events) = s.get("events").filter(|e| *e > 0.0) {
            s.set("proxy_cpu_us_per_event", cpu.map(|c| c * 1e6 / events));
        }
        if let Some(requests) = s.get("requests").filter(|r| *r > 0.0) {
            s.set("proxy_cpu_us_per_request", cpu.map(|c| c * 1e6 / requests));
        }
        s.set(
            "harness_cpu_s",
            Some(procs::cpu_between(&a.harness, &b.harness)),
        );
        if let Some(p) = self.proc() {
            s.set("rss_kib", p.rss_kib().map(|v| v as f64));
            s.set("threads", p.threads().map(|v| v as f64));
        }
        // New connections to the upstream: accepted there (exact, any
        // target), and the socket table as a cross-check.
        let accepts = b.accepted.saturating_sub(a.accepted) as f64;
        s.set("upstream_accepts", Some(accepts));
        s.set("upstream_open", Some(b.sockets.established as f64));
        s.set("upstream_time_wait", Some(b.sockets.time_wait as f64));
        s.set(
            "upstream_time_wait_added",
            Some(b.sockets.time_wait as f64 - a.sockets.time_wait as f64),
        );
        let requests = s.get("requests").filter(|r| *r > 0.0);
        s.set(
            "upstream_accepts_per_request",
            requests.map(|r| accepts / r),
        );
        if let (Some(ma), Some(mb)) = (&a.metrics, &b.metrics) {
            let delta = |name| Some(metric_sum(mb, name)? - metric_sum(ma, name).unwrap_or(0.0));
            let connects = delta("shadowcat_upstream_connects_total");
            s.set("upstream_connects", connects);
            s.set(
                "upstream_connects_per_request",
                connects.zip(requests).map(|(c, r)| c / r),
            );
            let batches = delta("shadowcat_writer_batches");
            let written = delta("shadowcat_writer_written");
            // Redis counts every command it sends; redb one transaction per batch.
            let trips = delta("shadowcat_store_round_trips_total").or(batches);
            s.set("store_batches", batches);
            s.set("store_keys_written", written);
            s.set("store_round_trips", trips);
            s.set("store_write_errors", delta("shadowcat_writer_write_errors"));
            if let Some(events) = s.get("events").filter(|e| *e > 0.0) {
                s.set("store_round_trips_per_event", trips.map(|t| t / events));
                s.set("store_keys_per_event", written.map(|w| w / events));
            }
            s.set("tasks_alive", metric_sum(mb, "tokio_num_alive_tasks"));
            if matches!(&self.via, Via::Shadowcat(sc) if sc.redis.is_some()) {
                crate::cluster::window_figures(s, (a.redis.as_ref(), b.redis.as_ref()), (ma, mb));
            }
        }
    }
}

/// The `q` quantile (nearest rank) of sorted `v`.
fn quantile(v: &[u64], q: f64) -> Option<u64> {
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1)) - 1;
    v.get(i).copied()
}

fn percentiles(s: &mut Sample, mut lat_ns: Vec<u64>) {
    lat_ns.sort_unstable();
    let at = |q| quantile(&lat_ns, q).map(|ns| ns as f64 / 1e3);
    s.set("latency_p50_us", at(0.50));
    s.set("latency_p99_us", at(0.99));
    s.set("latency_p999_us", at(0.999));
    s.set("latency_max_us", at(1.0));
}

/// Resets the proxy's peak RSS before a run; `peak_rss` reads it after.
fn reset_peak(t: &Target, s: &mut Sample) {
    if let Some(p) = t.proc() {
        s.set(
            "rss_peak_reset",
            Some(if p.reset_peak() { 1.0 } else { 0.0 }),
        );
    }
}

fn peak_rss(t: &Target, s: &mut Sample) {
    s.set(
        "rss_peak_kib",
        t.proc().and_then(Proc::peak_rss_kib).map(|v| v as f64),
    );
}

/// Initializes `n` sessions on `addr`, `SETUP_CONCURRENCY` at a time.
async fn sessions(addr: SocketAddr, n: usize) -> (Vec<Conn>, u64) {
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let gate = Arc::clone(&gate);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let mut conn = Conn::connect(addr)
                .await
                .map_err(|e| tracing::warn!(%addr, error = %e, "connect failed"))
                .ok()?;
            match conn.initialize().await {
                Ok(()) => Some(conn),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "initialize failed");
                    None
                }
            }
        });
    }
    let mut conns = Vec::with_capacity(n);
    let mut errors = 0;
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        match r {
            Ok(Some(c)) => conns.push(c),
            _ => errors += 1,
        }
    }
    errors += set.len() as u64;
    set.abort_all();
    (conns, errors)
}

/// A stream load: `sessions` sessions, each one SSE stream of `rate`
/// events/s (0: unpaced).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct StreamLoad {
    /// Concurrent sessions, one stream each.
    pub(crate) sessions: usize,
    /// Events per second per stream; 0 means as fast as possible.
    pub(crate) rate: u64,
    /// Events per upstream write when unpaced.
    pub(crate) batch: usize,
    /// Bytes per event (0: about 150).
    pub(crate) size: usize,
    /// Warm-up before the window, ms.
    pub(crate) warm_ms: u64,
    /// The measured window, ms.
    pub(crate) window_ms: u64,
}

#[derive(Default)]
struct StreamOut {
    events: u64,
    latencies: Vec<u64>,
    errors: u64,
    conn: Option<Conn>,
}

/// Ends every session (DELETE), a few at a time and bounded in time, so
/// that what a run leaves in the proxy is what a client that is done
/// leaves; the failures.
async fn end_sessions(conns: Vec<Conn>) -> u64 {
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    for mut conn in conns {
        let gate = Arc::clone(&gate);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.ok();
            conn.end()
                .await
                .map_err(|e| tracing::warn!(error = %e, "DELETE failed"))
                .is_err()
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut failed = 0;
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, set.join_next()).await {
        failed += u64::from(r.unwrap_or(true));
    }
    failed + set.len() as u64
}

/// One stream run against `t`.
pub(crate) async fn stream_once(t: &Target, load: StreamLoad) -> Sample {
    let mut s = Sample::new(&t.name);
    reset_peak(t, &mut s);
    s.set(
        "rss_start_kib",
        t.proc().and_then(Proc::rss_kib).map(|v| v as f64),
    );
    let (conns, mut errors) = sessions(t.addr, load.sessions).await;
    let t0 = now_ns() + load.warm_ms * 1_000_000;
    let t1 = t0 + load.window_ms * 1_000_000;
    let ms = load.warm_ms + load.window_ms + 250;
    let every = if load.rate == 0 {
        UNPACED_SAMPLE_EVERY
    } else {
        1
    };
    let expect = load.rate * load.window_ms / 1000 + 16;
    let mut set = JoinSet::new();
    for mut conn in conns {
        set.spawn(async move {
            let mut out = StreamOut {
                latencies: Vec::with_capacity(if load.rate == 0 {
                    4096
                } else {
                    expect as usize
                }),
                ..StreamOut::default()
            };
            let resp = match conn.stream(load.rate, load.batch, load.size, ms).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "stream request failed");
                    out.errors += 1;
                    out.conn = Some(conn);
                    return out;
                }
            };
            let mut body = resp.into_body();
            let mut scanner = EventScanner::default();
            let mut seen = 0u64;
            let deadline = instant_at(t1) + Duration::from_secs(30);
            loop {
                let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
                    Ok(Some(Ok(f))) => f,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        tracing::warn!(error = %e, "stream broke");
                        out.errors += 1;
                        break;
                    }
                    Err(_) => {
                        tracing::warn!("stream did not end in time");
                        out.errors += 1;
                        break;
                    }
                };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                let now = now_ns();
                if !(t0..t1).contains(&now) {
                    scanner.feed(data, |_| {});
                    continue;
                }
                scanner.feed(data, |t| {
                    out.events += 1;
                    seen += 1;
                    if seen.is_multiple_of(every) {
                        out.latencies.push(now.saturating_sub(t));
                    }
                });
            }
            out.conn = Some(conn);
            out
        });
    }
    tokio::time::sleep_until(instant_at(t0).into()).await;
    let a = t.snap().await;
    tokio::time::sleep_until(instant_at(t1).into()).await;
    let b = t.snap().await;
    let seconds = (t1 - t0) as f64 / 1e9;
    let mut events = 0;
    let mut lat = Vec::new();
    let mut conns = Vec::with_capacity(load.sessions);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(o) => {
                events += o.events;
                errors += o.errors;
                lat.extend_from_slice(&o.latencies);
                conns.extend(o.conn);
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream task failed");
                errors += 1;
            }
        }
    }
    s.set("seconds", Some(seconds));
    s.set("sessions", Some(load.sessions as f64));
    s.set("events", Some(events as f64));
    s.set("events_per_s", Some(events as f64 / seconds));
    s.set("errors", Some(errors as f64));
    percentiles(&mut s, lat);
    t.window_figures(&mut s, &a, &b, seconds);
    peak_rss(t, &mut s);
    s.set("delete_errors", Some(end_sessions(conns).await as f64));
    s
}

/// A request/response load: `clients` sessions, each sending `tools/call`
/// one after another.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct RequestLoad {
    /// Concurrent clients, one session and keep-alive connection each.
    pub(crate) clients: usize,
    /// Bytes of text each `tools/call echo` carries (and gets back).
    pub(crate) payload: usize,
    /// The upstream answers with SSE (else `application/json`).
    pub(crate) sse: bool,
    /// Warm-up before the window, ms.
    pub(crate) warm_ms: u64,
    /// The measured window, ms.
    pub(crate) window_ms: u64,
}

/// Most round trips one client makes in a run.
const MAX_REQUESTS_PER_CLIENT: u64 = 10_000_000;

/// `n` bytes of JSON-safe text.
pub(crate) fn payload(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|i| char::from(ALPHABET[i % ALPHABET.len()]))
        .collect()
}

/// One request/response run against `t`.
pub(crate) async fn requests_once(t: &Target, load: RequestLoad) -> Sample {
    let mut s = Sample::new(&t.name);
    reset_peak(t, &mut s);
    s.set(
        "rss_start_kib",
        t.proc().and_then(Proc::rss_kib).map(|v| v as f64),
    );
    let (conns, mut errors) = sessions(t.addr, load.clients).await;
    let t0 = now_ns() + load.warm_ms * 1_000_000;
    let t1 = t0 + load.window_ms * 1_000_000;
    let text: Arc<str> = payload(load.payload).into();
    let mut set = JoinSet::new();
    for mut conn in conns {
        let text = Arc::clone(&text);
        set.spawn(async move {
            let mut n = 0u64;
            let mut sse = 0u64;
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            for id in 1..=MAX_REQUESTS_PER_CLIENT {
                let start = now_ns();
                if start >= t1 {
                    break;
                }
                let answer = match conn.echo(id, &text, load.sse).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "tools/call failed");
                        errors += 1;
                        break;
                    }
                };
                let end = now_ns();
                if (t0..t1).contains(&end) {
                    n += 1;
                    sse += u64::from(answer == Answer::Sse);
                    lat.push(end - start);
                }
            }
            // The connection is dropped after the window's end is read.
            (n, sse, lat, errors, conn)
        });
    }
    tokio::time::sleep_until(instant_at(t0).into()).await;
    let a = t.snap().await;
    tokio::time::sleep_until(instant_at(t1).into()).await;
    let b = t.snap().await;
    let seconds = (t1 - t0) as f64 / 1e9;
    let mut requests = 0;
    let mut sse = 0;
    let mut lat = Vec::new();
    let mut conns = Vec::with_capacity(load.clients);
    while let Some(r) = set.join_next().await {
        match r {
            Ok((n, answered_sse, l, e, conn)) => {
                conns.push(conn);
                requests += n;
                sse += answered_sse;
                errors += e;
                lat.extend_from_slice(&l);
            }
            Err(e) => {
                tracing::warn!(error = %e, "client task failed");
                errors += 1;
            }
        }
    }
    s.set("seconds", Some(seconds));
    s.set("clients", Some(load.clients as f64));
    s.set("requests", Some(requests as f64));
    s.set("requests_per_s", Some(requests as f64 / seconds));
    if requests > 0 {
        s.set(
            "answers_sse_percent",
            Some(100.0 * sse as f64 / requests as f64),
        );
    }
    s.set("errors", Some(errors as f64));
    percentiles(&mut s, lat);
    t.window_figures(&mut s, &a, &b, seconds);
    peak_rss(t, &mut s);
    s.set("delete_errors", Some(end_sessions(conns).await as f64));
    s
}

/// An idle-stream load.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct IdleLoad {
    /// Streams, one session and connection each.
    pub(crate) streams: usize,
    /// The upstream writes `: open` at once on each GET stream.
    pub(crate) open_comment: bool,
    /// How long each stream waits for its first body byte.
    pub(crate) first_byte_wait_ms: u64,
}

/// What the idle streams saw.
#[derive(Debug, Default)]
struct IdleCounts {
    opened: AtomicU64,
    failed: AtomicU64,
    /// Streams whose first body byte came, or that gave up waiting.
    settled: AtomicU64,
    no_first_byte: AtomicU64,
    closed_early: AtomicU64,
}

/// Opens `load.streams` idle GET streams (one session each) through `t`,
/// holds them, reads RSS and the time from each GET to its first body
/// byte, then closes them. The upstream's `: open` switch must be set to
/// `load.open_comment` by the caller.
pub(crate) async fn idle_once(t: &Target, load: IdleLoad, hold: Duration) -> Sample {
    let base = t.proc().and_then(Proc::rss_kib);
    let streams = load.streams;
    let first_byte_wait = Duration::from_millis(load.first_byte_wait_ms);
    let counts = Arc::new(IdleCounts::default());
    let progress = Arc::new(Notify::new());
    let (release_tx, release) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let addr = t.addr;
    let mut set = JoinSet::new();
    for _ in 0..streams {
        let (counts, progress) = (counts.clone(), progress.clone());
        let (gate, mut release) = (gate.clone(), release.clone());
        set.spawn(async move {
            let open = async {
                let _permit = gate.acquire_owned().await.ok();
                let mut conn = Conn::connect(addr).await?;
                conn.initialize().await?;
                let (body, sent) = conn.get_stream().await?;
                Ok::<_, ClientError>((conn, body, sent))
            };
            let (conn, mut body, sent) = match open.await {
                Ok(held) => {
                    counts.opened.fetch_add(1, Ordering::Relaxed);
                    progress.notify_one();
                    held
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "idle stream failed to open");
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    progress.notify_one();
                    return None;
                }
            };
            // The first body byte: a comment, an event, a keep-alive.
            let first = tokio::time::timeout_at((sent + first_byte_wait).into(), async {
                loop {
                    match body.frame().await {
                        Some(Ok(f)) if f.data_ref().is_some_and(|d| !d.is_empty()) => {
                            return true;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return false,
                    }
                }
            })
            .await;
            let mut ended = false;
            let mut first_byte_ns = None;
            match first {
                Ok(true) => {
                    first_byte_ns = u64::try_from(sent.elapsed().as_nanos()).ok();
                }
                Ok(false) => ended = true,
                Err(_) => {
                    counts.no_first_byte.fetch_add(1, Ordering::Relaxed);
                }
            }
            counts.settled.fetch_add(1, Ordering::Relaxed);
            progress.notify_one();
            // Held until released; a stream that ends before is counted.
            let hold_until = tokio::time::Instant::now() + hold;
            while !ended {
                tokio::select! {
                    _ = release.wait_for(|r| *r) => break,
                    f = body.frame() => match f {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => ended = true,
                    },
                    () = tokio::time::sleep_until(hold_until) => break,
                }
            }
            if ended {
                counts.closed_early.fetch_add(1, Ordering::Relaxed);
            }
            drop((body, conn));
            first_byte_ns
        });
    }
    drop(release);
    let wait_for = async |done: &dyn Fn() -> bool, deadline: tokio::time::Instant| loop {
        let notified = progress.notified();
        if done() || tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    };
    let opening = Instant::now();
    let all_in = || {
        counts.opened.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed)
            >= streams as u64
    };
    wait_for(&all_in, tokio::time::Instant::now() + SETUP_TIMEOUT).await;
    let open_s = opening.elapsed().as_secs_f64();
    let open = counts.opened.load(Ordering::Relaxed);
    // Let allocator and kernel settle before reading memory and idle CPU.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = t.snap().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = t.snap().await;
    // Every open stream has its first byte or has waited its bound.
    let settled = || counts.settled.load(Ordering::Relaxed) >= open;
    wait_for(
        &settled,
        tokio::time::Instant::now() + first_byte_wait + Duration::from_secs(1),
    )
    .await;
    let mut s = Sample::new(&t.name);
    let failed = counts.failed.load(Ordering::Relaxed);
    s.set("streams_asked", Some(streams as f64));
    s.set("streams_open", Some(open as f64));
    s.set("open_seconds", Some(open_s));
    s.set(
        "errors",
        Some(failed as f64 + (streams as u64).saturating_sub(open + failed) as f64),
    );
    t.window_figures(&mut s, &a, &b, 2.0);
    if let (Some(base), Some(now)) = (base, s.get("rss_kib")) {
        s.set("rss_base_kib", Some(base as f64));
        if open > 0 {
            s.set(
                "rss_per_stream_kib",
                Some((now - base as f64) / open as f64),
            );
        }
    }
    let _ = release_tx.send(true);
    let close_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut first = Vec::with_capacity(streams);
    while let Ok(Some(r)) = tokio::time::timeout_at(close_deadline, set.join_next()).await {
        first.extend(r.ok().flatten());
    }
    set.abort_all();
    first.sort_unstable();
    let ms = |q| quantile(&first, q).map(|ns| ns as f64 / 1e6);
    s.set("first_byte_streams", Some(first.len() as f64));
    s.set(
        "first_byte_within_10ms",
        Some(first.iter().filter(|&&ns| ns <= 10_000_000).count() as f64),
    );
    s.set(
        "first_byte_missing",
        Some(counts.no_first_byte.load(Ordering::Relaxed) as f64),
    );
    s.set("first_byte_wait_ms", Some(load.first_byte_wait_ms as f64));
    s.set("first_byte_p50_ms", ms(0.50));
    s.set("first_byte_p99_ms", ms(0.99));
    s.set("first_byte_max_ms", ms(1.0));
    s.set(
        "closed_early",
        Some(counts.closed_early.load(Ordering::Relaxed) as f64),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), Some(500));
        assert_eq!(quantile(&v, 0.999), Some(999));
        assert_eq!(quantile(&v, 1.0), Some(1000));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7], 0.01), Some(7));
    }

    #[test]
    fn payload_has_the_asked_length() {
        let p = payload(64);
        assert_eq!(p.len(), 64);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
