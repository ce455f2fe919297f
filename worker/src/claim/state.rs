//! The claiming decisions of one worker, as a sans-IO state machine.
//!
//! The I/O shell ([`super::Claims`]) pulls queued threads, creates leases in KV and starts
//! sessions; this core decides. It keeps the capacity invariant (`owned + reserved ≤ max`),
//! never claims while draining, and forgets a thread the moment its lease is lost, so a
//! worker never acts for a thread another worker may now own.

use std::collections::BTreeSet;

use proto::{ThreadId, WorkerId};

/// How an event of a thread no live worker holds is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The owner's per-thread consumer delivers it; nothing to do.
    Owned,
    /// Queue the thread so a worker with a free slot claims it.
    Enqueue,
    /// Not a reason to start (or resume) a session: it stays in the thread's history.
    Ignore,
}

/// Where an event goes: `lease` is the current holder, if any.
pub fn route(lease: Option<&WorkerId>, starts_session: bool, has_session: bool) -> Route {
    match lease {
        Some(_) => Route::Owned,
        None if starts_session || has_session => Route::Enqueue,
        None => Route::Ignore,
    }
}

/// Whether the author of a newly queued thread must be told it waits: only when the
/// threads ahead of it (and it) exceed the fleet's free slots. Returns the position.
pub fn queue_notice(position: u64, free_slots: u64) -> Option<u64> {
    (position > free_slots).then_some(position)
}

/// The answer to a pulled queue item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnQueued {
    /// A slot is reserved: try to create the thread's lease.
    TryLease,
    /// We hold this thread already (a duplicate queue entry): drop the item.
    AlreadyOurs,
    /// No slot (or draining): give the item back for another worker.
    GiveBack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseResult {
    Acquired,
    HeldBy(WorkerId),
    /// The lease store could not be read or written (or the holder let go in between):
    /// who holds the thread is unknown.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnLease {
    /// Start (or resume) the session.
    Start,
    /// Someone else holds it: drop the queue item, free the reservation.
    Drop,
    /// Unknown, or held by an earlier life of this worker (same id) that nobody renews:
    /// free the reservation and give the item back to be tried again later. Never a drop:
    /// nobody else is known to have the thread.
    Retry,
}

#[derive(Debug, Clone)]
pub struct Claimer {
    me: WorkerId,
    max: usize,
    owned: BTreeSet<ThreadId>,
    reserved: BTreeSet<ThreadId>,
    draining: bool,
}

impl Claimer {
    pub fn new(me: WorkerId, max: usize) -> Self {
        Self {
            me,
            max,
            owned: BTreeSet::new(),
            reserved: BTreeSet::new(),
            draining: false,
        }
    }

    pub fn me(&self) -> &WorkerId {
        &self.me
    }

    /// Slots neither owned nor reserved.
    pub fn free(&self) -> usize {
        if self.draining {
            return 0;
        }
        self.max
            .saturating_sub(self.owned.len() + self.reserved.len())
    }

    /// Whether to pull another queued thread now.
    pub fn wants_work(&self) -> bool {
        self.free() > 0
    }

    pub fn owns(&self, thread: &ThreadId) -> bool {
        self.owned.contains(thread)
    }

    pub fn owned(&self) -> impl Iterator<Item = &ThreadId> {
        self.owned.iter()
    }

    pub fn on_queued(&mut self, thread: &ThreadId) -> OnQueued {
        if self.owned.contains(thread) || self.reserved.contains(thread) {
            return OnQueued::AlreadyOurs;
        }
        if self.free() == 0 {
            return OnQueued::GiveBack;
        }
        self.reserved.insert(thread.clone());
        OnQueued::TryLease
    }

    pub fn on_lease(&mut self, thread: &ThreadId, result: LeaseResult) -> OnLease {
        self.reserved.remove(thread);
        match result {
            LeaseResult::Acquired => {
                self.owned.insert(thread.clone());
                OnLease::Start
            }
            LeaseResult::HeldBy(owner) if owner == self.me => OnLease::Retry,
            LeaseResult::HeldBy(_) => OnLease::Drop,
            LeaseResult::Unavailable => OnLease::Retry,
        }
    }

    /// The session ended and its lease was deleted.
    pub fn on_released(&mut self, thread: &ThreadId) {
        self.owned.remove(thread);
    }

    /// Renewal failed: another worker may hold the thread now. Returns whether we held it
    /// (then the session must stop at once, without touching the thread again).
    pub fn on_lease_lost(&mut self, thread: &ThreadId) -> bool {
        self.owned.remove(thread)
    }

    /// Stop claiming; sessions finish and release.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use proptest::prelude::*;

    use super::*;

    /// A model of the fleet: workers with claimers, a KV lease store with expiry, a FIFO
    /// queue, and crashes.
    #[derive(Debug, Clone)]
    enum Step {
        NewThread,
        Pull(usize),
        Release(usize),
        Crash(usize),
        Expire,
        Drain(usize),
        /// The next lease attempt fails (NATS unavailable).
        LeaseFails,
    }

    fn step(workers: usize) -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::NewThread),
            5 => (0..workers).prop_map(Step::Pull),
            2 => (0..workers).prop_map(Step::Release),
            1 => (0..workers).prop_map(Step::Crash),
            1 => Just(Step::Expire),
            1 => (0..workers).prop_map(Step::Drain),
            1 => Just(Step::LeaseFails),
        ]
    }

    proptest! {
        #[test]
        fn one_owner_per_thread_capacity_kept_and_queued_threads_all_claimed(
            max in 1usize..4,
            steps in proptest::collection::vec(step(3), 1..120),
        ) {
            let ids: Vec<WorkerId> = (0..3).map(|i| WorkerId::new(format!("w{i}"))).collect();
            let mut workers: Vec<Option<Claimer>> = ids.iter().map(|id| Some(Claimer::new(id.clone(), max))).collect();
            // KV: thread → (owner, alive). A crashed owner's leases linger until Expire.
            let mut leases: BTreeMap<ThreadId, WorkerId> = BTreeMap::new();
            let mut queue: VecDeque<ThreadId> = VecDeque::new();
            let mut next_thread = 0;
            let mut crashed: BTreeSet<WorkerId> = BTreeSet::new();
            let mut created: BTreeSet<ThreadId> = BTreeSet::new();
            let mut released: BTreeSet<ThreadId> = BTreeSet::new();
            let mut lease_fails = false;

            let pull = |w: usize, workers: &mut Vec<Option<Claimer>>, leases: &mut BTreeMap<ThreadId, WorkerId>, queue: &mut VecDeque<ThreadId>, lease_fails: &mut bool| {
                let Some(claimer) = workers[w].as_mut() else { return };
                if !claimer.wants_work() { return; }
                let Some(thread) = queue.pop_front() else { return };
                match claimer.on_queued(&thread) {
                    OnQueued::GiveBack => queue.push_front(thread),
                    OnQueued::AlreadyOurs => {}
                    OnQueued::TryLease => {
                        let result = if std::mem::take(lease_fails) {
                            LeaseResult::Unavailable
                        } else {
                            match leases.get(&thread) {
                                None => { leases.insert(thread.clone(), claimer.me().clone()); LeaseResult::Acquired }
                                Some(owner) => LeaseResult::HeldBy(owner.clone()),
                            }
                        };
                        // The shell NAKs a Retry: the item comes back.
                        if claimer.on_lease(&thread, result) == OnLease::Retry {
                            queue.push_back(thread);
                        }
                    }
                }
            };

            for s in &steps {
                match s {
                    Step::NewThread => {
                        let t = ThreadId::new(format!("t{next_thread}"));
                        next_thread += 1;
                        created.insert(t.clone());
                        if route(leases.get(&t), true, false) == Route::Enqueue {
                            queue.push_back(t);
                        }
                    }
                    Step::Pull(w) => pull(*w, &mut workers, &mut leases, &mut queue, &mut lease_fails),
                    Step::LeaseFails => lease_fails = true,
                    Step::Release(w) => {
                        if let Some(claimer) = workers[*w].as_mut() {
                            let first = claimer.owned().next().cloned();
                            if let Some(t) = first {
                                leases.remove(&t);
                                claimer.on_released(&t);
                                released.insert(t);
                            }
                        }
                    }
                    Step::Crash(w) => {
                        if workers[*w].take().is_some() {
                            crashed.insert(ids[*w].clone());
                        }
                    }
                    Step::Expire => {
                        // Leases of crashed workers lapse; their threads need a new owner:
                        // the janitor re-queues them.
                        let lapsed: Vec<ThreadId> = leases.iter().filter(|(_, o)| crashed.contains(*o)).map(|(t, _)| t.clone()).collect();
                        for t in lapsed {
                            leases.remove(&t);
                            if route(None, false, true) == Route::Enqueue {
                                queue.push_back(t);
                            }
                        }
                    }
                    Step::Drain(w) => {
                        if let Some(c) = workers[*w].as_mut() { c.drain(); }
                    }
                }
                // Invariants after every step.
                for claimer in workers.iter().flatten() {
                    prop_assert!(claimer.owned().count() <= max);
                    for t in claimer.owned() {
                        prop_assert_eq!(leases.get(t), Some(claimer.me()), "an owned thread's lease names its owner");
                    }
                }
                // Nothing lost: every thread is held by someone, waiting in the queue, or
                // was released by its owner.
                for t in &created {
                    prop_assert!(
                        leases.contains_key(t) || queue.contains(t) || released.contains(t),
                        "thread {} is neither held, queued nor released", t
                    );
                }
                let mut seen = BTreeSet::new();
                for claimer in workers.iter().flatten() {
                    for t in claimer.owned() {
                        prop_assert!(seen.insert(t.clone()), "thread {} owned twice", t);
                    }
                }
            }
            // Liveness: with a fresh, non-draining worker that releases as it goes, every
            // queued thread is eventually claimed.
            let mut fresh = Claimer::new(WorkerId::new("fresh"), 1);
            // Leases of crashed workers lapse eventually.
            leases.retain(|_, o| !crashed.contains(o));
            let mut guard = 0;
            while let Some(thread) = queue.pop_front() {
                guard += 1;
                prop_assert!(guard < 10_000);
                match fresh.on_queued(&thread) {
                    OnQueued::TryLease => {
                        let result = match leases.get(&thread) {
                            None => LeaseResult::Acquired,
                            Some(owner) => LeaseResult::HeldBy(owner.clone()),
                        };
                        match fresh.on_lease(&thread, result) {
                            OnLease::Start => fresh.on_released(&thread),
                            OnLease::Retry => queue.push_back(thread),
                            OnLease::Drop => {}
                        }
                    }
                    OnQueued::AlreadyOurs => {}
                    OnQueued::GiveBack => prop_assert!(false, "a fresh idle worker must take work"),
                }
            }
        }
    }

    #[test]
    fn routing() {
        let w = WorkerId::new("w");
        assert_eq!(route(Some(&w), true, true), Route::Owned);
        assert_eq!(route(None, true, false), Route::Enqueue);
        assert_eq!(route(None, false, true), Route::Enqueue);
        assert_eq!(route(None, false, false), Route::Ignore);
    }

    #[test]
    fn queue_notices_only_when_the_fleet_is_full() {
        assert_eq!(queue_notice(1, 2), None);
        assert_eq!(queue_notice(3, 2), Some(3));
        assert_eq!(queue_notice(1, 0), Some(1));
    }

    #[test]
    fn a_lease_that_cannot_be_read_or_is_our_earlier_life_is_tried_again() {
        let me = WorkerId::new("w");
        let mut c = Claimer::new(me.clone(), 1);
        let t = ThreadId::new("t");
        assert_eq!(c.on_queued(&t), OnQueued::TryLease);
        assert_eq!(c.on_lease(&t, LeaseResult::Unavailable), OnLease::Retry);
        assert_eq!(c.free(), 1, "the reservation is given back");
        assert_eq!(c.on_queued(&t), OnQueued::TryLease);
        assert_eq!(c.on_lease(&t, LeaseResult::HeldBy(me)), OnLease::Retry);
        assert!(!c.owns(&t));
    }

    #[test]
    fn a_draining_worker_claims_nothing() {
        let mut c = Claimer::new(WorkerId::new("w"), 3);
        c.drain();
        assert!(!c.wants_work());
        assert_eq!(c.on_queued(&ThreadId::new("t")), OnQueued::GiveBack);
    }
}
