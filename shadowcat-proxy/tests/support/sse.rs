//! A small SSE client for the resilience tests: reads blocks off a
//! streaming body and tallies `progress` streams (lost, duplicated, out of
//! order, final response).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::WAIT;

/// One SSE block: an event with data, or an id-only block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) id: Option<String>,
    pub(crate) data: Option<String>,
    /// A `retry:` field, in milliseconds.
    pub(crate) retry: Option<u64>,
}

/// Why a stream gave no block.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// No frame within the wait.
    Stalled,
    /// The stream broke (connection reset, truncated body, bad UTF-8).
    Broke(String),
}

/// Reads blocks from a response body.
pub(crate) struct SseClient {
    body: Incoming,
    buf: Vec<u8>,
}

impl SseClient {
    pub(crate) fn new(body: Incoming) -> Self {
        SseClient {
            body,
            buf: Vec::new(),
        }
    }

    /// The next event or id-only block; `Ok(None)` at a clean end, `Err`
    /// when the stream broke. Comments (keep-alives) are skipped.
    pub(crate) async fn next(&mut self) -> Result<Option<Block>, String> {
        self.next_within(WAIT).await.map_err(|e| match e {
            ReadError::Stalled => "no frame in time".to_owned(),
            ReadError::Broke(e) => e,
        })
    }

    /// As [`SseClient::next`], telling a stall (no frame within `wait`)
    /// from a broken stream.
    pub(crate) async fn next_within(&mut self, wait: Duration) -> Result<Option<Block>, ReadError> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(raw).map_err(|e| ReadError::Broke(e.to_string()))?;
                let mut block = Block {
                    id: None,
                    data: None,
                    retry: None,
                };
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        block.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        block.data = Some(v.to_owned());
                    } else if line == "data:" {
                        block.data = Some(String::new());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        block.retry = v.parse().ok();
                    }
                }
                if block.id.is_none() && block.data.is_none() {
                    continue;
                }
                return Ok(Some(block));
            }
            let frame = tokio::time::timeout(wait, self.body.frame())
                .await
                .map_err(|_| ReadError::Stalled)?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(ReadError::Broke(e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        let data: Bytes = data;
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// What a client saw of one `progress` stream, across reconnects.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// The next progress value expected.
    pub(crate) next: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    pub(crate) results: u64,
    pub(crate) errors: Vec<Value>,
    /// Priming events seen (an id and empty data).
    pub(crate) primings: u64,
    /// The id of the last block seen (what a client resumes with).
    pub(crate) last_id: Option<String>,
    /// The longest time from a resume request to its first block.
    pub(crate) worst_resume: Duration,
    /// The last `retry:` seen, in milliseconds.
    pub(crate) retry: Option<u64>,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Tally {
            next: 1,
            ..Tally::default()
        }
    }

    /// Counts one block.
    pub(crate) fn see(&mut self, block: &Block) {
        if let Some(id) = &block.id {
            self.last_id = Some(id.clone());
        }
        if block.retry.is_some() {
            self.retry = block.retry;
        }
        let Some(data) = block.data.as_deref() else {
            return;
        };
        if data.is_empty() {
            // Only a priming event may have empty data, and it has an id.
            assert!(block.id.is_some(), "an empty data event without an id");
            self.primings += 1;
            return;
        }
        let v: Value = serde_json::from_str(data).expect("every data event is JSON");
        if v["method"] == "notifications/progress" {
            let p = v["params"]["progress"].as_u64().expect("progress value");
            self.delivered += 1;
            if p < self.next {
                self.duplicated += 1;
            } else {
                self.lost += p - self.next;
                self.next = p + 1;
            }
        } else if v.get("result").is_some() {
            self.results += 1;
        } else if v.get("error").is_some() {
            self.errors.push(v);
        }
    }

    /// Reads `client` to its end (or `limit` blocks); true at a clean end.
    pub(crate) async fn read(&mut self, client: &mut SseClient, limit: u64) -> bool {
        let mut n = 0;
        while n < limit {
            match client.next().await {
                Ok(Some(b)) => {
                    self.see(&b);
                    n += 1;
                }
                Ok(None) => return true,
                Err(e) => panic!("client stream broke: {e}"),
            }
        }
        false
    }

    /// Records how long a resume took to its first block.
    pub(crate) fn resumed(&mut self, started: Instant) {
        self.worst_resume = self.worst_resume.max(started.elapsed());
    }

    /// Every notification 1..=count exactly once, in order, then one result.
    pub(crate) fn assert_exactly_once(&self, count: u64) {
        assert_eq!(self.lost, 0, "{self:?}");
        assert_eq!(self.duplicated, 0, "{self:?}");
        assert_eq!(self.delivered, count, "{self:?}");
        assert_eq!(self.next, count + 1, "{self:?}");
        assert_eq!(self.results, 1, "one final response: {self:?}");
        assert!(self.errors.is_empty(), "{self:?}");
    }
}

/// A seeded SplitMix64, for reproducible cut points.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `1..=n`.
    pub(crate) fn between_1_and(&mut self, n: u64) -> u64 {
        1 + self.next_u64() % n
    }
}
