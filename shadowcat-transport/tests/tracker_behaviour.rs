//! `EventTracker` behaviour: fresh/duplicate, resumption point, seeding,
//! empty and long ids, config limits, memory per stream, and a model-based
//! property test of the dedup window.

use std::collections::VecDeque;

use proptest::prelude::*;
use shadowcat_transport::tracker::{DEFAULT_WINDOW, MAX_WINDOW};
use shadowcat_transport::{EventTracker, Recorded, TrackerConfig, TrackerConfigError};

#[test]
fn fresh_then_duplicate() {
    let mut tracker = EventTracker::new();
    assert_eq!(tracker.last_event_id(), None);
    assert_eq!(tracker.record("17/1"), Recorded::Fresh);
    assert_eq!(tracker.record("17/1"), Recorded::Duplicate);
    assert_eq!(tracker.record("17/2"), Recorded::Fresh);
    assert_eq!(tracker.record("17/1"), Recorded::Duplicate);
    let stats = tracker.stats();
    assert_eq!((stats.fresh, stats.duplicate, stats.empty), (2, 2, 0));
}

#[test]
fn duplicates_never_move_the_resumption_point() {
    let mut tracker = EventTracker::new();
    for id in ["a/1", "a/2", "a/3"] {
        assert_eq!(tracker.record(id), Recorded::Fresh);
    }
    // A replay of older events after a reconnect.
    for id in ["a/1", "a/2"] {
        assert_eq!(tracker.record(id), Recorded::Duplicate);
    }
    assert_eq!(tracker.last_event_id(), Some("a/3"));
}

#[test]
fn the_point_follows_every_fresh_id() {
    let mut tracker = EventTracker::new();
    for i in 0..200 {
        let id = format!("s/{i}");
        assert_eq!(tracker.record(&id), Recorded::Fresh);
        assert_eq!(tracker.last_event_id(), Some(id.as_str()));
    }
}

#[test]
fn resuming_from_seeds_point_and_window() {
    let mut tracker = EventTracker::resuming_from("9/41", TrackerConfig::default());
    assert_eq!(tracker.last_event_id(), Some("9/41"));
    assert_eq!(tracker.record("9/41"), Recorded::Duplicate);
    assert_eq!(tracker.record("9/42"), Recorded::Fresh);
    assert_eq!(tracker.last_event_id(), Some("9/42"));
    assert_eq!(tracker.stats().fresh, 1);
}

#[test]
fn resuming_from_empty_means_no_point() {
    let tracker = EventTracker::resuming_from("", TrackerConfig::default());
    assert_eq!(tracker.last_event_id(), None);
}

#[test]
fn empty_ids_are_delivered_and_change_nothing() {
    let mut tracker = EventTracker::new();
    assert_eq!(tracker.record(""), Recorded::Fresh);
    assert_eq!(tracker.last_event_id(), None);
    assert_eq!(tracker.record("x"), Recorded::Fresh);
    assert_eq!(tracker.record(""), Recorded::Fresh);
    assert_eq!(tracker.record(""), Recorded::Fresh);
    assert_eq!(tracker.last_event_id(), Some("x"));
    let stats = tracker.stats();
    assert_eq!((stats.fresh, stats.duplicate, stats.empty), (1, 0, 3));
}

#[test]
fn long_and_unicode_ids_round_trip() {
    let mut tracker = EventTracker::new();
    let long = "é".repeat(100); // 200 bytes, spills
    assert_eq!(tracker.record(&long), Recorded::Fresh);
    assert_eq!(tracker.last_event_id(), Some(long.as_str()));
    assert_eq!(tracker.record(&long), Recorded::Duplicate);
    // The spilled buffer is counted.
    assert!(tracker.heap_bytes() >= DEFAULT_WINDOW * 8 + long.len());
    // Shorter ids afterwards reuse it.
    let before = tracker.heap_bytes();
    assert_eq!(tracker.record("ü/1"), Recorded::Fresh);
    assert_eq!(tracker.last_event_id(), Some("ü/1"));
    assert_eq!(tracker.heap_bytes(), before);
}

#[test]
fn window_limits_are_typed_errors() {
    assert_eq!(
        TrackerConfig::with_window(0),
        Err(TrackerConfigError::Window(0))
    );
    assert_eq!(
        TrackerConfig::with_window(MAX_WINDOW + 1),
        Err(TrackerConfigError::Window(MAX_WINDOW + 1))
    );
    assert_eq!(
        TrackerConfig::with_window(MAX_WINDOW).unwrap().window(),
        MAX_WINDOW
    );
    assert_eq!(TrackerConfig::default().window(), DEFAULT_WINDOW);
    let tracker = EventTracker::with_config(TrackerConfig::with_window(5).unwrap());
    assert_eq!(tracker.window(), 5);
}

#[test]
fn memory_per_stream_is_at_most_one_kilobyte() {
    let mut tracker = EventTracker::new();
    assert_eq!(tracker.heap_bytes(), DEFAULT_WINDOW * 8);
    for i in 0..1000 {
        tracker.record(&format!("0b5e4c3a-9f1d-4e2b-8a7c-6d5e4f3a2b1c/{i}"));
    }
    // Steady state does not grow it.
    assert_eq!(
        tracker.memory_footprint(),
        size_of::<EventTracker>() + tracker.heap_bytes()
    );
    assert!(
        tracker.memory_footprint() <= 1024,
        "{} bytes per stream",
        tracker.memory_footprint()
    );
    assert_eq!(tracker.heap_bytes(), DEFAULT_WINDOW * 8);
}

#[test]
fn no_collisions_among_many_realistic_ids() {
    // A window as large as allowed, fed with distinct ids: a hash collision
    // would show up as a false duplicate.
    let mut tracker = EventTracker::with_config(TrackerConfig::with_window(MAX_WINDOW).unwrap());
    for stream in 0..20 {
        for seq in 0..5_000 {
            let id = format!("{stream}/{seq}");
            assert_eq!(tracker.record(&id), Recorded::Fresh, "{id}");
        }
    }
    assert_eq!(tracker.stats().duplicate, 0);
}

/// The reference: the last `window` fresh ids, as strings.
#[derive(Debug)]
struct Model {
    window: usize,
    seen: VecDeque<String>,
    last: Option<String>,
}

impl Model {
    fn record(&mut self, id: &str) -> Recorded {
        if id.is_empty() {
            return Recorded::Fresh;
        }
        if self.seen.iter().any(|s| s == id) {
            return Recorded::Duplicate;
        }
        if self.seen.len() == self.window {
            self.seen.pop_front();
        }
        self.seen.push_back(id.to_owned());
        self.last = Some(id.to_owned());
        Recorded::Fresh
    }
}

proptest! {
    #[test]
    fn matches_the_model(
        window in 1usize..10,
        ids in proptest::collection::vec("[a-d]{0,2}", 0..200),
    ) {
        let mut tracker = EventTracker::with_config(TrackerConfig::with_window(window).unwrap());
        let mut model = Model { window, seen: VecDeque::new(), last: None };
        for id in &ids {
            prop_assert_eq!(tracker.record(id), model.record(id), "id {:?}", id);
            prop_assert_eq!(
                tracker.last_event_id().map(str::to_owned),
                model.last.clone()
            );
        }
    }
}
