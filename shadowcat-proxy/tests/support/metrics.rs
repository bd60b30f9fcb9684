//! A counting metrics recorder for tests: each counter is kept by its name
//! (all labels summed) and by `name{label=value,…}`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use parking_lot::Mutex;

static COUNTS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();

/// Installs the recorder (once per test binary); returns the counts.
pub(crate) fn counts() -> &'static Mutex<HashMap<String, u64>> {
    COUNTS.get_or_init(|| {
        let _ = metrics::set_global_recorder(Counting);
        Mutex::new(HashMap::new())
    })
}

/// The count of `name`, all labels summed.
pub(crate) fn count(name: &str) -> u64 {
    counts().lock().get(name).copied().unwrap_or(0)
}

/// The count of `name{labels}`, e.g. `labels` = `kind=body_empty`.
pub(crate) fn count_labeled(name: &str, labels: &str) -> u64 {
    count(&format!("{name}{{{labels}}}"))
}

#[derive(Debug)]
struct Counting;

/// The keys one counter adds to.
#[derive(Debug)]
struct Named(Vec<String>);

impl CounterFn for Named {
    fn increment(&self, value: u64) {
        let mut counts = counts().lock();
        for k in &self.0 {
            *counts.entry(k.clone()).or_default() += value;
        }
    }

    fn absolute(&self, value: u64) {
        let mut counts = counts().lock();
        for k in &self.0 {
            counts.insert(k.clone(), value);
        }
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut keys = vec![key.name().to_owned()];
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if !labels.is_empty() {
            keys.push(format!("{}{{{}}}", key.name(), labels.join(",")));
        }
        Counter::from_arc(Arc::new(Named(keys)))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
