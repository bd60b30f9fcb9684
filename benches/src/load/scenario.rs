//! The measured runs: SSE streams at a rate (or as fast as they go),
//! tools/call round trips, and idle streams held open. Each run gives one
//! [`Sample`] for one target; the measured window starts after a warm-up,
//! and the proxy's CPU, RSS and counters are read at both ends of it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{ClientError, Conn, EventScanner};
use crate::procs::{self, Nginx, Proc, Shadowcat, metric_sum};
use crate::upstream::{instant_at, now_ns};

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

    fn set(&mut self, key: &'static str, v: Option<f64>) {
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
        let metrics = match &self.via {
            Via::Shadowcat(s) => s.metrics().await,
            _ => None,
        };
        let mut harness = HashMap::new();
        procs::thread_cpu_ns(std::process::id(), &mut harness);
        Snap {
            cpu: self.proc().and_then(Proc::cpu_seconds),
            threads: self.proc().map(Proc::thread_cpu),
            harness,
            metrics,
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
        if let (Some(ma), Some(mb)) = (&a.metrics, &b.metrics) {
            let delta = |name| Some(metric_sum(mb, name)? - metric_sum(ma, name).unwrap_or(0.0));
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
        }
    }
}

fn percentiles(s: &mut Sample, mut lat_ns: Vec<u64>) {
    if lat_ns.is_empty() {
        return;
    }
    lat_ns.sort_unstable();
    let at = |q: f64| {
        let i = ((lat_ns.len() as f64 * q).ceil() as usize).clamp(1, lat_ns.len()) - 1;
        lat_ns[i] as f64 / 1e3
    };
    s.set("latency_p50_us", Some(at(0.50)));
    s.set("latency_p99_us", Some(at(0.99)));
    s.set("latency_p999_us", Some(at(0.999)));
    s.set("latency_max_us", Some(at(1.0)));
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
}

/// One stream run against `t`.
pub(crate) async fn stream_once(t: &Target, load: StreamLoad) -> Sample {
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
            let resp = match conn.stream(load.rate, load.batch, ms).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "stream request failed");
                    out.errors += 1;
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
    while let Some(r) = set.join_next().await {
        match r {
            Ok(o) => {
                events += o.events;
                errors += o.errors;
                lat.extend_from_slice(&o.latencies);
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream task failed");
                errors += 1;
            }
        }
    }
    let mut s = Sample::new(&t.name);
    s.set("seconds", Some(seconds));
    s.set("sessions", Some(load.sessions as f64));
    s.set("events", Some(events as f64));
    s.set("events_per_s", Some(events as f64 / seconds));
    s.set("errors", Some(errors as f64));
    percentiles(&mut s, lat);
    t.window_figures(&mut s, &a, &b, seconds);
    s
}

/// A request/response load: `clients` sessions, each sending `tools/call`
/// one after another.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct RequestLoad {
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Warm-up before the window, ms.
    pub(crate) warm_ms: u64,
    /// The measured window, ms.
    pub(crate) window_ms: u64,
}

/// Most round trips one client makes in a run.
const MAX_REQUESTS_PER_CLIENT: u64 = 10_000_000;

/// One request/response run against `t`.
pub(crate) async fn requests_once(t: &Target, load: RequestLoad) -> Sample {
    let (conns, mut errors) = sessions(t.addr, load.clients).await;
    let t0 = now_ns() + load.warm_ms * 1_000_000;
    let t1 = t0 + load.window_ms * 1_000_000;
    let mut set = JoinSet::new();
    for mut conn in conns {
        set.spawn(async move {
            let mut n = 0u64;
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            for id in 1..=MAX_REQUESTS_PER_CLIENT {
                let start = now_ns();
                if start >= t1 {
                    break;
                }
                if let Err(e) = conn.echo(id).await {
                    tracing::warn!(error = %e, "tools/call failed");
                    errors += 1;
                    break;
                }
                let end = now_ns();
                if (t0..t1).contains(&end) {
                    n += 1;
                    lat.push(end - start);
                }
            }
            (n, lat, errors)
        });
    }
    tokio::time::sleep_until(instant_at(t0).into()).await;
    let a = t.snap().await;
    tokio::time::sleep_until(instant_at(t1).into()).await;
    let b = t.snap().await;
    let seconds = (t1 - t0) as f64 / 1e9;
    let mut requests = 0;
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((n, l, e)) => {
                requests += n;
                errors += e;
                lat.extend_from_slice(&l);
            }
            Err(e) => {
                tracing::warn!(error = %e, "client task failed");
                errors += 1;
            }
        }
    }
    let mut s = Sample::new(&t.name);
    s.set("seconds", Some(seconds));
    s.set("clients", Some(load.clients as f64));
    s.set("requests", Some(requests as f64));
    s.set("requests_per_s", Some(requests as f64 / seconds));
    s.set("errors", Some(errors as f64));
    percentiles(&mut s, lat);
    t.window_figures(&mut s, &a, &b, seconds);
    s
}

/// Opens `streams` idle GET streams (one session each) through `t`, holds
/// them, reads RSS, then closes them.
pub(crate) async fn idle_once(t: &Target, streams: usize, hold: Duration) -> Sample {
    let base = t.proc().and_then(Proc::rss_kib);
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let (release_tx, release) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let addr = t.addr;
    let mut set = JoinSet::new();
    for _ in 0..streams {
        let (opened, failed, progress) = (opened.clone(), failed.clone(), progress.clone());
        let (gate, mut release) = (gate.clone(), release.clone());
        set.spawn(async move {
            let open = async {
                let _permit = gate.acquire_owned().await.ok();
                let mut conn = Conn::connect(addr).await?;
                conn.initialize().await?;
                let body = conn.get_stream().await?;
                Ok::<_, ClientError>((conn, body))
            };
            let held = match open.await {
                Ok(held) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    held
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "idle stream failed to open");
                    failed.fetch_add(1, Ordering::Relaxed);
                    progress.notify_one();
                    return;
                }
            };
            progress.notify_one();
            let _ = tokio::time::timeout(hold, release.wait_for(|r| *r)).await;
            drop(held);
        });
    }
    drop(release);
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        let notified = progress.notified();
        let done = opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        if done >= streams as u64 || tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let open = opened.load(Ordering::Relaxed);
    // Let allocator and kernel settle before reading memory and idle CPU.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = t.snap().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = t.snap().await;
    let mut s = Sample::new(&t.name);
    s.set("streams_asked", Some(streams as f64));
    s.set("streams_open", Some(open as f64));
    s.set(
        "errors",
        Some(
            failed.load(Ordering::Relaxed) as f64
                + (streams as u64 - open - failed.load(Ordering::Relaxed)) as f64,
        ),
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
    while let Ok(Some(_)) = tokio::time::timeout_at(close_deadline, set.join_next()).await {}
    set.abort_all();
    s
}
