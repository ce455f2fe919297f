//! The docker runtime's warm pool: containers created, started and with the CLI
//! initialized (the `initialize` control request answered) before any thread needs them,
//! so a new session skips the container start and the CLI's boot.
//!
//! What the protocol allows to set late is set when a pooled container is taken: the
//! container is renamed to the session's name, and a permission mode other than the
//! pool's is switched with `set_permission_mode`. What it does not allow — `--resume`,
//! a restored checkpoint, another `--model` — makes the start a miss: a cold start, as
//! without a pool. A taken container is replaced in the background; a container that died
//! while waiting is discarded and the next one is tried.
//!
//! A pooled session's files live in the pool volume, which is deleted with its container:
//! its data survives a stop only through checkpoints (which every resumed start restores).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Session;

/// After a failed fill, wait this long before the next try.
const FILL_BACKOFF: Duration = Duration::from_secs(5);

/// Why a start did not use the pool (the `reason` label of the misses counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No ready container (the pool is still filling, or every one was taken).
    Empty,
    /// The session resumes a conversation or restores a checkpoint.
    Resume,
    /// The session wants another model than the pool's CLIs run.
    Model,
}

impl Miss {
    fn label(self) -> &'static str {
        match self {
            Miss::Empty => "empty",
            Miss::Resume => "resume",
            Miss::Model => "model",
        }
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// The pool's metrics; register them with [`PoolMetrics::register`].
#[derive(Debug, Clone, Default)]
pub struct PoolMetrics {
    pub hits: Counter,
    pub misses: Family<Labels, Counter>,
    pub ready: Gauge,
    pub fill_failures: Counter,
}

impl PoolMetrics {
    /// Registers the pool's metrics, each miss reason created at 0.
    pub fn register(&self, registry: &mut Registry) {
        for reason in [Miss::Empty, Miss::Resume, Miss::Model] {
            let _ = self.misses.get_or_create(&vec![("reason", reason.label())]);
        }
        registry.register(
            "warm_pool_hits",
            "New sessions started from a warm container",
            self.hits.clone(),
        );
        registry.register(
            "warm_pool_misses",
            "Session starts that could not use the warm pool, by reason",
            self.misses.clone(),
        );
        registry.register(
            "warm_pool_ready",
            "Warm containers ready to be taken",
            self.ready.clone(),
        );
        registry.register(
            "warm_pool_fill_failures",
            "Warm containers that failed to start",
            self.fill_failures.clone(),
        );
    }

    pub(crate) fn miss(&self, reason: Miss) {
        self.misses
            .get_or_create(&vec![("reason", reason.label())])
            .inc();
    }
}

/// Ready sessions (named `pool-…`) and the signal that one was taken.
#[derive(Debug)]
pub(crate) struct WarmPool {
    pub(crate) size: usize,
    ready: Mutex<VecDeque<Session>>,
    taken: Notify,
    pub(crate) metrics: PoolMetrics,
}

impl WarmPool {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            size,
            ready: Mutex::new(VecDeque::new()),
            taken: Notify::new(),
            metrics: PoolMetrics::default(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.size > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Session>> {
        self.ready.lock().expect("warm pool lock")
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The oldest ready session, if any; the refill loop is told either way.
    pub(crate) fn take(&self) -> Option<Session> {
        let session = self.lock().pop_front();
        self.metrics.ready.set(self.len() as i64);
        self.taken.notify_one();
        session
    }

    fn put(&self, session: Session) {
        let mut ready = self.lock();
        ready.push_back(session);
        self.metrics.ready.set(ready.len() as i64);
    }

    /// Keeps the pool full until `shutdown`, then removes what it holds. `fill` starts
    /// one pooled session; `discard` removes one.
    pub(crate) async fn keep_filled<F, Fut, D, DFut>(
        &self,
        shutdown: CancellationToken,
        fill: F,
        discard: D,
    ) where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Session, super::Error>>,
        D: Fn(Session) -> DFut,
        DFut: std::future::Future<Output = ()>,
    {
        if !self.enabled() {
            return;
        }
        while !shutdown.is_cancelled() {
            if self.len() >= self.size {
                tokio::select! {
                    () = self.taken.notified() => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            // A fill is not cancelled midway (it takes about a second); shutdown is
            // checked between fills and the filled session is discarded below.
            match fill().await {
                Ok(session) => {
                    tracing::debug!(session_id = %session.id(), "warm container ready");
                    self.put(session);
                }
                Err(err) => {
                    self.metrics.fill_failures.inc();
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "a warm container failed to start; retrying in {FILL_BACKOFF:?}"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(FILL_BACKOFF) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        let leftovers: Vec<Session> = self.lock().drain(..).collect();
        self.metrics.ready.set(0);
        for session in leftovers {
            discard(session).await;
        }
    }
}
