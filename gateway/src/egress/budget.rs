//! The fleet's Mattermost request budget: a token bucket refilled at the configured rate,
//! which also stops everything while the server says to (429 `Retry-After`, or
//! `X-RateLimit-Remaining: 0` until `X-RateLimit-Reset`).
//!
//! Only the egress leader calls Mattermost for replies (see ARCHITECTURE.md), so one
//! in-process bucket is the whole fleet's budget.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Budget {
    state: Mutex<State>,
    rate: f64,
    burst: f64,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
    paused_until: Option<Instant>,
}

impl Budget {
    /// `rate` requests per second, at most `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            state: Mutex::new(State {
                tokens: burst,
                refilled: Instant::now(),
                paused_until: None,
            }),
            rate: f64::from(rate.max(1)),
            burst,
        }
    }

    /// Waits until a request may be sent, and takes its token.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().expect("budget lock");
                let now = Instant::now();
                if let Some(until) = state.paused_until {
                    if now < until {
                        Some(until - now)
                    } else {
                        state.paused_until = None;
                        None
                    }
                } else {
                    None
                }
                .or_else(|| {
                    let elapsed = now.duration_since(state.refilled).as_secs_f64();
                    state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
                    state.refilled = now;
                    if state.tokens >= 1.0 {
                        state.tokens -= 1.0;
                        None
                    } else {
                        Some(Duration::from_secs_f64((1.0 - state.tokens) / self.rate))
                    }
                })
            };
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Stops every request for `duration` (the server asked us to).
    pub fn pause(&self, duration: Duration) {
        let mut state = self.state.lock().expect("budget lock");
        let until = Instant::now() + duration;
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
        state.tokens = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let budget = Budget::new(10, 5);
        let start = Instant::now();
        for _ in 0..25 {
            budget.acquire().await;
        }
        // 5 at once, then 20 more at 10/s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2100),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request() {
        let budget = Budget::new(100, 100);
        budget.pause(Duration::from_secs(3));
        let start = Instant::now();
        budget.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(3));
    }
}
