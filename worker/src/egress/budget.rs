//! Budgets, without I/O: whether a session's next model request may go out, given what
//! its owner, its channel and the session have spent and the top-ups given in the thread.
//!
//! Invariants: a budget of 0 is none; a request is held exactly when some budget's spend
//! has reached its limit plus its top-ups; the budget named is the first reached in the
//! order session, user, channel (the narrowest first, so the person who can act on it is
//! asked about the thing they control).

/// Which budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    Session,
    UserDay,
    ChannelDay,
}

impl Budget {
    pub const ALL: [Budget; 3] = [Budget::Session, Budget::UserDay, Budget::ChannelDay];

    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Session => "session",
            Budget::UserDay => "user_day",
            Budget::ChannelDay => "channel_day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Budget::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// For people: "this session's budget", "@alice's daily budget", ….
    pub fn describe(self, user: &str) -> String {
        match self {
            Budget::Session => "this session's budget".to_owned(),
            Budget::UserDay => format!("@{user}'s daily budget"),
            Budget::ChannelDay => "this channel's daily budget".to_owned(),
        }
    }
}

/// Amounts in US dollars per budget.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Amounts {
    pub session: f64,
    pub user_day: f64,
    pub channel_day: f64,
}

impl Amounts {
    pub fn get(&self, budget: Budget) -> f64 {
        match budget {
            Budget::Session => self.session,
            Budget::UserDay => self.user_day,
            Budget::ChannelDay => self.channel_day,
        }
    }

    pub fn get_mut(&mut self, budget: Budget) -> &mut f64 {
        match budget {
            Budget::Session => &mut self.session,
            Budget::UserDay => &mut self.user_day,
            Budget::ChannelDay => &mut self.channel_day,
        }
    }
}

impl From<&common::config::BudgetsConfig> for Amounts {
    fn from(config: &common::config::BudgetsConfig) -> Self {
        Self {
            session: config.session_usd,
            user_day: config.user_daily_usd,
            channel_day: config.channel_daily_usd,
        }
    }
}

/// A budget that is used up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reached {
    pub budget: Budget,
    pub spent: f64,
    /// The configured limit plus the top-ups.
    pub limit: f64,
}

/// The first budget whose spend reached its limit (`limits`, 0 = none) plus its
/// `top_ups`; `None`: the request may go out.
pub fn check(limits: &Amounts, spent: &Amounts, top_ups: &Amounts) -> Option<Reached> {
    Budget::ALL.into_iter().find_map(|budget| {
        let limit = limits.get(budget);
        if limit <= 0.0 {
            return None;
        }
        let limit = limit + top_ups.get(budget);
        let spent = spent.get(budget);
        (spent >= limit).then_some(Reached {
            budget,
            spent,
            limit,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amounts() -> impl Strategy<Value = Amounts> {
        (0.0..10.0f64, 0.0..10.0f64, 0.0..10.0f64).prop_map(|(session, user_day, channel_day)| {
            Amounts {
                session,
                user_day,
                channel_day,
            }
        })
    }

    fn limits() -> impl Strategy<Value = Amounts> {
        let one = prop_oneof![Just(0.0), 0.01..10.0f64];
        (one.clone(), one.clone(), one).prop_map(|(session, user_day, channel_day)| Amounts {
            session,
            user_day,
            channel_day,
        })
    }

    #[test]
    fn zero_is_no_budget_and_a_top_up_lets_requests_go_on() {
        let limits = Amounts {
            user_day: 1.0,
            ..Amounts::default()
        };
        let spent = Amounts {
            session: 50.0,
            user_day: 1.0,
            channel_day: 50.0,
        };
        assert_eq!(
            check(&limits, &spent, &Amounts::default()),
            Some(Reached {
                budget: Budget::UserDay,
                spent: 1.0,
                limit: 1.0
            })
        );
        let top_up = Amounts {
            user_day: 1.0,
            ..Amounts::default()
        };
        assert_eq!(check(&limits, &spent, &top_up), None);
    }

    proptest! {
        /// Held exactly when some configured budget is used up, naming the narrowest.
        #[test]
        fn held_iff_a_budget_is_used_up(limits in limits(), spent in amounts(), top_ups in amounts()) {
            let used_up: Vec<Budget> = Budget::ALL
                .into_iter()
                .filter(|b| limits.get(*b) > 0.0 && spent.get(*b) >= limits.get(*b) + top_ups.get(*b))
                .collect();
            let verdict = check(&limits, &spent, &top_ups);
            prop_assert_eq!(verdict.map(|r| r.budget), used_up.first().copied());
            if let Some(r) = verdict {
                prop_assert!(r.spent >= r.limit);
                prop_assert_eq!(r.limit, limits.get(r.budget) + top_ups.get(r.budget));
            }
        }
    }
}
