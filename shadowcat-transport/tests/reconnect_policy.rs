//! The reconnect policy: full-jitter bounds, cap, attempts, `retry:` and
//! `Retry-After`, status classification, reset after a healthy stream and
//! determinism under a seed.

use std::time::Duration;

use shadowcat_transport::{Decision, Failure, GiveUp, ReconnectConfig, ReconnectPolicy};

const MS: Duration = Duration::from_millis(1);

fn config() -> ReconnectConfig {
    ReconnectConfig {
        base: 100 * MS,
        cap: 2_000 * MS,
        max_attempts: 8,
        max_server_retry: 10_000 * MS,
    }
}

fn policy(seed: u64) -> ReconnectPolicy {
    ReconnectPolicy::new(config()).with_seed(seed)
}

fn status(status: u16) -> Failure {
    Failure::Status {
        status,
        retry_after: None,
    }
}

/// The delay of a decision that must be a retry.
fn delay(decision: Decision) -> Duration {
    match decision {
        Decision::Retry { delay, .. } => delay,
        other => panic!("expected a retry, got {other:?}"),
    }
}

/// The ceiling of retry `n` (from 1) under `config()`.
fn ceiling(n: u32) -> Duration {
    (100 * MS * 2u32.pow(n - 1)).min(2_000 * MS)
}

#[test]
fn delays_stay_within_the_full_jitter_bounds_and_the_cap() {
    for seed in 0..200 {
        let mut p = policy(seed);
        for n in 1..=8 {
            let decision = p.on_failure(Failure::Connect);
            assert!(matches!(decision, Decision::Retry { attempt, .. } if attempt == n));
            let d = delay(decision);
            assert!(d <= ceiling(n), "seed {seed} retry {n}: {d:?}");
            assert!(d <= config().cap);
        }
    }
}

#[test]
fn jitter_spreads_over_the_whole_range() {
    // Retry 5 has ceiling 1600 ms; full jitter averages half of it.
    let samples = 20_000u32;
    let mut sum = Duration::ZERO;
    let (mut low, mut high) = (0, 0);
    for seed in 0..u64::from(samples) {
        let mut p = policy(seed);
        for _ in 0..4 {
            let _ = p.on_failure(Failure::EndedEarly);
        }
        let d = delay(p.on_failure(Failure::EndedEarly));
        sum += d;
        low += u32::from(d < 160 * MS);
        high += u32::from(d > 1_440 * MS);
    }
    let mean = sum / samples;
    assert!(
        (760 * MS..=840 * MS).contains(&mean),
        "mean {mean:?} is not about 800 ms"
    );
    // Each tenth of the range gets about a tenth of the samples.
    for tail in [low, high] {
        assert!((1_600..=2_400).contains(&tail), "tail count {tail}");
    }
}

#[test]
fn huge_attempt_counts_do_not_overflow() {
    let mut p = ReconnectPolicy::new(ReconnectConfig {
        base: Duration::from_secs(u64::MAX / 2),
        cap: Duration::MAX,
        max_attempts: 200,
        max_server_retry: Duration::ZERO,
    })
    .with_seed(3);
    for _ in 0..200 {
        let d = delay(p.on_failure(Failure::Connect));
        assert!(d <= Duration::from_nanos(u64::MAX));
    }
}

#[test]
fn gives_up_after_max_attempts_until_healthy() {
    let mut p = policy(7);
    for _ in 0..8 {
        let _ = delay(p.on_failure(Failure::Connect));
    }
    assert_eq!(p.attempts(), 8);
    for _ in 0..3 {
        assert_eq!(
            p.on_failure(Failure::EndedEarly),
            Decision::GiveUp(GiveUp::AttemptsExhausted {
                attempts: 8,
                last: Failure::EndedEarly
            })
        );
    }
    p.on_healthy();
    assert_eq!(p.attempts(), 0);
    let decision = p.on_failure(Failure::Connect);
    assert!(matches!(decision, Decision::Retry { attempt: 1, .. }));
    assert!(delay(decision) <= ceiling(1));
}

#[test]
fn zero_max_attempts_never_retries() {
    let mut p = ReconnectPolicy::new(ReconnectConfig {
        max_attempts: 0,
        ..config()
    });
    assert!(matches!(
        p.on_failure(Failure::Connect),
        Decision::GiveUp(GiveUp::AttemptsExhausted { attempts: 0, .. })
    ));
}

#[test]
fn healthy_resets_the_backoff_growth() {
    let mut p = policy(11);
    for _ in 0..6 {
        let _ = p.on_failure(Failure::EndedEarly);
    }
    p.on_healthy();
    for seed_round in 0..50 {
        let d = delay(p.on_failure(Failure::EndedEarly));
        assert!(d <= ceiling(1), "round {seed_round}: {d:?}");
        p.on_healthy();
    }
}

#[test]
fn server_retry_is_a_floor() {
    let mut p = policy(5);
    p.set_server_retry(1_500 * MS);
    assert_eq!(p.server_retry(), Some(1_500 * MS));
    // Early retries: the jitter is below the floor, so the floor wins.
    for n in 1..=4 {
        assert_eq!(delay(p.on_failure(Failure::EndedEarly)), 1_500 * MS, "{n}");
    }
    // Later retries: never below the floor, never above the larger bound.
    for _ in 5..=8 {
        let d = delay(p.on_failure(Failure::EndedEarly));
        assert!((1_500 * MS..=2_000 * MS).contains(&d), "{d:?}");
    }
}

#[test]
fn server_retry_survives_healthy_but_not_reset() {
    let mut p = policy(5);
    p.set_server_retry(700 * MS);
    p.on_healthy();
    assert_eq!(delay(p.on_failure(Failure::Connect)), 700 * MS);
    p.reset();
    assert_eq!(p.server_retry(), None);
    assert_eq!(p.attempts(), 0);
    assert!(delay(p.on_failure(Failure::Connect)) <= ceiling(1));
}

#[test]
fn server_requested_delays_are_bounded() {
    let mut p = policy(5);
    p.set_server_retry(Duration::from_secs(3_600));
    assert_eq!(delay(p.on_failure(Failure::Connect)), 10_000 * MS);
    let mut p = policy(5);
    let failure = Failure::Status {
        status: 503,
        retry_after: Some(Duration::from_secs(86_400)),
    };
    assert_eq!(delay(p.on_failure(failure)), 10_000 * MS);
}

#[test]
fn retry_after_is_honoured_for_retryable_statuses() {
    for code in [408, 429, 500, 502, 503, 504] {
        let mut p = policy(9);
        let failure = Failure::Status {
            status: code,
            retry_after: Some(3_000 * MS),
        };
        assert_eq!(delay(p.on_failure(failure)), 3_000 * MS, "{code}");
        // Without the header: plain backoff.
        let d = delay(p.on_failure(status(code)));
        assert!(d <= ceiling(2), "{code}: {d:?}");
    }
}

#[test]
fn retry_after_and_server_retry_take_the_larger() {
    let mut p = policy(1);
    p.set_server_retry(2_500 * MS);
    let failure = Failure::Status {
        status: 429,
        retry_after: Some(400 * MS),
    };
    assert_eq!(delay(p.on_failure(failure)), 2_500 * MS);
}

#[test]
fn not_found_is_session_expired_and_costs_no_attempt() {
    let mut p = policy(1);
    assert_eq!(p.on_failure(status(404)), Decision::SessionExpired);
    assert_eq!(p.attempts(), 0);
}

#[test]
fn other_statuses_are_not_retried() {
    for code in [200, 301, 400, 401, 403, 405, 406, 409, 410, 415, 422, 600] {
        let mut p = policy(1);
        assert_eq!(
            p.on_failure(status(code)),
            Decision::GiveUp(GiveUp::Rejected { status: code }),
            "{code}"
        );
        assert_eq!(p.attempts(), 0);
    }
}

#[test]
fn same_seed_same_delays_different_seeds_differ() {
    let run = |seed| {
        let mut p = policy(seed);
        (0..8)
            .map(|_| delay(p.on_failure(Failure::Connect)))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
    // Unseeded policies differ from each other too (random seeds).
    let unseeded = |_| {
        let mut p = ReconnectPolicy::new(config());
        (0..8)
            .map(|_| delay(p.on_failure(Failure::Connect)))
            .collect::<Vec<_>>()
    };
    assert_ne!(unseeded(0), unseeded(1));
}

#[test]
fn give_up_reasons_read_well() {
    let exhausted = GiveUp::AttemptsExhausted {
        attempts: 10,
        last: Failure::Connect,
    };
    assert_eq!(
        exhausted.to_string(),
        "gave up after 10 reconnect attempts; last failure: connect error"
    );
    assert_eq!(
        GiveUp::Rejected { status: 403 }.to_string(),
        "upstream answered HTTP 403; not retrying"
    );
}

#[test]
fn defaults_are_sane() {
    let c = ReconnectConfig::default();
    assert!(c.base > Duration::ZERO && c.base <= c.cap);
    assert!(c.max_attempts > 0);
    assert!(c.max_server_retry >= c.cap);
}
