//! The per-client limit on session creation
//! ([`crate::Limits::max_session_creates_per_minute`]), so one client's
//! flood of initializes cannot fill `max_sessions` and lock everyone else
//! out.
//!
//! A token bucket per client address, kept as one instant (GCRA: the time
//! at which the bucket is full again): a client may create `per_minute`
//! sessions at once, then one every `60 s / per_minute`. IPv6 clients are
//! counted per /64 prefix (one host usually holds a whole /64).
//!
//! Memory is bounded: addresses live in two tables, this minute's and the
//! last. Every minute the last one is dropped: a client not seen for a
//! minute has a full bucket again, so forgetting it changes nothing.
//! Each table holds at most [`MAX_TRACKED_PER_TABLE`] addresses; when
//! this minute's fills up early, the tables rotate early (counted in
//! `shadowcat_session_create_limiter_rotations_total{reason="full"}`):
//! the addresses forgotten then get a fresh bucket (the limit fails open,
//! never locking out a client it cannot remember).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The client's address, put into each request's extensions by the
/// accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// Addresses one table holds; two tables are kept (about 3 MB in all).
pub(crate) const MAX_TRACKED_PER_TABLE: usize = 32_768;

/// The refill period: a bucket refills whole in this time.
const WINDOW: Duration = Duration::from_secs(60);

/// Whom the limit counts: an IPv4 address, or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    V6(u64),
}

impl Client {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Client::V4(u32::from(a)),
            IpAddr::V6(a) => Client::V6((u128::from(a) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the bucket is full again (the GCRA's theoretical arrival time).
    full_at: Instant,
    /// A refusal of this client was logged since the slot entered the
    /// current table (at most one warning per client per minute).
    logged: bool,
}

#[derive(Debug)]
struct Tables {
    current: HashMap<Client, Slot>,
    previous: HashMap<Client, Slot>,
    rotated: Instant,
}

/// A refused creation: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) retry_after: Duration,
    /// First refusal of this client this minute (log it).
    pub(crate) first: bool,
}

/// The per-client session creation limit.
#[derive(Debug)]
pub(crate) struct CreateLimiter {
    per_minute: u32,
    /// Time one creation costs: `WINDOW / per_minute`.
    cost: Duration,
    /// How far ahead of now `full_at` may be and still admit one more:
    /// `WINDOW - cost` (a burst of `per_minute`).
    slack: Duration,
    max_per_table: usize,
    tables: Mutex<Tables>,
}

impl CreateLimiter {
    /// A limiter with tables of the default size.
    #[cfg(test)]
    fn new(per_minute: u32) -> Option<Self> {
        Self::with_table_size(per_minute, MAX_TRACKED_PER_TABLE)
    }

    /// A limiter admitting `per_minute` creations per client per minute,
    /// tracking at most `max_per_table` addresses per table; `None` when
    /// `per_minute` is 0 (no limit).
    pub(crate) fn with_table_size(per_minute: u32, max_per_table: usize) -> Option<Self> {
        if per_minute == 0 {
            return None;
        }
        let cost = WINDOW / per_minute;
        Some(CreateLimiter {
            per_minute,
            cost,
            slack: WINDOW - cost,
            max_per_table: max_per_table.max(1),
            tables: Mutex::new(Tables {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated: Instant::now(),
            }),
        })
    }

    /// The configured amount per minute.
    pub(crate) fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// One session creation by `ip` at `now`: admitted (and counted), or
    /// refused with the time until one more would be admitted.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Limited> {
        let client = Client::of(ip);
        let mut t = self.tables.lock();
        let since = now.saturating_duration_since(t.rotated);
        if since >= WINDOW {
            // Everything in `previous` was last used over a minute ago:
            // full buckets. After two minutes, so is `current`.
            let current = std::mem::take(&mut t.current);
            t.previous = if since >= 2 * WINDOW {
                HashMap::new()
            } else {
                current
            };
            t.rotated = now;
            metrics::counter!("shadowcat_session_create_limiter_rotations_total", "reason" => "minute")
                .increment(1);
        }
        let mut slot = match t.current.get(&client) {
            Some(s) => *s,
            None => {
                let moved = t
                    .previous
                    .remove(&client)
                    .map(|s| Slot { logged: false, ..s });
                if t.current.len() >= self.max_per_table {
                    t.previous = std::mem::take(&mut t.current);
                    t.rotated = now;
                    metrics::counter!("shadowcat_session_create_limiter_rotations_total", "reason" => "full")
                        .increment(1);
                    tracing::debug!(
                        max = self.max_per_table,
                        "session creation limiter: a minute's table filled up; rotated early"
                    );
                }
                moved.unwrap_or(Slot {
                    full_at: now,
                    logged: false,
                })
            }
        };
        let full_at = slot.full_at.max(now);
        let ahead = full_at - now;
        let result = if ahead > self.slack {
            let first = !slot.logged;
            slot.logged = true;
            Err(Limited {
                retry_after: ahead - self.slack,
                first,
            })
        } else {
            slot.full_at = full_at + self.cost;
            Ok(())
        };
        t.current.insert(client, slot);
        result
    }

    /// Addresses tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        let t = self.tables.lock();
        t.current.len() + t.previous.len()
    }
}

/// Whole seconds to wait, rounded up, at least 1 (for `Retry-After`).
pub(crate) fn retry_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let l = CreateLimiter::new(6).unwrap();
        let t0 = Instant::now();
        for i in 0..6 {
            assert_eq!(l.check(v4(1), t0), Ok(()), "burst {i}");
        }
        let refused = l.check(v4(1), t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        assert!(refused.first);
        assert!(!l.check(v4(1), t0).unwrap_err().first, "logged once");
        // Another address is not affected.
        assert_eq!(l.check(v4(2), t0), Ok(()));
        // One more after 10 s, not two.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(l.check(v4(1), t1), Ok(()));
        assert!(l.check(v4(1), t1).is_err());
        // A full minute idle: the whole burst again.
        let t2 = t1 + WINDOW;
        for _ in 0..6 {
            assert_eq!(l.check(v4(1), t2), Ok(()));
        }
        assert!(l.check(v4(1), t2).is_err());
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(10_001)), 11);
        assert!(CreateLimiter::new(0).is_none(), "0 means no limit");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = CreateLimiter::new(1).unwrap();
        let t = Instant::now();
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(l.check(IpAddr::V6(a), t), Ok(()));
        assert!(l.check(IpAddr::V6(b), t).is_err(), "same /64");
        assert_eq!(l.check(IpAddr::V6(c), t), Ok(()), "another /64");
        assert_eq!(l.check(v4(7), t), Ok(()));
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 7).to_ipv6_mapped());
        assert!(l.check(mapped, t).is_err(), "a v4-mapped address is v4");
    }

    #[test]
    fn memory_stays_bounded() {
        let l = CreateLimiter::with_table_size(2, 100).unwrap();
        let t0 = Instant::now();
        for i in 0..1_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.check(ip, t0).is_ok());
            assert!(l.tracked() <= 200, "bounded: {}", l.tracked());
        }
    }

    #[test]
    fn the_minute_rotation_forgets_only_full_buckets() {
        let l = CreateLimiter::new(2).unwrap();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(l.check(v4(1), t0).is_ok());
        // Just before the first rotation: two more (one refilled), then none.
        assert!(l.check(v4(1), t0 + s(59)).is_ok());
        assert!(l.check(v4(1), t0 + s(59)).is_ok());
        assert!(l.check(v4(1), t0 + s(59)).is_err());
        // Another client's request rotates the tables; v4(1) is still
        // limited: its bucket was not full.
        assert!(l.check(v4(9), t0 + s(61)).is_ok());
        assert!(l.check(v4(1), t0 + s(61)).is_err(), "remembered");
        // Two minutes of silence forget everything: all buckets are full.
        let later = t0 + s(61 + 120);
        assert!(l.check(v4(1), later).is_ok());
        assert_eq!(l.tracked(), 1);
    }
}
