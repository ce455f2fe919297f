//! The credential pool's decisions, without I/O or clocks: which credential a model
//! request goes out on, when a rate-limited credential may be used again, how long a
//! request waits when none can serve it, and when its session's thread is told.
//!
//! The shell (`super`) calls [`Pool::acquire`] with the time (milliseconds on any
//! monotonic scale) and the request's deadline; it sends the request on the credential it
//! gets and hands the outcome back with [`Pool::release`] (a 429/529 with `retry-after`
//! becomes [`Outcome::Cooled`]). A [`Pick::Wait`] says until when to wait, and carries a
//! `tell` the first time a session starts waiting; [`Pool::stop_waiting`] ends a request's
//! wait when it gives up, [`Pool::answered`] says one of the session's requests was
//! answered (its wait is over: the next one is told again).
//!
//! Invariants (property-tested below):
//! - a credential is never picked while cooling, at its `max_concurrency`, or at its
//!   `requests_per_minute` within the last 60 s;
//! - a request waits only when no credential is usable, and then until the earliest time
//!   one becomes usable by time alone (or, when only in-flight requests hold them all,
//!   until a release);
//! - a session is told at most once per wait: from its first waiting request until one of
//!   its requests is answered while none waits;
//! - a request never waits past its deadline: it gets [`Pick::GiveUp`] instead.

use std::collections::{HashMap, VecDeque};

use proto::ids::SessionId;

/// A rolling minute, for `requests_per_minute`.
const MINUTE_MS: u64 = 60_000;
/// The shortest cooling: a `retry-after: 0` must not make the pool retry in a tight loop.
pub const MIN_COOLING_MS: u64 = 1_000;

/// One credential's limits (its secret stays with the shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight at once; 0: no limit.
    pub max_concurrency: u32,
    /// Requests started per rolling minute; 0: no limit.
    pub requests_per_minute: u32,
}

#[derive(Debug, Clone)]
struct Credential {
    limits: Limits,
    in_flight: u32,
    /// Start times within the last minute (only kept with a per-minute limit).
    starts: VecDeque<u64>,
    /// Usable again from this time on.
    cooling_until: u64,
    /// When it was last picked (for spreading among equals).
    last_pick: Option<u64>,
}

impl Credential {
    fn prune(&mut self, now: u64) {
        while self
            .starts
            .front()
            .is_some_and(|t| t.saturating_add(MINUTE_MS) <= now)
        {
            self.starts.pop_front();
        }
    }

    fn cooling(&self, now: u64) -> bool {
        now < self.cooling_until
    }

    fn at_concurrency(&self) -> bool {
        self.limits.max_concurrency > 0 && self.in_flight >= self.limits.max_concurrency
    }

    fn at_rate(&self) -> bool {
        self.limits.requests_per_minute > 0
            && self.starts.len() >= self.limits.requests_per_minute as usize
    }

    fn usable(&self, now: u64) -> bool {
        !self.cooling(now) && !self.at_concurrency() && !self.at_rate()
    }

    /// When time alone makes it usable (`None`: only a release can, or it is usable).
    fn usable_at(&self, now: u64) -> Option<u64> {
        if self.at_concurrency() {
            return None;
        }
        let mut at = now;
        if self.cooling(now) {
            at = at.max(self.cooling_until);
        }
        if self.at_rate() {
            // The start that has to leave the window for one more to fit.
            let excess = self.starts.len() + 1 - self.limits.requests_per_minute as usize;
            if let Some(t) = self.starts.get(excess - 1) {
                at = at.max(t.saturating_add(MINUTE_MS));
            }
        }
        Some(at)
    }
}

/// What to do with a model request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Send it with credential `index` (now counted in flight: [`Pool::release`] it).
    Use(usize),
    /// No credential can serve it now: wait until `until` (`None`: until a request in
    /// flight ends — [`Pool::release`] — or the deadline), then ask again.
    Wait {
        until: Option<u64>,
        /// `Some(resume_at)`: this session just started waiting; tell its thread once, with
        /// when it should continue.
        tell: Option<u64>,
    },
    /// It cannot be served before its deadline.
    GiveUp,
}

/// How a request on a credential ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (whatever the status), or cut: the credential stays usable.
    Done,
    /// A 429 or 529 with `retry-after`: the credential cools until `until` (at least
    /// [`MIN_COOLING_MS`] from the release).
    Cooled { until: u64 },
}

#[derive(Debug, Default, Clone)]
struct Waiting {
    requests: u32,
    told: bool,
}

/// The pool. One per egress gateway, behind a mutex; every call is O(credentials).
#[derive(Debug, Clone)]
pub struct Pool {
    credentials: Vec<Credential>,
    /// Sessions with requests waiting now (told once when the entry was made).
    waiting: HashMap<SessionId, Waiting>,
}

impl Pool {
    /// A pool of credentials with these limits, in the configured order.
    pub fn new(limits: impl IntoIterator<Item = Limits>) -> Self {
        Self {
            credentials: limits
                .into_iter()
                .map(|limits| Credential {
                    limits,
                    in_flight: 0,
                    starts: VecDeque::new(),
                    cooling_until: 0,
                    last_pick: None,
                })
                .collect(),
            waiting: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.credentials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty()
    }

    /// Requests in flight on credential `index`.
    pub fn in_flight(&self, index: usize) -> u32 {
        self.credentials.get(index).map_or(0, |c| c.in_flight)
    }

    /// Whether credential `index` is cooling at `now`.
    pub fn cooling(&self, index: usize, now: u64) -> bool {
        self.credentials.get(index).is_some_and(|c| c.cooling(now))
    }

    /// Whether `session` has a request waiting.
    pub fn is_waiting(&self, session: &SessionId) -> bool {
        self.waiting.get(session).is_some_and(|w| w.requests > 0)
    }

    /// A credential for one of `session`'s requests, or how long to wait for one. A request
    /// that waited asks again (same `session`, same `deadline`) until it gets `Use` or
    /// `GiveUp`; either ends its wait.
    ///
    /// `waited`: whether this request already waited (it is counted once per session).
    pub fn acquire(&mut self, session: &SessionId, now: u64, deadline: u64, waited: bool) -> Pick {
        for c in &mut self.credentials {
            c.prune(now);
        }
        // Least in flight, then least recently picked (never picked first), then order.
        let best = self
            .credentials
            .iter()
            .enumerate()
            .filter(|(_, c)| c.usable(now))
            .min_by_key(|(i, c)| (c.in_flight, c.last_pick.map_or(0, |t| t + 1), *i))
            .map(|(i, _)| i);
        if let Some(i) = best {
            if waited {
                self.stop_waiting(session);
            }
            let c = &mut self.credentials[i];
            c.in_flight += 1;
            c.last_pick = Some(now);
            if c.limits.requests_per_minute > 0 {
                c.starts.push_back(now);
            }
            return Pick::Use(i);
        }
        let timed = self
            .credentials
            .iter()
            .filter_map(|c| c.usable_at(now))
            .min();
        let give_up = match timed {
            Some(at) => at > deadline,
            // Only releases can help: wait for one as long as the deadline allows.
            None => now >= deadline || self.credentials.is_empty(),
        };
        if give_up {
            if waited {
                self.stop_waiting(session);
            }
            return Pick::GiveUp;
        }
        let entry = self.waiting.entry(session.clone()).or_default();
        if !waited || entry.requests == 0 {
            entry.requests += 1;
        }
        // Told once per wait, when there is an estimate: a wait for in-flight requests
        // alone is queueing, not cooling, and lasts as long as a request.
        let mut tell = None;
        if !entry.told && timed.is_some() {
            entry.told = true;
            tell = timed;
        }
        Pick::Wait { until: timed, tell }
    }

    /// A request that waited gives up (deadline, client gone) without `acquire` saying so.
    pub fn stop_waiting(&mut self, session: &SessionId) {
        if let Some(w) = self.waiting.get_mut(session) {
            w.requests = w.requests.saturating_sub(1);
            if w.requests == 0 && !w.told {
                self.waiting.remove(session);
            }
        }
    }

    /// One of `session`'s requests was answered (not rate-limited): its wait is over, and a
    /// later one is told again. Until then a session told once is not told again, even
    /// when a request that got a credential after waiting is rate-limited and waits anew.
    pub fn answered(&mut self, session: &SessionId) {
        if self.waiting.get(session).is_some_and(|w| w.requests == 0) {
            self.waiting.remove(session);
        }
    }

    /// The session is gone (its token revoked).
    pub fn forget(&mut self, session: &SessionId) {
        self.waiting.remove(session);
    }

    /// A request sent with credential `index` (by [`Pick::Use`]) ended with `outcome` at
    /// `now`.
    pub fn release(&mut self, index: usize, now: u64, outcome: Outcome) {
        let Some(c) = self.credentials.get_mut(index) else {
            return;
        };
        c.in_flight = c.in_flight.saturating_sub(1);
        if let Outcome::Cooled { until } = outcome {
            c.cooling_until = c
                .cooling_until
                .max(until.max(now.saturating_add(MIN_COOLING_MS)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(n: usize) -> Pool {
        Pool::new((0..n).map(|_| Limits {
            max_concurrency: 0,
            requests_per_minute: 0,
        }))
    }

    fn s(name: &str) -> SessionId {
        SessionId::new(name)
    }

    #[test]
    fn requests_spread_over_the_credentials() {
        let mut pool = open(3);
        let picks: Vec<Pick> = (0..3)
            .map(|t| pool.acquire(&s("a"), t, 10, false))
            .collect();
        assert_eq!(picks, vec![Pick::Use(0), Pick::Use(1), Pick::Use(2)]);
        pool.release(1, 5, Outcome::Done);
        assert_eq!(pool.acquire(&s("a"), 6, 10, false), Pick::Use(1));
        // All equally busy: the least recently picked.
        pool.release(0, 7, Outcome::Done);
        pool.release(1, 7, Outcome::Done);
        pool.release(2, 7, Outcome::Done);
        assert_eq!(pool.acquire(&s("a"), 8, 10, false), Pick::Use(0));
        assert_eq!(pool.acquire(&s("a"), 9, 10, false), Pick::Use(2));
    }

    #[test]
    fn a_cooled_credential_is_skipped_until_its_retry_after() {
        let mut pool = open(2);
        assert_eq!(pool.acquire(&s("a"), 0, 100_000, false), Pick::Use(0));
        pool.release(0, 10, Outcome::Cooled { until: 5_000 });
        assert_eq!(pool.acquire(&s("a"), 10, 100_000, false), Pick::Use(1));
        pool.release(1, 20, Outcome::Cooled { until: 8_000 });
        // Both cooling: wait for the first, told once with that estimate.
        assert_eq!(
            pool.acquire(&s("a"), 20, 100_000, false),
            Pick::Wait {
                until: Some(5_000),
                tell: Some(5_000)
            }
        );
        // Another request of the same session joins the wait silently.
        assert_eq!(
            pool.acquire(&s("a"), 30, 100_000, false),
            Pick::Wait {
                until: Some(5_000),
                tell: None
            }
        );
        // Another session is told too.
        assert_eq!(
            pool.acquire(&s("b"), 30, 100_000, false),
            Pick::Wait {
                until: Some(5_000),
                tell: Some(5_000)
            }
        );
        assert_eq!(pool.acquire(&s("a"), 5_000, 100_000, true), Pick::Use(0));
        assert!(pool.is_waiting(&s("a")), "one of a's requests still waits");
        assert_eq!(pool.acquire(&s("a"), 5_001, 100_000, true), Pick::Use(0));
        assert!(!pool.is_waiting(&s("a")));
    }

    #[test]
    fn a_session_is_told_again_only_after_an_answer() {
        let mut pool = open(1);
        let far = 1_000_000;
        assert_eq!(pool.acquire(&s("a"), 0, far, false), Pick::Use(0));
        pool.release(0, 0, Outcome::Cooled { until: 2_000 });
        assert_eq!(
            pool.acquire(&s("a"), 10, far, false),
            Pick::Wait {
                until: Some(2_000),
                tell: Some(2_000)
            }
        );
        assert_eq!(pool.acquire(&s("a"), 2_000, far, true), Pick::Use(0));
        // Rate-limited again after its wait: the same wait as far as the thread knows.
        pool.release(0, 2_001, Outcome::Cooled { until: 5_000 });
        assert_eq!(
            pool.acquire(&s("a"), 2_001, far, false),
            Pick::Wait {
                until: Some(5_000),
                tell: None
            }
        );
        assert_eq!(pool.acquire(&s("a"), 5_000, far, true), Pick::Use(0));
        pool.release(0, 5_001, Outcome::Done);
        pool.answered(&s("a"));
        // Answered: a later wait is a new one.
        assert_eq!(pool.acquire(&s("a"), 5_002, far, false), Pick::Use(0));
        pool.release(0, 5_003, Outcome::Cooled { until: 9_000 });
        assert_eq!(
            pool.acquire(&s("a"), 5_004, far, false),
            Pick::Wait {
                until: Some(9_000),
                tell: Some(9_000)
            }
        );
        pool.forget(&s("a"));
        assert!(!pool.is_waiting(&s("a")));
    }

    #[test]
    fn a_wait_past_the_deadline_gives_up() {
        let mut pool = open(1);
        assert_eq!(pool.acquire(&s("a"), 0, 1_000, false), Pick::Use(0));
        pool.release(0, 0, Outcome::Cooled { until: 60_000 });
        assert_eq!(pool.acquire(&s("a"), 0, 1_000, false), Pick::GiveUp);
        assert!(!pool.is_waiting(&s("a")));
    }

    #[test]
    fn retry_after_zero_still_cools_a_moment() {
        let mut pool = open(1);
        assert_eq!(pool.acquire(&s("a"), 0, 10_000, false), Pick::Use(0));
        pool.release(0, 100, Outcome::Cooled { until: 100 });
        assert!(pool.cooling(0, 100 + MIN_COOLING_MS - 1));
        assert!(!pool.cooling(0, 100 + MIN_COOLING_MS));
    }

    #[test]
    fn per_minute_and_concurrency_limits_hold() {
        let mut pool = Pool::new([
            Limits {
                max_concurrency: 1,
                requests_per_minute: 0,
            },
            Limits {
                max_concurrency: 0,
                requests_per_minute: 2,
            },
        ]);
        let far = 1_000_000;
        assert_eq!(pool.acquire(&s("a"), 0, far, false), Pick::Use(0));
        assert_eq!(pool.acquire(&s("a"), 1, far, false), Pick::Use(1));
        pool.release(1, 2, Outcome::Done);
        assert_eq!(pool.acquire(&s("a"), 3, far, false), Pick::Use(1));
        pool.release(1, 4, Outcome::Done);
        // 0 is busy, 1 has started 2 in the last minute (at 1 and 3): usable again when
        // the first leaves the window.
        assert_eq!(
            pool.acquire(&s("a"), 5, far, false),
            Pick::Wait {
                until: Some(60_001),
                tell: Some(60_001)
            }
        );
        // Credential 0's request ends first.
        pool.release(0, 10, Outcome::Done);
        assert_eq!(pool.acquire(&s("a"), 10, far, true), Pick::Use(0));
        assert!(matches!(
            pool.acquire(&s("a"), 60_000, far, false),
            Pick::Wait { .. }
        ));
        assert_eq!(pool.acquire(&s("a"), 60_001, far, true), Pick::Use(1));
    }

    #[test]
    fn a_wait_for_in_flight_requests_alone_is_not_told() {
        let mut pool = Pool::new([Limits {
            max_concurrency: 1,
            requests_per_minute: 0,
        }]);
        assert_eq!(pool.acquire(&s("a"), 0, 10_000, false), Pick::Use(0));
        assert_eq!(
            pool.acquire(&s("b"), 1, 10_000, false),
            Pick::Wait {
                until: None,
                tell: None
            }
        );
        assert_eq!(pool.acquire(&s("b"), 10_000, 10_000, true), Pick::GiveUp);
        assert!(!pool.is_waiting(&s("b")));
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A new request of session `session` after `dt` ms.
        Request { session: u8, dt: u64 },
        /// In-flight request `nth` (mod the number in flight) ends, cooled for that long.
        End {
            nth: usize,
            dt: u64,
            cooled: Option<u64>,
        },
        /// Waiting request `nth` asks again after `dt`.
        Retry { nth: usize, dt: u64 },
        /// Waiting request `nth` gives up on its own (its client went away).
        Leave { nth: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..3, 0u64..5_000).prop_map(|(session, dt)| Step::Request { session, dt }),
            (
                any::<usize>(),
                0u64..5_000,
                proptest::option::of(0u64..90_000)
            )
                .prop_map(|(nth, dt, cooled)| Step::End { nth, dt, cooled }),
            (any::<usize>(), 0u64..30_000).prop_map(|(nth, dt)| Step::Retry { nth, dt }),
            any::<usize>().prop_map(|nth| Step::Leave { nth }),
        ]
    }

    fn limits() -> impl Strategy<Value = Vec<Limits>> {
        proptest::collection::vec(
            (0u32..3, 0u32..4).prop_map(|(max_concurrency, requests_per_minute)| Limits {
                max_concurrency,
                requests_per_minute,
            }),
            1..4,
        )
    }

    /// What must hold, computed the slow way beside the pool.
    struct Model {
        limits: Vec<Limits>,
        starts: Vec<Vec<u64>>,
        in_flight: Vec<u32>,
        cooling: Vec<u64>,
    }

    impl Model {
        fn at_concurrency(&self, i: usize) -> bool {
            self.limits[i].max_concurrency > 0
                && self.in_flight[i] >= self.limits[i].max_concurrency
        }

        /// Usable at `t` with today's requests in flight (which only ever go down).
        fn usable(&self, i: usize, t: u64) -> bool {
            let recent = self.starts[i]
                .iter()
                .filter(|s| **s + MINUTE_MS > t)
                .count();
            t >= self.cooling[i]
                && !self.at_concurrency(i)
                && (self.limits[i].requests_per_minute == 0
                    || recent < self.limits[i].requests_per_minute as usize)
        }

        fn any_usable(&self, t: u64) -> bool {
            (0..self.limits.len()).any(|i| self.usable(i, t))
        }
    }

    struct Run {
        pool: Pool,
        model: Model,
        now: u64,
        /// Requests in flight: (credential, session).
        flying: Vec<(usize, SessionId)>,
        /// Waiting requests: (session, deadline).
        waiting: Vec<(SessionId, u64)>,
        /// Times each session was told during its current wait.
        told: HashMap<SessionId, u32>,
    }

    impl Run {
        fn acquire(
            &mut self,
            session: SessionId,
            deadline: u64,
            waited: bool,
        ) -> Result<(), TestCaseError> {
            let now = self.now;
            let pick = self.pool.acquire(&session, now, deadline, waited);
            let m = &mut self.model;
            let n = m.limits.len();
            match &pick {
                Pick::Use(i) => {
                    prop_assert!(m.usable(*i, now), "picked {} while unusable", i);
                    prop_assert!(
                        (0..n)
                            .filter(|u| m.usable(*u, now))
                            .all(|u| m.in_flight[u] >= m.in_flight[*i]),
                        "picked a busier credential"
                    );
                    m.in_flight[*i] += 1;
                    m.starts[*i].push(now);
                    self.flying.push((*i, session.clone()));
                }
                Pick::Wait { until, tell } => {
                    prop_assert!(!m.any_usable(now), "waits while one is usable");
                    match until {
                        Some(u) => {
                            prop_assert!(*u <= deadline && *u >= now);
                            prop_assert!(m.any_usable(*u), "nothing usable when the wait ends");
                            prop_assert!(
                                *u == now || !m.any_usable(u - 1),
                                "a wait longer than needed"
                            );
                        }
                        None => prop_assert!((0..n).all(|i| m.at_concurrency(i))),
                    }
                    if let Some(at) = tell {
                        prop_assert_eq!(Some(*at), *until);
                        let count = self.told.entry(session.clone()).or_default();
                        *count += 1;
                        prop_assert_eq!(*count, 1, "told twice in one wait");
                    }
                    self.waiting.push((session.clone(), deadline));
                }
                Pick::GiveUp => {
                    prop_assert!(
                        !m.any_usable(deadline.max(now)),
                        "gave up though usable by the deadline"
                    );
                    prop_assert!(now >= deadline || !(0..n).all(|i| m.at_concurrency(i)));
                }
            }
            self.settle(&session)
        }

        fn settle(&mut self, session: &SessionId) -> Result<(), TestCaseError> {
            let waits = self.waiting.iter().any(|(s, _)| s == session);
            prop_assert_eq!(self.pool.is_waiting(session), waits);
            Ok(())
        }

        /// A request of `session` was answered: with none of its requests waiting, its
        /// next wait is told again.
        fn answered(&mut self, session: &SessionId) {
            self.pool.answered(session);
            if !self.waiting.iter().any(|(s, _)| s == session) {
                self.told.remove(session);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn picks_respect_limits_waits_are_shortest_and_each_wait_is_told_once(
            limits in limits(),
            steps in proptest::collection::vec(step(), 1..80),
        ) {
            let n = limits.len();
            let mut run = Run {
                pool: Pool::new(limits.clone()),
                model: Model {
                    limits,
                    starts: vec![Vec::new(); n],
                    in_flight: vec![0; n],
                    cooling: vec![0; n],
                },
                now: 0,
                flying: Vec::new(),
                waiting: Vec::new(),
                told: HashMap::new(),
            };
            for step in steps {
                match step {
                    Step::Request { session, dt } => {
                        run.now += dt;
                        let deadline = run.now + 120_000;
                        run.acquire(SessionId::new(format!("s{session}")), deadline, false)?;
                    }
                    Step::End { nth, dt, cooled } => {
                        run.now += dt;
                        if run.flying.is_empty() {
                            continue;
                        }
                        let (i, session) = run.flying.remove(nth % run.flying.len());
                        let now = run.now;
                        let outcome = match cooled {
                            Some(c) => Outcome::Cooled { until: now + c },
                            None => Outcome::Done,
                        };
                        run.pool.release(i, now, outcome);
                        if cooled.is_none() {
                            run.answered(&session);
                        }
                        run.model.in_flight[i] -= 1;
                        if let Some(c) = cooled {
                            run.model.cooling[i] = run.model.cooling[i].max(now + c.max(MIN_COOLING_MS));
                        }
                    }
                    Step::Retry { nth, dt } => {
                        run.now += dt;
                        if run.waiting.is_empty() {
                            continue;
                        }
                        let (session, deadline) = run.waiting.remove(nth % run.waiting.len());
                        run.acquire(session, deadline, true)?;
                    }
                    Step::Leave { nth } => {
                        if run.waiting.is_empty() {
                            continue;
                        }
                        let (session, _) = run.waiting.remove(nth % run.waiting.len());
                        run.pool.stop_waiting(&session);
                        run.settle(&session)?;
                    }
                }
                let now = run.now;
                for i in 0..n {
                    prop_assert_eq!(run.pool.in_flight(i), run.model.in_flight[i]);
                    prop_assert_eq!(run.pool.cooling(i, now), now < run.model.cooling[i]);
                }
            }
        }
    }
}
