//! `--access-log text|json`: one line per request on stdout, written by
//! one thread of its own so the proxy never waits on it. Records queue up
//! to [`ACCESS_LOG_QUEUE`]; past that they are dropped and counted
//! (`shadowcat_access_log_dropped_total`), never waited for.

use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use shadowcat_proxy::{AccessLog, AccessRecord};

use crate::cli::LogFormat;

/// Records waiting for the writer thread, at most.
pub(crate) const ACCESS_LOG_QUEUE: usize = 65_536;

/// Queues records for the writer thread.
#[derive(Debug)]
pub(crate) struct AccessWriter {
    tx: SyncSender<AccessRecord>,
}

impl AccessLog for AccessWriter {
    fn record(&self, record: AccessRecord) {
        if self.tx.try_send(record).is_err() {
            metrics::counter!("shadowcat_access_log_dropped_total").increment(1);
        }
    }
}

/// Starts the writer thread; lines go to `out` (stdout in the binary).
pub(crate) fn start(
    format: LogFormat,
    out: impl Write + Send + 'static,
) -> std::io::Result<Arc<AccessWriter>> {
    let (tx, rx) = sync_channel(ACCESS_LOG_QUEUE);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_all(&rx, format, out))?;
    Ok(Arc::new(AccessWriter { tx }))
}

fn write_all(rx: &Receiver<AccessRecord>, format: LogFormat, out: impl Write) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(r) = next {
            if let Err(e) = writeln!(out, "{}", line(&r, format)) {
                tracing::error!(error = %e, "cannot write the access log; it stops");
                return;
            }
            next = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => break,
            };
        }
        // Nothing more queued: out it goes.
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "cannot write the access log; it stops");
            return;
        }
    }
    let _ = out.flush();
}

/// One record as a line.
pub(crate) fn line(r: &AccessRecord, format: LogFormat) -> String {
    match format {
        LogFormat::Json => {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["time"] = serde_json::Value::String(rfc3339(r.time_ms));
            v.to_string()
        }
        LogFormat::Text => {
            let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
            format!(
                "{} {} {} {} tool={} session={} {} in={} out={} upstream_ms={} total_ms={:.3} events={} resume={}",
                rfc3339(r.time_ms),
                r.client.map_or_else(|| "-".into(), |a| a.to_string()),
                r.http_method,
                opt(&r.mcp_method),
                opt(&r.tool),
                opt(&r.session_fp),
                r.status,
                r.bytes_in,
                r.bytes_out,
                r.upstream_ms
                    .map_or_else(|| "-".into(), |m| format!("{m:.3}")),
                r.total_ms,
                r.events.map_or_else(|| "-".into(), |e| e.to_string()),
                r.resume.unwrap_or("-"),
            )
        }
    }
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            time_ms: 1_796_213_045_123,
            client: Some("127.0.0.1:5000".parse().unwrap()),
            http_method: "POST",
            mcp_method: Some("tools/call".into()),
            tool: Some("echo".into()),
            session_fp: Some("0badf00d".into()),
            status: 200,
            bytes_in: 120,
            bytes_out: 340,
            upstream_ms: Some(1.5),
            total_ms: 2.25,
            events: None,
            resume: None,
        }
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_213_045_123), "2026-12-02T12:04:05.123Z");
    }

    #[test]
    fn lines() {
        let text = line(&record(), LogFormat::Text);
        assert_eq!(
            text,
            "2026-12-02T12:04:05.123Z 127.0.0.1:5000 POST tools/call tool=echo session=0badf00d 200 in=120 out=340 upstream_ms=1.500 total_ms=2.250 events=- resume=-"
        );
        let v: serde_json::Value = serde_json::from_str(&line(&record(), LogFormat::Json)).unwrap();
        assert_eq!(v["tool"], "echo");
        assert_eq!(v["status"], 200);
        assert_eq!(v["time"], "2026-12-02T12:04:05.123Z");
    }

    #[test]
    fn a_full_queue_drops_and_never_blocks() {
        let (tx, rx) = sync_channel(1);
        let w = AccessWriter { tx };
        w.record(record());
        w.record(record()); // full: dropped, returns at once
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }
}
