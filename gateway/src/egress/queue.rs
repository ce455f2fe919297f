//! The per-thread egress queue: a sans-IO state machine deciding which reply operation
//! to apply next, and when.
//!
//! Rules:
//! - operations are applied in arrival order (the caller feeds them in `seq` order);
//! - a run of consecutive streaming updates of one post at the head of the queue collapses
//!   to its newest text, and a final (non-streaming) update of the same post right behind
//!   the run absorbs it too;
//! - streaming updates of one post are applied at most once per `interval`; anything else
//!   goes out at once.
//!
//! The queue never drops an operation silently: every operation it removes is handed back
//! in [`Next::Apply::done`] so the caller acknowledges it once the applied one succeeded.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use proto::LocalRef;
use proto::v1::{Op, ReplyOp};

/// What the caller should do next.
#[derive(Debug)]
pub enum Next<T> {
    /// Apply `op`; on success, acknowledge every token in `done` (which includes `op`'s).
    Apply { op: ReplyOp, done: Vec<T> },
    /// Nothing may go out before this instant (a streaming update waits for its interval).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

#[derive(Debug)]
pub struct ThreadQueue<T> {
    pending: VecDeque<(ReplyOp, T)>,
    last_stream_patch: HashMap<LocalRef, Instant>,
    interval: Duration,
}

fn streaming_ref(op: &ReplyOp) -> Option<&LocalRef> {
    match &op.op {
        Op::UpdatePost {
            local,
            streaming: true,
            ..
        } => Some(local),
        _ => None,
    }
}

fn final_update_of(op: &ReplyOp, target: &LocalRef) -> bool {
    matches!(&op.op, Op::UpdatePost { local, streaming: false, .. } if local == target)
}

impl<T> ThreadQueue<T> {
    pub fn new(interval: Duration) -> Self {
        Self {
            pending: VecDeque::new(),
            last_stream_patch: HashMap::new(),
            interval,
        }
    }

    pub fn push(&mut self, op: ReplyOp, token: T) {
        self.pending.push_back((op, token));
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Decides the next step at time `now`. `Apply` removes the operations it covers; the
    /// caller retries that one operation until it succeeds or is dead-lettered.
    pub fn next(&mut self, now: Instant) -> Next<T> {
        let Some((head, _)) = self.pending.front() else {
            // Forget posts whose interval has passed, so the map stays as small as the
            // set of posts patched within the last interval.
            let interval = self.interval;
            self.last_stream_patch
                .retain(|_, last| now.saturating_duration_since(*last) < interval);
            return Next::Idle;
        };
        let Some(target) = streaming_ref(head).cloned() else {
            let (op, token) = self.pending.pop_front().expect("front exists");
            return Next::Apply {
                op,
                done: vec![token],
            };
        };
        // The run of streaming updates of `target` at the head, plus a final update of
        // it right behind, if any.
        let mut run = 1;
        while run < self.pending.len() && streaming_ref(&self.pending[run].0) == Some(&target) {
            run += 1;
        }
        let absorbs_final =
            run < self.pending.len() && final_update_of(&self.pending[run].0, &target);
        if absorbs_final {
            run += 1;
        } else if let Some(last) = self.last_stream_patch.get(&target) {
            let due = *last + self.interval;
            if now < due {
                return Next::WaitUntil(due);
            }
        }
        let mut done = Vec::with_capacity(run);
        let mut newest = None;
        for _ in 0..run {
            let (op, token) = self.pending.pop_front().expect("run is within the queue");
            done.push(token);
            newest = Some(op);
        }
        let op = newest.expect("run is at least one");
        // A final update is a patch of the post too: a streaming update that follows it
        // (a post streamed again) still waits out the interval.
        self.last_stream_patch.insert(target, now);
        Next::Apply { op, done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proto::{ChannelId, SessionId, ThreadId};

    fn local(seq: u32) -> LocalRef {
        LocalRef {
            session: SessionId::from("s"),
            seq,
        }
    }

    fn op(seq: u64, op: Op) -> ReplyOp {
        ReplyOp {
            thread: ThreadId::from("t"),
            channel: ChannelId::from("c"),
            session: SessionId::from("s"),
            seq,
            created_at_ms: 0,
            op,
        }
    }

    #[derive(Debug, Clone)]
    enum Kind {
        Create(u32),
        Stream(u32),
        Final(u32),
        React,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            1 => (0..3u32).prop_map(Kind::Create),
            6 => (0..3u32).prop_map(Kind::Stream),
            1 => (0..3u32).prop_map(Kind::Final),
            1 => Just(Kind::React),
        ]
    }

    fn build(seq: u64, kind: &Kind) -> ReplyOp {
        let text = format!("text-{seq}");
        op(
            seq,
            match kind {
                Kind::Create(r) => Op::CreatePost {
                    local: local(*r),
                    message: text,
                    props_json: None,
                },
                Kind::Stream(r) => Op::UpdatePost {
                    local: local(*r),
                    message: text,
                    props_json: None,
                    streaming: true,
                },
                Kind::Final(r) => Op::UpdatePost {
                    local: local(*r),
                    message: text,
                    props_json: None,
                    streaming: false,
                },
                Kind::React => Op::AddReaction {
                    target: proto::v1::PostTarget::Local(local(0)),
                    emoji: "eyes".into(),
                },
            },
        )
    }

    fn text_of(op: &ReplyOp) -> Option<(&LocalRef, &str)> {
        match &op.op {
            Op::UpdatePost { local, message, .. } | Op::CreatePost { local, message, .. } => {
                Some((local, message))
            }
            _ => None,
        }
    }

    proptest! {
        /// Feed operations at random times and drain the queue as a caller would.
        #[test]
        fn order_is_kept_nothing_is_lost_and_streams_respect_the_interval(
            steps in proptest::collection::vec((kind(), 0..300u64), 1..80),
        ) {
            let interval = Duration::from_millis(100);
            let start = Instant::now();
            let mut now = start;
            let mut queue = ThreadQueue::new(interval);
            let mut applied: Vec<(Instant, ReplyOp)> = Vec::new();
            let mut acked: Vec<u64> = Vec::new();
            let mut pushed: Vec<ReplyOp> = Vec::new();
            let drain = |queue: &mut ThreadQueue<u64>, now: Instant, applied: &mut Vec<(Instant, ReplyOp)>, acked: &mut Vec<u64>| {
                while let Next::Apply { op, done } = queue.next(now) {
                    assert!(done.contains(&op.seq), "the applied op is among the acked");
                    applied.push((now, op));
                    acked.extend(done);
                }
            };
            for (seq, (kind, gap)) in steps.iter().enumerate() {
                let seq = seq as u64 + 1;
                let op = build(seq, kind);
                pushed.push(op.clone());
                queue.push(op, seq);
                drain(&mut queue, now, &mut applied, &mut acked);
                now += Duration::from_millis(*gap);
            }
            // Let time pass until the queue empties.
            loop {
                match queue.next(now) {
                    Next::Apply { op, done } => { applied.push((now, op)); acked.extend(done); }
                    Next::WaitUntil(t) => { prop_assert!(t > now); now = t; }
                    Next::Idle => break,
                }
            }
            // Every pushed op acknowledged exactly once.
            let mut sorted = acked.clone();
            sorted.sort();
            prop_assert_eq!(sorted, (1..=pushed.len() as u64).collect::<Vec<_>>());
            // Applied ops keep their relative order.
            let seqs: Vec<u64> = applied.iter().map(|(_, op)| op.seq).collect();
            prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{:?}", seqs);
            // Non-update ops are never coalesced away.
            for op in &pushed {
                if !matches!(op.op, Op::UpdatePost { .. }) {
                    prop_assert!(seqs.contains(&op.seq));
                }
            }
            // The last text of every post is the last text pushed for it.
            for r in 0..3 {
                let last_pushed = pushed.iter().filter_map(text_of).rfind(|(l, _)| **l == local(r));
                let last_applied = applied.iter().filter_map(|(_, op)| text_of(op)).rfind(|(l, _)| **l == local(r));
                prop_assert_eq!(last_pushed, last_applied);
            }
            // Streaming patches of one post are at least `interval` apart.
            for r in 0..3 {
                let times: Vec<Instant> = applied.iter()
                    .filter(|(_, op)| streaming_ref(op) == Some(&local(r)))
                    .map(|(t, _)| *t).collect();
                prop_assert!(times.windows(2).all(|w| w[1] - w[0] >= interval));
            }
        }
    }

    #[test]
    fn a_post_streamed_again_after_its_final_update_still_waits_the_interval() {
        let interval = Duration::from_millis(100);
        let now = Instant::now();
        let mut queue = ThreadQueue::new(interval);
        let update = |seq, streaming| {
            op(
                seq,
                Op::UpdatePost {
                    local: local(1),
                    message: format!("text-{seq}"),
                    props_json: None,
                    streaming,
                },
            )
        };
        queue.push(update(1, true), 1);
        queue.push(update(2, false), 2);
        queue.push(update(3, true), 3);
        let Next::Apply { op, done } = queue.next(now) else {
            panic!("the run and its final go out at once");
        };
        assert_eq!((op.seq, done), (2, vec![1, 2]));
        assert!(matches!(queue.next(now), Next::WaitUntil(t) if t == now + interval));
        assert!(matches!(queue.next(now + interval), Next::Apply { op, .. } if op.seq == 3));
    }

    #[test]
    fn a_burst_of_streaming_updates_becomes_few_patches_with_the_exact_final_text() {
        let interval = Duration::from_millis(100);
        let start = Instant::now();
        let mut queue = ThreadQueue::new(interval);
        let mut patches = Vec::new();
        // 500 updates over 1 s, one every 2 ms, drained as they come.
        for i in 0..500u64 {
            let now = start + Duration::from_millis(2 * i);
            queue.push(
                op(
                    i + 1,
                    Op::UpdatePost {
                        local: local(1),
                        message: "x".repeat(i as usize + 1),
                        props_json: None,
                        streaming: true,
                    },
                ),
                i,
            );
            while let Next::Apply { op, .. } = queue.next(now) {
                patches.push(op);
            }
        }
        let mut now = start + Duration::from_millis(1000);
        loop {
            match queue.next(now) {
                Next::Apply { op, .. } => patches.push(op),
                Next::WaitUntil(t) => now = t,
                Next::Idle => break,
            }
        }
        assert!(patches.len() <= 1000 / 100 + 2, "{} patches", patches.len());
        assert_eq!(text_of(patches.last().unwrap()).unwrap().1.len(), 500);
    }
}
