//! The circuit breaker in front of Mattermost, shared by every thread the egress leader
//! applies: a sans-IO core ([`Breaker`]) and its thin async shell ([`Circuit`]).
//!
//! Rules:
//! - closed: requests go out; `failures` consecutive failures (no answer, 5xx, 408) open it;
//! - open: nothing goes out until the cool-down ends; the cool-down doubles with each
//!   opening in a row (from [`BASE_COOLDOWN`]), is capped at `max_cooldown`, and is jittered
//!   down by up to half so replicas and restarts do not probe in step;
//! - half-open: exactly one request (the probe) goes out; every other waits for its outcome.
//!   An answer closes the circuit, a failure opens it again with the next cool-down;
//! - any answer from Mattermost (2xx, 4xx, 429) is a sign of life and closes it; a failure
//!   reported by a request admitted before the circuit last changed counts for nothing.
//!
//! So an outage costs one request per cool-down, whatever the number of waiting threads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::metrics::Metrics;

/// The first cool-down after the circuit opens.
pub const BASE_COOLDOWN: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Consecutive failures that open the circuit (at least 1).
    pub failures: u32,
    /// The first cool-down; it doubles with each opening in a row.
    pub base_cooldown: Duration,
    /// The longest cool-down.
    pub max_cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The metrics' figure: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// What a caller that wants to send a request may do.
#[derive(Debug)]
pub enum Admission {
    /// Send it, and report its outcome with the ticket.
    Go(Ticket),
    /// Nothing goes out before this instant (the cool-down).
    WaitUntil(Instant),
    /// The probe is out: wait for its outcome.
    WaitForProbe,
}

/// Leave to send one request; reported exactly once (succeeded, failed or released).
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct Ticket {
    term: u64,
    probe: bool,
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: Settings,
    phase: Phase,
    /// Consecutive failures while closed.
    failures: u32,
    /// Openings since the circuit was last closed.
    openings: u32,
    /// Changes whenever the circuit opens or closes: tickets of an older term are stale.
    term: u64,
}

impl Breaker {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Settings {
                failures: settings.failures.max(1),
                ..settings
            },
            phase: Phase::Closed,
            failures: 0,
            openings: 0,
            term: 0,
        }
    }

    pub fn state(&self) -> State {
        match self.phase {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Whether a request may go out at `now`. A `Go` ticket must be reported.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Go(Ticket {
                term: self.term,
                probe: false,
            }),
            Phase::Open { until } if now < until => Admission::WaitUntil(until),
            Phase::Open { .. } | Phase::HalfOpen { probing: false } => {
                self.phase = Phase::HalfOpen { probing: true };
                Admission::Go(Ticket {
                    term: self.term,
                    probe: true,
                })
            }
            Phase::HalfOpen { probing: true } => Admission::WaitForProbe,
        }
    }

    /// Mattermost answered (anything but a server error): it is up. Returns whether the
    /// circuit closed.
    pub fn succeeded(&mut self, _ticket: Ticket) -> bool {
        self.failures = 0;
        if self.phase == Phase::Closed {
            return false;
        }
        self.phase = Phase::Closed;
        self.openings = 0;
        self.term += 1;
        true
    }

    /// No answer, or a server error. `jitter` (in `[0, 1)`) shortens the cool-down by up to
    /// half. Returns whether the circuit opened.
    pub fn failed(&mut self, ticket: Ticket, now: Instant, jitter: f64) -> bool {
        if ticket.term != self.term {
            return false;
        }
        match self.phase {
            Phase::Closed => {
                self.failures += 1;
                if self.failures < self.settings.failures {
                    return false;
                }
            }
            Phase::HalfOpen { probing: true } if ticket.probe => {}
            _ => return false,
        }
        self.openings = self.openings.saturating_add(1);
        self.phase = Phase::Open {
            until: now + self.cooldown(jitter),
        };
        self.failures = 0;
        self.term += 1;
        true
    }

    /// The ticket's request was not sent: a probe frees its place for another caller.
    pub fn released(&mut self, ticket: Ticket) {
        if ticket.probe
            && ticket.term == self.term
            && self.phase == (Phase::HalfOpen { probing: true })
        {
            self.phase = Phase::HalfOpen { probing: false };
        }
    }

    /// The cool-down after the current number of openings in a row.
    fn cooldown(&self, jitter: f64) -> Duration {
        let doublings = self.openings.saturating_sub(1).min(31);
        let full = self
            .settings
            .base_cooldown
            .saturating_mul(1 << doublings)
            .min(self.settings.max_cooldown);
        full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// The shell: one [`Breaker`] behind a lock, waiters woken when it changes, its state in
/// the metrics.
#[derive(Debug)]
pub struct Circuit {
    breaker: Mutex<Breaker>,
    /// Bumped on every change of state.
    changed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl Circuit {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        metrics.circuit_state.set(State::Closed.gauge());
        Self {
            breaker: Mutex::new(Breaker::new(settings)),
            changed: watch::Sender::new(0),
            metrics,
        }
    }

    pub fn state(&self) -> State {
        self.lock().state()
    }

    /// The longest cool-down: also the longest wait before an operation is tried again.
    pub fn max_cooldown(&self) -> Duration {
        self.lock().settings.max_cooldown
    }

    /// The number of changes so far; see [`Circuit::closed_since`].
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Waits until a request may go out. Cancel-safe: dropping the future or the pass
    /// without a report gives a probe's place back.
    pub async fn admit(&self) -> Pass<'_> {
        loop {
            // Subscribed before looking, so no change between the two is missed.
            let mut changes = self.changed.subscribe();
            let admission = {
                let mut breaker = self.lock();
                let before = breaker.state();
                let admission = breaker.admit(now());
                self.note(before, &breaker, false);
                admission
            };
            match admission {
                Admission::Go(ticket) => {
                    return Pass {
                        circuit: self,
                        ticket: Some(ticket),
                    };
                }
                Admission::WaitUntil(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
                        _ = changes.changed() => {}
                    }
                }
                Admission::WaitForProbe => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// Returns once the circuit is closed after having changed since `version` (it opened
    /// and recovered): what failed while it was down is worth trying again at once.
    pub async fn closed_since(&self, version: u64) {
        loop {
            let mut changes = self.changed.subscribe();
            if *changes.borrow_and_update() != version && self.state() == State::Closed {
                return;
            }
            if changes.changed().await.is_err() {
                // The sender lives as long as `self`.
                std::future::pending::<()>().await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn report(&self, ticket: Ticket, outcome: Outcome) {
        let mut breaker = self.lock();
        let before = breaker.state();
        let opened = match outcome {
            Outcome::Answered => {
                breaker.succeeded(ticket);
                false
            }
            Outcome::Failed => breaker.failed(ticket, now(), rand::random::<f64>()),
            Outcome::Released => {
                breaker.released(ticket);
                false
            }
        };
        self.note(before, &breaker, opened);
    }

    /// Publishes a change of state: metrics, logs, waiters.
    fn note(&self, before: State, breaker: &Breaker, opened: bool) {
        let after = breaker.state();
        if after == before && !opened {
            return;
        }
        self.metrics.circuit_state.set(after.gauge());
        match after {
            State::Open => {
                self.metrics.circuit_opened.inc();
                let cooldown = match breaker.phase {
                    Phase::Open { until } => until.saturating_duration_since(now()),
                    _ => Duration::ZERO,
                };
                tracing::warn!(
                    ?cooldown,
                    openings = breaker.openings,
                    "Mattermost is not answering; circuit open"
                );
            }
            State::HalfOpen => tracing::info!("probing Mattermost"),
            State::Closed => tracing::info!("Mattermost answers again; circuit closed"),
        }
        self.changed.send_modify(|v| *v += 1);
    }
}

/// The shell's clock: tokio's, so tests can pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

enum Outcome {
    Answered,
    Failed,
    Released,
}

/// Leave to send one request. Report what happened; dropping it unreported releases it.
#[derive(Debug)]
#[must_use]
pub struct Pass<'a> {
    circuit: &'a Circuit,
    ticket: Option<Ticket>,
}

impl Pass<'_> {
    /// Mattermost answered, whatever it said.
    pub fn answered(mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.circuit.report(ticket, Outcome::Answered);
        }
    }

    /// No answer, or a server error.
    pub fn failed(mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.circuit.report(ticket, Outcome::Failed);
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.circuit.report(ticket, Outcome::Released);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SETTINGS: Settings = Settings {
        failures: 3,
        base_cooldown: Duration::from_millis(500),
        max_cooldown: Duration::from_secs(30),
    };

    #[derive(Debug, Clone)]
    enum Step {
        /// A caller asks to send a request.
        Admit,
        /// The oldest (`true`) or newest outstanding request got an answer.
        Answer(bool),
        /// … failed.
        Fail(bool, f64),
        /// … was never sent.
        Release(bool),
        /// Time passes, in milliseconds.
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => Just(Step::Admit),
            1 => any::<bool>().prop_map(Step::Answer),
            4 => (any::<bool>(), 0.0..1.0f64).prop_map(|(o, j)| Step::Fail(o, j)),
            1 => any::<bool>().prop_map(Step::Release),
            3 => (0..40_000u64).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Random callers, outcomes and waits against the rules of the module.
        #[test]
        fn one_probe_bounded_cool_downs_and_an_answer_closes(
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let mut breaker = Breaker::new(SETTINGS);
            let mut now = Instant::now();
            let mut outstanding: Vec<Ticket> = Vec::new();
            // Consecutive current-term failures reported while closed.
            let mut failures = 0;
            for step in steps {
                match step {
                    Step::Admit => match breaker.admit(now) {
                        Admission::Go(ticket) => {
                            if ticket.probe {
                                prop_assert_eq!(breaker.state(), State::HalfOpen);
                            } else {
                                prop_assert_eq!(breaker.state(), State::Closed, "only a probe goes out unless closed");
                            }
                            outstanding.push(ticket);
                        }
                        Admission::WaitUntil(until) => {
                            prop_assert_eq!(breaker.state(), State::Open);
                            prop_assert!(until > now);
                            prop_assert!(until - now <= SETTINGS.max_cooldown, "cool-down capped");
                        }
                        Admission::WaitForProbe => {
                            prop_assert_eq!(breaker.state(), State::HalfOpen);
                            let probes = outstanding.iter().filter(|t| t.probe && t.term == breaker.term).count();
                            prop_assert_eq!(probes, 1, "waiting for a probe that is out");
                        }
                    },
                    Step::Answer(oldest) => {
                        if let Some(ticket) = take(&mut outstanding, oldest) {
                            breaker.succeeded(ticket);
                            failures = 0;
                            prop_assert_eq!(breaker.state(), State::Closed, "an answer closes");
                            let admitted = breaker.admit(now);
                            prop_assert!(matches!(&admitted, Admission::Go(t) if !t.probe));
                            if let Admission::Go(t) = admitted {
                                outstanding.push(t);
                            }
                        }
                    }
                    Step::Fail(oldest, jitter) => {
                        if let Some(ticket) = take(&mut outstanding, oldest) {
                            let current = ticket.term == breaker.term;
                            let was = breaker.state();
                            let probe = ticket.probe;
                            let opened = breaker.failed(ticket, now, jitter);
                            match (was, current) {
                                (State::Closed, true) => {
                                    failures += 1;
                                    prop_assert_eq!(opened, failures >= SETTINGS.failures, "opens after consecutive failures");
                                }
                                (State::HalfOpen, true) if probe => prop_assert!(opened, "a failed probe opens again"),
                                _ => prop_assert!(!opened, "a stale failure counts for nothing"),
                            }
                            if opened {
                                failures = 0;
                                let Phase::Open { until } = breaker.phase else {
                                    panic!("opened: {:?}", breaker.phase);
                                };
                                let cooldown = until - now;
                                prop_assert!(cooldown >= SETTINGS.base_cooldown / 2, "{cooldown:?}");
                                prop_assert!(cooldown <= SETTINGS.max_cooldown, "cool-down capped: {cooldown:?}");
                            }
                        }
                    }
                    Step::Release(oldest) => {
                        if let Some(ticket) = take(&mut outstanding, oldest) {
                            breaker.released(ticket);
                        }
                    }
                    Step::Wait(ms) => now += Duration::from_millis(ms),
                }
                // Never more than one probe of the current term out.
                let probes = outstanding.iter().filter(|t| t.probe && t.term == breaker.term).count();
                prop_assert!(probes <= 1, "{probes} probes out");
                if breaker.state() != State::HalfOpen {
                    prop_assert_eq!(probes, 0);
                }
                // Never stuck: with no probe out, the end of the cool-down lets one go.
                if probes == 0 && breaker.state() != State::Closed {
                    let mut copy = breaker.clone();
                    let later = now + SETTINGS.max_cooldown;
                    prop_assert!(matches!(copy.admit(later), Admission::Go(t) if t.probe));
                }
            }
        }
    }

    fn take(outstanding: &mut Vec<Ticket>, oldest: bool) -> Option<Ticket> {
        if outstanding.is_empty() {
            None
        } else if oldest {
            Some(outstanding.remove(0))
        } else {
            outstanding.pop()
        }
    }

    #[test]
    fn cool_downs_double_up_to_the_cap_and_jitter_only_shortens_them() {
        let mut breaker = Breaker::new(SETTINGS);
        let mut now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..SETTINGS.failures {
            let Admission::Go(t) = breaker.admit(now) else {
                panic!("closed")
            };
            breaker.failed(t, now, 0.0);
        }
        for _ in 0..10 {
            let Admission::WaitUntil(until) = breaker.admit(now) else {
                panic!("open")
            };
            seen.push(until - now);
            now = until;
            let Admission::Go(probe) = breaker.admit(now) else {
                panic!("a probe after the cool-down")
            };
            assert!(probe.is_probe());
            assert!(matches!(breaker.admit(now), Admission::WaitForProbe));
            breaker.failed(probe, now, 0.0);
        }
        let secs: Vec<f64> = seen.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(
            secs,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0],
            "doubling from 0.5 s, capped at 30 s"
        );
        let Admission::Go(probe) = breaker.admit(now + Duration::from_secs(30)) else {
            panic!("probe")
        };
        breaker.failed(probe, now, 0.999);
        let Admission::WaitUntil(until) = breaker.admit(now) else {
            panic!("open")
        };
        assert!(until - now > Duration::from_secs(15) && until - now <= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_callers_send_one_probe_and_all_go_once_it_is_answered() {
        let circuit = Arc::new(Circuit::new(SETTINGS, Arc::new(Metrics::default())));
        for _ in 0..SETTINGS.failures {
            circuit.admit().await.failed();
        }
        assert_eq!(circuit.state(), State::Open);
        let version = circuit.version();
        // Ten callers wait; the cool-down ends; exactly one of them gets through.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut callers = tokio::task::JoinSet::new();
        for i in 0..10 {
            let circuit = circuit.clone();
            let tx = tx.clone();
            callers.spawn(async move {
                let pass = circuit.admit().await;
                tx.send((i, pass.ticket.as_ref().is_some_and(Ticket::is_probe)))
                    .unwrap();
                // Mattermost answers every request that goes out.
                pass.answered();
            });
        }
        let recovered = {
            let circuit = circuit.clone();
            tokio::spawn(async move { circuit.closed_since(version).await })
        };
        let (_, probe) = rx.recv().await.unwrap();
        assert!(probe, "the first to go is the probe");
        while callers.join_next().await.is_some() {}
        let mut rest = 0;
        while let Ok((_, probe)) = rx.try_recv() {
            assert!(!probe, "one probe only");
            rest += 1;
        }
        assert_eq!(rest, 9, "the others went once it was answered");
        recovered.await.unwrap();
        assert_eq!(circuit.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_lets_another_caller_probe() {
        let circuit = Circuit::new(SETTINGS, Arc::new(Metrics::default()));
        for _ in 0..SETTINGS.failures {
            circuit.admit().await.failed();
        }
        let probe = circuit.admit().await;
        assert_eq!(circuit.state(), State::HalfOpen);
        drop(probe);
        let again = tokio::time::timeout(Duration::from_secs(1), circuit.admit())
            .await
            .expect("the place was given back");
        assert!(again.ticket.as_ref().is_some_and(Ticket::is_probe));
        again.answered();
        assert_eq!(circuit.state(), State::Closed);
    }
}
