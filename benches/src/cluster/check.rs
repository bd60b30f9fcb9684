//! What the client saw, stream by stream, and the pass conditions of the
//! two modes.

use std::collections::BTreeMap;

/// With or without an upstream event store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The upstream replays after `Last-Event-ID`: a new owner resumes it.
    EventStore,
    /// The upstream answers a resume with 405: an owner's death ends the
    /// stream with a named JSON-RPC error.
    NoEventStore,
}

impl Mode {
    /// As on the command line and in the summary.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::EventStore => "event-store",
            Mode::NoEventStore => "no-event-store",
        }
    }
}

/// How one stream (one `tools/call`) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// With the call's result.
    Result,
    /// With a JSON-RPC error naming the owner's loss (its message names
    /// the owner and the replay log).
    NamedError(String),
    /// With any other JSON-RPC error.
    OtherError(String),
    /// The client could not get back onto it (refused resumes, no id).
    Unresumable(String),
}

/// True when a JSON-RPC error message names the owner's loss.
pub(crate) fn names_owner_loss(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("owner") && m.contains("replay log")
}

/// One stream's progress notifications as the client received them.
#[derive(Debug, Clone)]
pub(crate) struct StreamTally {
    /// Notifications asked for.
    pub(crate) requested: u64,
    seen: Vec<bool>,
    /// Highest index received.
    pub(crate) max: u64,
    /// Distinct indexes received.
    pub(crate) distinct: u64,
    /// Indexes received again.
    pub(crate) duplicated: u64,
    /// Indexes received after a higher one, for the first time.
    pub(crate) out_of_order: u64,
    /// Indexes outside 1..=requested.
    pub(crate) out_of_range: u64,
    /// How it ended; `None` while it runs (or when the deadline came).
    pub(crate) end: Option<End>,
}

impl StreamTally {
    pub(crate) fn new(requested: u64) -> Self {
        StreamTally {
            requested,
            seen: vec![false; usize::try_from(requested).unwrap_or(0) + 1],
            max: 0,
            distinct: 0,
            duplicated: 0,
            out_of_order: 0,
            out_of_range: 0,
            end: None,
        }
    }

    /// Records index `p`; true when it is new.
    pub(crate) fn progress(&mut self, p: u64) -> bool {
        let Some(slot) = usize::try_from(p)
            .ok()
            .filter(|&i| i >= 1)
            .and_then(|i| self.seen.get_mut(i))
        else {
            self.out_of_range += 1;
            return false;
        };
        if *slot {
            self.duplicated += 1;
            return false;
        }
        *slot = true;
        self.distinct += 1;
        if p < self.max {
            self.out_of_order += 1;
        }
        self.max = self.max.max(p);
        true
    }

    /// Indexes below the highest received that never came: a gap.
    pub(crate) fn gaps(&self) -> u64 {
        self.max - self.distinct.min(self.max)
    }
}

/// Everything the client saw in one mode.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) streams: Vec<StreamTally>,
    /// Messages that were neither a progress notification, the result nor
    /// an error (a few kept).
    pub(crate) unexpected: Vec<String>,
    pub(crate) unexpected_count: u64,
    /// Client cuts as planned (after an event, or right after a resume's
    /// head).
    pub(crate) cuts: u64,
    /// Connections that broke or ended without the client cutting them.
    pub(crate) drops: u64,
    /// Reads that saw nothing for the idle bound (then resumed).
    pub(crate) stalls: u64,
    /// GETs with `Last-Event-ID` sent.
    pub(crate) resumes: u64,
    /// Resumes answered with a stream, by the instance that served them.
    pub(crate) resumes_by_instance: BTreeMap<String, u64>,
    /// Resumes refused, by status (0: no answer), with the last message.
    pub(crate) refusals: BTreeMap<u16, (u64, String)>,
    /// Milliseconds from each resume's GET to its first event.
    pub(crate) resume_ms: Vec<u64>,
}

impl Tally {
    /// Distinct notifications received over every stream.
    pub(crate) fn delivered(&self) -> u64 {
        self.streams.iter().map(|s| s.distinct).sum()
    }

    pub(crate) fn duplicated(&self) -> u64 {
        self.streams
            .iter()
            .map(|s| s.duplicated + s.out_of_range)
            .sum()
    }

    pub(crate) fn out_of_order(&self) -> u64 {
        self.streams.iter().map(|s| s.out_of_order).sum()
    }

    /// Gaps inside streams, plus (with an event store, where nothing may
    /// end a stream early) what each stream's end cut off.
    pub(crate) fn lost(&self, mode: Mode) -> u64 {
        self.streams
            .iter()
            .map(|s| match mode {
                Mode::EventStore => s.requested - s.distinct,
                Mode::NoEventStore => s.gaps(),
            })
            .sum()
    }

    pub(crate) fn named_errors(&self) -> u64 {
        self.count_ends(|e| matches!(e, Some(End::NamedError(_))))
    }

    fn count_ends(&self, f: impl Fn(Option<&End>) -> bool) -> u64 {
        self.streams.iter().filter(|s| f(s.end.as_ref())).count() as u64
    }

    /// Why the mode failed; empty when it passed. `events` is the number
    /// of notifications the run asked for.
    pub(crate) fn failures(&self, mode: Mode, events: u64) -> Vec<String> {
        let mut out = Vec::new();
        let lost = self.lost(mode);
        if lost > 0 {
            out.push(format!("{lost} lost"));
        }
        let dup = self.duplicated();
        if dup > 0 {
            out.push(format!("{dup} duplicated"));
        }
        let ooo = self.out_of_order();
        if ooo > 0 {
            out.push(format!("{ooo} out of order"));
        }
        if self.unexpected_count > 0 {
            out.push(format!(
                "{} unexpected messages, e.g. {:?}",
                self.unexpected_count,
                self.unexpected.first()
            ));
        }
        for (i, s) in self.streams.iter().enumerate() {
            match (&s.end, mode) {
                (Some(End::Result), _) => {
                    if s.distinct < s.requested && mode == Mode::NoEventStore {
                        out.push(format!(
                            "stream {i}: result after {} of {} notifications",
                            s.distinct, s.requested
                        ));
                    }
                }
                (Some(End::NamedError(m)), Mode::EventStore) => {
                    out.push(format!(
                        "stream {i}: ended with an error although the upstream keeps events: {m}"
                    ));
                }
                (Some(End::NamedError(_)), Mode::NoEventStore) => {}
                (Some(End::OtherError(m)), _) => {
                    out.push(format!("stream {i}: ended with an unnamed error: {m}"));
                }
                (Some(End::Unresumable(m)), _) => {
                    out.push(format!("stream {i}: could not be resumed: {m}"));
                }
                (None, _) => out.push(format!(
                    "stream {i}: unfinished after {} of {} notifications",
                    s.distinct, s.requested
                )),
            }
        }
        match self.streams.last() {
            Some(s) if s.end == Some(End::Result) => {}
            _ => out.push("the last call's result never arrived".into()),
        }
        if mode == Mode::EventStore && self.streams.len() > 1 {
            out.push(format!(
                "{} tools/calls needed instead of one",
                self.streams.len()
            ));
        }
        let delivered = self.delivered();
        if delivered != events {
            out.push(format!("{delivered} of {events} notifications received"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(requested: u64, indexes: &[u64], end: Option<End>) -> StreamTally {
        let mut s = StreamTally::new(requested);
        for &p in indexes {
            s.progress(p);
        }
        s.end = end;
        s
    }

    fn tally(streams: Vec<StreamTally>) -> Tally {
        Tally {
            streams,
            ..Tally::default()
        }
    }

    fn all(n: u64) -> Vec<u64> {
        (1..=n).collect()
    }

    #[test]
    fn counts_duplicates_gaps_and_disorder() {
        let s = stream(10, &[1, 2, 2, 4, 3, 5, 11, 0], None);
        assert_eq!(s.distinct, 5);
        assert_eq!(s.duplicated, 1);
        assert_eq!(s.out_of_order, 1);
        assert_eq!(s.out_of_range, 2);
        assert_eq!(s.max, 5);
        assert_eq!(s.gaps(), 0);
        let g = stream(10, &[1, 2, 5], None);
        assert_eq!(g.gaps(), 2);
    }

    #[test]
    fn event_store_passes_only_on_one_exact_stream() {
        let ok = tally(vec![stream(5, &all(5), Some(End::Result))]);
        assert!(ok.failures(Mode::EventStore, 5).is_empty());

        let dup = tally(vec![stream(5, &[1, 2, 2, 3, 4, 5], Some(End::Result))]);
        assert_eq!(dup.failures(Mode::EventStore, 5), vec!["1 duplicated"]);

        let gap = tally(vec![stream(5, &[1, 2, 4, 5], Some(End::Result))]);
        assert!(gap.failures(Mode::EventStore, 5)[0].contains("1 lost"));

        // An owner's death may not end a stream when the upstream replays.
        let err = tally(vec![
            stream(5, &[1, 2], Some(End::NamedError("owner lost".into()))),
            stream(3, &all(3), Some(End::Result)),
        ]);
        let f = err.failures(Mode::EventStore, 5);
        assert!(f.iter().any(|m| m == "3 lost"), "{f:?}");
        assert!(f.iter().any(|m| m.contains("keeps events")), "{f:?}");

        let unfinished = tally(vec![stream(5, &all(4), None)]);
        let f = unfinished.failures(Mode::EventStore, 5);
        assert!(f.iter().any(|m| m.contains("never arrived")), "{f:?}");
    }

    #[test]
    fn no_event_store_allows_only_named_ends_without_gaps() {
        let named = "stream ended: its owner instance is gone and the replay log cannot resume an upstream without an event store";
        assert!(names_owner_loss(named));
        assert!(!names_owner_loss("upstream refused the resume (405)"));

        let ok = tally(vec![
            stream(5, &[1, 2], Some(End::NamedError(named.into()))),
            stream(3, &all(3), Some(End::Result)),
        ]);
        assert!(ok.failures(Mode::NoEventStore, 5).is_empty());
        assert_eq!(ok.named_errors(), 1);

        let gap = tally(vec![
            stream(5, &[1, 3], Some(End::NamedError(named.into()))),
            stream(3, &all(3), Some(End::Result)),
        ]);
        let f = gap.failures(Mode::NoEventStore, 5);
        assert!(f.iter().any(|m| m == "1 lost"), "{f:?}");

        let other = tally(vec![
            stream(5, &[1, 2], Some(End::OtherError("boom".into()))),
            stream(3, &all(3), Some(End::Result)),
        ]);
        assert!(
            other.failures(Mode::NoEventStore, 5)[0].contains("unnamed error"),
            "{:?}",
            other.failures(Mode::NoEventStore, 5)
        );

        let silent = tally(vec![
            stream(5, &[1, 2], Some(End::Unresumable("410".into()))),
            stream(3, &all(3), Some(End::Result)),
        ]);
        assert!(silent.failures(Mode::NoEventStore, 5)[0].contains("could not be resumed"));

        let short = tally(vec![
            stream(5, &[1, 2], Some(End::NamedError(named.into()))),
            stream(3, &all(2), Some(End::Result)),
        ]);
        let f = short.failures(Mode::NoEventStore, 5);
        assert!(f.iter().any(|m| m.contains("4 of 5")), "{f:?}");
    }
}
