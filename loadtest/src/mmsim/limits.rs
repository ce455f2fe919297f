//! Server limits and faults: the GCRA rate limiter (as `throttled` implements it for the
//! server), added latency, injected 500s, and per-route request counters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::server::lock;

/// `RateLimitSettings`: requests per second per key, and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_sec: u32,
    pub max_burst: u32,
    /// Key by session token instead of remote address (`VaryByUser`).
    #[serde(default)]
    pub vary_by_user: bool,
}

impl Default for RateLimit {
    /// The server's defaults (the limiter itself is off by default).
    fn default() -> Self {
        RateLimit {
            per_sec: 10,
            max_burst: 100,
            vary_by_user: false,
        }
    }
}

/// Injected `500` answers: the next `count` matching requests, then a `fraction` of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fault500 {
    pub count: u64,
    pub fraction: f64,
    /// Only this HTTP method (e.g. `"PUT"`), if set.
    pub method: Option<String>,
    /// Only this route template (e.g. `"/api/v4/posts/{post_id}/patch"`), if set.
    pub route: Option<String>,
    /// Only requests made as this user (by its session or access token), if set: the
    /// bot's requests fail while people keep posting.
    pub user_id: Option<String>,
}

/// Runtime faults and limits, settable over `PUT /sim/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub rate_limit: Option<RateLimit>,
    pub error_500: Option<Fault500>,
    pub latency_ms: u64,
}

/// Rate-limit figures for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitInfo {
    pub limit: u64,
    pub remaining: u64,
    pub reset_s: u64,
    pub retry_after_s: u64,
}

pub(crate) enum Decision {
    Off,
    Allowed(LimitInfo),
    Limited(LimitInfo),
}

impl Decision {
    pub fn info(&self) -> Option<&LimitInfo> {
        match self {
            Decision::Off => None,
            Decision::Allowed(i) | Decision::Limited(i) => Some(i),
        }
    }
}

/// Keys kept before idle ones are dropped (`MemoryStoreSize`).
const MAX_KEYS: usize = 10_000;

/// Generic cell rate algorithm over theoretical arrival times, as `throttled.GCRARateLimiter`:
/// `limit = burst + 1`, tolerance `emission × (burst + 1)`.
struct Gcra {
    emission: f64,
    tolerance: f64,
    limit: u64,
    epoch: Instant,
    tats: HashMap<String, f64>,
}

impl Gcra {
    fn new(rl: RateLimit) -> Self {
        let emission = 1.0 / f64::from(rl.per_sec.max(1));
        Gcra {
            emission,
            tolerance: emission * (f64::from(rl.max_burst) + 1.0),
            limit: u64::from(rl.max_burst) + 1,
            epoch: Instant::now(),
            tats: HashMap::new(),
        }
    }

    fn check(&mut self, key: &str) -> Decision {
        let now = self.epoch.elapsed().as_secs_f64();
        if self.tats.len() > MAX_KEYS {
            self.tats.retain(|_, tat| *tat > now);
        }
        let tat = self.tats.get(key).copied().unwrap_or(now);
        let new_tat = tat.max(now) + self.emission;
        let allow_at = new_tat - self.tolerance;
        let diff = now - allow_at;
        let (limited, ttl, retry_after) = if diff < 0.0 {
            (true, tat - now, -diff)
        } else {
            self.tats.insert(key.to_owned(), new_tat);
            (false, new_tat - now, 0.0)
        };
        let next = self.tolerance - ttl;
        let remaining = if next > -self.emission {
            (next / self.emission).max(0.0) as u64
        } else {
            0
        };
        let info = LimitInfo {
            limit: self.limit,
            remaining,
            reset_s: ttl.max(0.0).ceil() as u64,
            retry_after_s: retry_after.ceil() as u64,
        };
        if limited {
            Decision::Limited(info)
        } else {
            Decision::Allowed(info)
        }
    }
}

/// One (method, route, status) counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCount {
    pub method: String,
    pub route: String,
    pub status: u16,
    pub count: u64,
}

pub(crate) struct Limits {
    faults: Mutex<Faults>,
    gcra: Mutex<Option<Gcra>>,
    vary_by_user: AtomicBool,
    latency_ms: AtomicU64,
    counters: Mutex<HashMap<(String, String, u16), u64>>,
}

impl Limits {
    pub fn new(faults: Faults) -> Self {
        let limits = Limits {
            faults: Mutex::new(Faults::default()),
            gcra: Mutex::new(None),
            vary_by_user: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            counters: Mutex::new(HashMap::new()),
        };
        limits.set_faults(faults);
        limits
    }

    /// Replaces faults and limits; the limiter starts afresh.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.gcra) = faults.rate_limit.map(Gcra::new);
        self.vary_by_user.store(
            faults.rate_limit.is_some_and(|r| r.vary_by_user),
            Ordering::Relaxed,
        );
        self.latency_ms.store(faults.latency_ms, Ordering::Relaxed);
        *lock(&self.faults) = faults;
    }

    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    pub fn vary_by_user(&self) -> bool {
        self.vary_by_user.load(Ordering::Relaxed)
    }

    pub fn check_rate(&self, key: &str) -> Decision {
        match lock(&self.gcra).as_mut() {
            Some(g) => g.check(key),
            None => Decision::Off,
        }
    }

    /// Whether to fail this request with an injected 500. `user` names who makes it; it
    /// is asked only when a fault is limited to one user.
    pub fn take_fault(
        &self,
        method: &str,
        route: &str,
        user: impl FnOnce() -> Option<String>,
    ) -> bool {
        if route == "/api/v4/websocket" || !route.starts_with("/api/v4/") {
            return false;
        }
        let mut faults = lock(&self.faults);
        let Some(f) = faults.error_500.as_mut() else {
            return false;
        };
        if f.method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
            || f.route.as_deref().is_some_and(|r| r != route)
        {
            return false;
        }
        if let Some(only) = f.user_id.as_deref()
            && user().as_deref() != Some(only)
        {
            return false;
        }
        if f.count > 0 {
            f.count -= 1;
            return true;
        }
        f.fraction > 0.0 && rand::random::<f64>() < f.fraction
    }

    pub fn count(&self, method: &str, route: &str, status: u16) {
        let mut counters = lock(&self.counters);
        *counters
            .entry((method.to_owned(), route.to_owned(), status))
            .or_insert(0) += 1;
    }

    pub fn counts(&self) -> Vec<RouteCount> {
        let mut out: Vec<RouteCount> = lock(&self.counters)
            .iter()
            .map(|((method, route, status), count)| RouteCount {
                method: method.clone(),
                route: route.clone(),
                status: *status,
                count: *count,
            })
            .collect();
        out.sort_by(|a, b| (&a.route, &a.method, a.status).cmp(&(&b.route, &b.method, b.status)));
        out
    }

    pub fn reset_counts(&self) {
        lock(&self.counters).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gcra_allows_burst_then_rate() {
        let mut g = Gcra::new(RateLimit {
            per_sec: 10,
            max_burst: 4,
            vary_by_user: false,
        });
        let mut allowed = 0;
        for _ in 0..10 {
            if matches!(g.check("k"), Decision::Allowed(_)) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5, "burst + 1 requests pass at once");
        let Decision::Limited(info) = g.check("k") else {
            panic!("expected a limit");
        };
        assert_eq!(info.limit, 5);
        assert_eq!(info.remaining, 0);
        assert_eq!(info.retry_after_s, 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(matches!(g.check("k"), Decision::Allowed(_)));
        assert!(matches!(g.check("other"), Decision::Allowed(_)));
    }

    #[test]
    fn faults_count_down_and_filter() {
        let limits = Limits::new(Faults {
            error_500: Some(Fault500 {
                count: 2,
                method: Some("PUT".into()),
                route: Some("/api/v4/posts/{post_id}/patch".into()),
                ..Fault500::default()
            }),
            ..Faults::default()
        });
        let anyone = || None;
        assert!(!limits.take_fault("POST", "/api/v4/posts", anyone));
        assert!(limits.take_fault("PUT", "/api/v4/posts/{post_id}/patch", anyone));
        assert!(limits.take_fault("PUT", "/api/v4/posts/{post_id}/patch", anyone));
        assert!(!limits.take_fault("PUT", "/api/v4/posts/{post_id}/patch", anyone));
    }

    #[test]
    fn a_fault_for_one_user_spares_the_others() {
        let limits = Limits::new(Faults {
            error_500: Some(Fault500 {
                fraction: 1.0,
                user_id: Some("bot".into()),
                ..Fault500::default()
            }),
            ..Faults::default()
        });
        assert!(limits.take_fault("POST", "/api/v4/posts", || Some("bot".into())));
        assert!(!limits.take_fault("POST", "/api/v4/posts", || Some("alice".into())));
        assert!(!limits.take_fault("POST", "/api/v4/posts", || None));
    }
}
