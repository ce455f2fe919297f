//! The chaos run's schedule (no I/O): which fault each step injects and what every thread
//! is asked meanwhile, all drawn from one seed, so a run can be repeated exactly.

use serde::Serialize;

/// `--schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Length {
    /// Every fault kind once, shortest holds: a few minutes (CI).
    Short,
    /// 20 worker kills (idle and mid-turn) and every other kind twice, mixed.
    Long,
}

/// One kind of fault. Its name is the key in the JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL a worker that holds sessions but runs no turn; start it again.
    WorkerKillIdle,
    /// SIGKILL a worker while its turns stream; start it again.
    WorkerKillMidTurn,
    /// Freeze a worker (`docker pause`) past its lease TTL, then thaw it: it must not act
    /// for the threads taken over meanwhile.
    WorkerPause,
    /// Disconnect a worker from the fleet network (NATS, PostgreSQL, the store), then
    /// reconnect it.
    WorkerPartition,
    /// SIGKILL the gateway holding the egress lease; start it again.
    GatewayKillEgressLeader,
    /// SIGKILL a gateway that only reads the WebSocket (every replica does); start it again.
    GatewayKillReader,
    /// SIGKILL the NATS node leading the events stream; start it again.
    NatsKillLeader,
    /// SIGKILL a NATS node that does not lead it; start it again.
    NatsKillFollower,
    /// Restart PostgreSQL (`docker restart`).
    PostgresRestart,
    /// Stop Garage (the object store) for a while.
    StoreStop,
    /// The simulator answers 500 to every request of the bot for a while.
    #[serde(rename = "mattermost_500")]
    Mattermost500,
    /// The simulator rate-limits the bot hard (429 with `Retry-After`) for a while.
    #[serde(rename = "mattermost_429")]
    Mattermost429,
    /// The simulator answers every request late for a while.
    MattermostLatency,
    /// A turn writes more than a session may checkpoint (`worker.max_workspace_bytes`).
    DiskFill,
}

impl FaultKind {
    pub const ALL: [FaultKind; 14] = [
        FaultKind::WorkerKillIdle,
        FaultKind::WorkerKillMidTurn,
        FaultKind::WorkerPause,
        FaultKind::WorkerPartition,
        FaultKind::GatewayKillEgressLeader,
        FaultKind::GatewayKillReader,
        FaultKind::NatsKillLeader,
        FaultKind::NatsKillFollower,
        FaultKind::PostgresRestart,
        FaultKind::StoreStop,
        FaultKind::Mattermost500,
        FaultKind::Mattermost429,
        FaultKind::MattermostLatency,
        FaultKind::DiskFill,
    ];

    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Whether the fault should land while turns stream (the step posts slow turns and
    /// injects it a few seconds later) rather than between rounds.
    pub fn mid_turn(self) -> bool {
        matches!(
            self,
            FaultKind::WorkerKillMidTurn
                | FaultKind::GatewayKillEgressLeader
                | FaultKind::NatsKillLeader
                | FaultKind::WorkerPause
        )
    }
}

/// What one message asks (markers for the fake model around the tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ask {
    /// A short answer.
    Plain,
    /// A tool call needing approval, approved with the button.
    ApproveByButton,
    /// A tool call needing approval, approved with a 👍 reaction.
    ApproveByReaction,
    /// A turn writing a file (an artifact).
    WriteFile,
    /// A turn streaming its answer slowly.
    Slow,
}

/// One step: a fault, and what each thread is asked around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub fault: FaultKind,
    /// How long the fault lasts (pause, partition, outage, storm), in seconds.
    pub hold_s: u64,
    /// New threads opened in this step (mentions), besides a message in every thread.
    pub new_threads: usize,
    /// The ask of each open thread's message this step (one per thread, in thread order;
    /// threads opened this step come after the others).
    pub asks: Vec<Ask>,
}

/// A small deterministic generator (splitmix64): the schedule must not change when a
/// dependency's RNG does.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The hold of a fault kind for a schedule length, in seconds.
fn hold(kind: FaultKind, length: Length) -> u64 {
    let (short, long) = match kind {
        // Past the lease TTL (10 s) so the thread is taken over while it sleeps.
        FaultKind::WorkerPause => (16, 25),
        FaultKind::WorkerPartition => (15, 30),
        FaultKind::StoreStop => (20, 60),
        FaultKind::Mattermost500 | FaultKind::Mattermost429 => (15, 60),
        FaultKind::MattermostLatency => (15, 45),
        FaultKind::NatsKillLeader | FaultKind::NatsKillFollower => (5, 10),
        FaultKind::GatewayKillEgressLeader | FaultKind::GatewayKillReader => (3, 5),
        FaultKind::WorkerKillIdle | FaultKind::WorkerKillMidTurn => (2, 2),
        FaultKind::PostgresRestart | FaultKind::DiskFill => (0, 0),
    };
    match length {
        Length::Short => short,
        Length::Long => long,
    }
}

/// The steps of a run: `threads` threads open at first, `max_threads` at most.
pub fn plan(length: Length, seed: u64, threads: usize, max_threads: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut kinds: Vec<FaultKind> = match length {
        Length::Short => FaultKind::ALL.to_vec(),
        Length::Long => {
            let mut kinds = Vec::new();
            for _ in 0..10 {
                kinds.push(FaultKind::WorkerKillIdle);
                kinds.push(FaultKind::WorkerKillMidTurn);
            }
            for kind in FaultKind::ALL {
                if !matches!(
                    kind,
                    FaultKind::WorkerKillIdle | FaultKind::WorkerKillMidTurn
                ) {
                    kinds.extend([kind, kind]);
                }
            }
            kinds
        }
    };
    // Short: one kind at a time, in a fixed order. Long: mixed (Fisher–Yates).
    if length == Length::Long {
        for i in (1..kinds.len()).rev() {
            let j = rng.below(i + 1);
            kinds.swap(i, j);
        }
    }
    let mut open = threads;
    kinds
        .into_iter()
        .map(|fault| {
            let new_threads = usize::from(open < max_threads && rng.below(3) == 0);
            let mut asks = Vec::new();
            for _ in 0..open + new_threads {
                let ask = if fault.mid_turn() {
                    Ask::Slow
                } else {
                    match rng.below(6) {
                        0 => Ask::ApproveByButton,
                        1 => Ask::ApproveByReaction,
                        2 => Ask::WriteFile,
                        3 => Ask::Slow,
                        _ => Ask::Plain,
                    }
                };
                asks.push(ask);
            }
            open += new_threads;
            Step {
                fault,
                hold_s: hold(fault, length),
                new_threads,
                asks,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn counts(steps: &[Step]) -> BTreeMap<FaultKind, usize> {
        let mut out = BTreeMap::new();
        for s in steps {
            *out.entry(s.fault).or_default() += 1;
        }
        out
    }

    #[test]
    fn the_short_schedule_has_every_kind_once_and_the_long_one_twenty_kills() {
        let short = plan(Length::Short, 7, 3, 6);
        assert_eq!(short.len(), FaultKind::ALL.len());
        assert!(counts(&short).values().all(|&n| n == 1));
        let long = counts(&plan(Length::Long, 7, 3, 6));
        assert_eq!(
            long[&FaultKind::WorkerKillIdle] + long[&FaultKind::WorkerKillMidTurn],
            20
        );
        for kind in FaultKind::ALL {
            assert!(long[&kind] >= 2, "{kind:?}");
        }
    }

    #[test]
    fn a_seed_gives_one_schedule_and_threads_stay_within_bounds() {
        for seed in 0..50 {
            let a = plan(Length::Long, seed, 3, 6);
            assert_eq!(a, plan(Length::Long, seed, 3, 6));
            let mut open = 3;
            for step in &a {
                open += step.new_threads;
                assert!(open <= 6);
                assert_eq!(step.asks.len(), open);
                if step.fault.mid_turn() {
                    assert!(step.asks.iter().all(|a| *a == Ask::Slow));
                }
            }
        }
        assert_ne!(plan(Length::Long, 1, 3, 6), plan(Length::Long, 2, 3, 6));
    }

    #[test]
    fn fault_names_are_snake_case() {
        assert_eq!(FaultKind::WorkerKillMidTurn.name(), "worker_kill_mid_turn");
        assert_eq!(FaultKind::Mattermost429.name(), "mattermost_429");
    }
}
