//! The reconnect policy: capped exponential backoff with full jitter,
//! honouring the server's `retry:`, bounded attempts.
//!
//! The policy is pure: it reads no clock and sleeps nowhere. The caller
//! classifies what went wrong as a [`Failure`], asks
//! [`ReconnectPolicy::on_failure`] for a [`Decision`], and sleeps the
//! returned delay itself. With [`ReconnectPolicy::with_seed`] every decision
//! is deterministic.
//!
//! # The delay rule
//!
//! For the `n`-th retry since the stream was last healthy (`n` from 1):
//!
//! ```text
//! ceiling = min(cap, base * 2^(n-1))
//! jitter  = uniform random in [0, ceiling]           (full jitter)
//! floor   = min(max_server_retry, max(retry:, Retry-After))
//! delay   = max(floor, jitter)
//! ```
//!
//! `retry:` is the last value the server sent on the stream
//! ([`ReconnectPolicy::set_server_retry`]); `Retry-After` comes with an HTTP
//! status failure. Either is a floor: the server's wish is honoured, and a
//! failing server still gets backed off from. Both are bounded by
//! `max_server_retry` so a hostile or buggy value cannot park a stream for
//! hours.
//!
//! # Retry or give up
//!
//! | failure | decision |
//! |---|---|
//! | connect error, stream ended early, 5xx, 408, 429 | retry, until `max_attempts` retries since the last healthy stream, then give up |
//! | 404 | [`Decision::SessionExpired`]: the caller decides (re-initialise) |
//! | any other status | give up: retrying will not change the answer |
//!
//! # Healthy
//!
//! A stream is healthy once it delivers at least one event after
//! (re)connecting; a priming event counts. The caller then calls
//! [`ReconnectPolicy::on_healthy`], which resets the attempt counter. So a
//! server that closes after every event (SSE polling) is polled forever at
//! its `retry:` pace, while one that never gets an event through is given
//! up on after `max_attempts`.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Default first-retry ceiling.
pub const DEFAULT_BASE: Duration = Duration::from_millis(200);
/// Default cap on the jittered backoff.
pub const DEFAULT_CAP: Duration = Duration::from_secs(30);
/// Default number of retries between healthy streams.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Default bound on a server-requested delay (`retry:` or `Retry-After`).
pub const DEFAULT_MAX_SERVER_RETRY: Duration = Duration::from_secs(300);

/// Settings for a [`ReconnectPolicy`]. Every combination is meaningful:
/// `max_attempts == 0` never retries; `base > cap` is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// Ceiling of the first retry's delay; doubles per retry.
    pub base: Duration,
    /// Largest jittered backoff.
    pub cap: Duration,
    /// Retries allowed between healthy streams before giving up.
    pub max_attempts: u32,
    /// Largest server-requested delay honoured (`retry:`, `Retry-After`).
    pub max_server_retry: Duration,
}

impl Default for ReconnectConfig {
    /// [`DEFAULT_BASE`], [`DEFAULT_CAP`], [`DEFAULT_MAX_ATTEMPTS`],
    /// [`DEFAULT_MAX_SERVER_RETRY`].
    fn default() -> Self {
        Self {
            base: DEFAULT_BASE,
            cap: DEFAULT_CAP,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_server_retry: DEFAULT_MAX_SERVER_RETRY,
        }
    }
}

/// Why a stream needs reconnecting, as the caller classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect (refused, reset, timeout, TLS, ...).
    Connect,
    /// The stream ended before its final response, or a GET stream dropped.
    EndedEarly,
    /// The server answered a reconnect with a non-success HTTP status.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` header, if the response had a valid one.
        retry_after: Option<Duration>,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect => f.write_str("connect error"),
            Self::EndedEarly => f.write_str("stream ended early"),
            Self::Status { status, .. } => write!(f, "HTTP status {status}"),
        }
    }
}

/// Why the policy will not retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GiveUp {
    /// `max_attempts` retries since the last healthy stream all failed.
    #[error("gave up after {attempts} reconnect attempts; last failure: {last}")]
    AttemptsExhausted {
        /// Retries made since the stream was last healthy.
        attempts: u32,
        /// The failure that ended it.
        last: Failure,
    },
    /// The server answered with a status that retrying will not change.
    #[error("upstream answered HTTP {status}; not retrying")]
    Rejected {
        /// The HTTP status code.
        status: u16,
    },
}

/// What to do about a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Sleep `delay`, then reconnect (with `Last-Event-ID`).
    Retry {
        /// How long to wait first.
        delay: Duration,
        /// Which retry this is since the last healthy stream, from 1.
        attempt: u32,
    },
    /// The server answered 404: the session is unknown or expired. Not
    /// retried; the caller decides (MCP: re-initialise without a session).
    SessionExpired,
    /// Stop reconnecting.
    GiveUp(GiveUp),
}

/// A small seeded PRNG (SplitMix64): plenty for jitter, deterministic for
/// tests. Not for anything secret.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]` (multiply-shift; bias below `max / 2^64`).
    fn up_to(&mut self, max: u64) -> u64 {
        let span = u128::from(max) + 1;
        ((u128::from(self.next_u64()) * span) >> 64) as u64
    }
}

/// Reconnect decisions for one stream. See the [module docs](self) for the
/// exact rules.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    config: ReconnectConfig,
    attempts: u32,
    server_retry: Option<Duration>,
    rng: SplitMix64,
}

impl ReconnectPolicy {
    /// A policy seeded from the process's random hasher keys, so streams
    /// that drop together do not reconnect together.
    pub fn new(config: ReconnectConfig) -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            config,
            attempts: 0,
            server_retry: None,
            rng: SplitMix64(seed),
        }
    }

    /// The same policy with a fixed seed: equal seeds give equal delays.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = SplitMix64(seed);
        self
    }

    /// The settings.
    pub fn config(&self) -> &ReconnectConfig {
        &self.config
    }

    /// Retries granted since the stream was last healthy.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The server's last `retry:` value, if it sent one.
    pub fn server_retry(&self) -> Option<Duration> {
        self.server_retry
    }

    /// The server sent `retry: <ms>`; it is a floor for every later delay
    /// (bounded by `max_server_retry`) until [`reset`](Self::reset).
    pub fn set_server_retry(&mut self, retry: Duration) {
        self.server_retry = Some(retry);
    }

    /// The stream delivered an event: forget past failures.
    pub fn on_healthy(&mut self) {
        self.attempts = 0;
    }

    /// Start over for a new stream: forget failures and the server's
    /// `retry:`.
    pub fn reset(&mut self) {
        self.attempts = 0;
        self.server_retry = None;
    }

    /// Decides what to do about `failure`; a retry counts as an attempt.
    pub fn on_failure(&mut self, failure: Failure) -> Decision {
        let retry_after = match failure {
            Failure::Connect | Failure::EndedEarly => None,
            Failure::Status {
                status,
                retry_after,
            } => match status {
                404 => {
                    tracing::debug!(%failure, "reconnect: session expired");
                    return Decision::SessionExpired;
                }
                408 | 429 | 500..=599 => retry_after,
                _ => {
                    tracing::debug!(%failure, "reconnect: rejected, not retrying");
                    return Decision::GiveUp(GiveUp::Rejected { status });
                }
            },
        };
        if self.attempts >= self.config.max_attempts {
            tracing::debug!(%failure, attempts = self.attempts, "reconnect: attempts exhausted");
            return Decision::GiveUp(GiveUp::AttemptsExhausted {
                attempts: self.attempts,
                last: failure,
            });
        }
        self.attempts += 1;
        let delay = self.delay(self.attempts, retry_after);
        tracing::debug!(%failure, attempt = self.attempts, ?delay, "reconnect: retrying");
        Decision::Retry {
            delay,
            attempt: self.attempts,
        }
    }

    /// The delay for retry number `attempt` (from 1); see the module docs.
    fn delay(&mut self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(64);
        let ceiling = self
            .config
            .base
            .as_nanos()
            .saturating_mul(1u128 << exp)
            .min(self.config.cap.as_nanos())
            .min(u128::from(u64::MAX)) as u64;
        let jitter = Duration::from_nanos(self.rng.up_to(ceiling));
        let floor = self
            .server_retry
            .max(retry_after)
            .unwrap_or(Duration::ZERO)
            .min(self.config.max_server_retry);
        jitter.max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_covers_both_ends_and_stays_in_range() {
        let mut rng = SplitMix64(1);
        let (mut saw_zero, mut saw_max) = (false, false);
        for _ in 0..10_000 {
            let v = rng.up_to(3);
            assert!(v <= 3);
            saw_zero |= v == 0;
            saw_max |= v == 3;
        }
        assert!(saw_zero && saw_max);
        assert_eq!(SplitMix64(9).up_to(0), 0);
        let mut full = SplitMix64(9);
        assert_ne!(full.up_to(u64::MAX), full.up_to(u64::MAX));
    }

    #[test]
    fn splitmix_matches_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (reference values).
        let mut rng = SplitMix64(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }
}
