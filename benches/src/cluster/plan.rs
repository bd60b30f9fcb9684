//! The seeded plan of one run: where the client cuts, where an owner is
//! killed and where Redis restarts, as positions in the notifications the
//! client has received.

use std::collections::BTreeSet;

/// A small seeded generator (SplitMix64): the same seed, the same plan.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` when the range is empty).
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// What happens at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Action {
    /// `kill -9` the stream's owner, restart it.
    KillOwner,
    /// Stop and start redis-server.
    RestartRedis,
}

/// One run's plan.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The client closes its connection after receiving the notification
    /// that brings its total to each of these.
    pub(crate) cuts: BTreeSet<u64>,
    /// Of those, the ones whose next resume is cut again right after its
    /// response head (before any event).
    pub(crate) head_cuts: BTreeSet<u64>,
    /// Chaos actions, by position, in order.
    pub(crate) actions: Vec<(u64, Action)>,
}

/// Where the chaos actions go, as fractions of the run: while the
/// upstream (paced faster than the client) is still being read.
const CHAOS_FROM: f64 = 0.05;
const CHAOS_TO: f64 = 0.6;

impl Plan {
    /// `min_cuts` to a quarter more cuts over `events`, `kills` owner
    /// kills and one Redis restart in the chaos window.
    pub(crate) fn new(seed: u64, events: u64, min_cuts: u64, kills: u64) -> Self {
        let mut rng = Rng::new(seed);
        let want = (min_cuts + rng.range(0, min_cuts / 4)).min(events.saturating_sub(1));
        let mut cuts = BTreeSet::new();
        while (cuts.len() as u64) < want {
            cuts.insert(rng.range(1, events - 1));
        }
        let head_cuts = cuts
            .iter()
            .copied()
            .filter(|_| rng.range(0, 7) == 0)
            .collect();
        // One slot per action across the chaos window, each action in the
        // middle of its slot: spread out, never back to back.
        let mut what: Vec<Action> = (0..kills).map(|_| Action::KillOwner).collect();
        let redis_slot = rng.range(0, kills) as usize;
        what.insert(redis_slot, Action::RestartRedis);
        let lo = events as f64 * CHAOS_FROM;
        let width = events as f64 * (CHAOS_TO - CHAOS_FROM) / what.len() as f64;
        let actions = what
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let from = lo + width * (i as f64 + 0.2);
                let to = lo + width * (i as f64 + 0.8);
                (rng.range(from as u64, to as u64), a)
            })
            .collect();
        Plan {
            cuts,
            head_cuts,
            actions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_plan_and_bounds_hold() {
        let a = Plan::new(7, 10_000, 100, 5);
        let b = Plan::new(7, 10_000, 100, 5);
        assert_eq!(a.cuts, b.cuts);
        assert_eq!(a.actions, b.actions);
        assert!(a.cuts.len() >= 100 && a.cuts.len() <= 125);
        assert!(a.cuts.iter().all(|&c| (1..10_000).contains(&c)));
        assert!(a.head_cuts.is_subset(&a.cuts));
        let kills = a
            .actions
            .iter()
            .filter(|(_, x)| *x == Action::KillOwner)
            .count();
        assert_eq!(kills, 5);
        assert_eq!(a.actions.len(), 6);
        assert!(a.actions.iter().all(|(p, _)| (500..=6000).contains(p)));
        assert!(a.actions.windows(2).all(|w| w[1].0 - w[0].0 >= 300));
        assert!(a.actions.windows(2).all(|w| w[0].0 < w[1].0));
        let c = Plan::new(8, 10_000, 100, 5);
        assert_ne!(a.cuts, c.cuts);
    }
}
