//! The egress gateway's decisions, without I/O: which session a credential names, and
//! whether that session may reach a target. The shell (`super`) parses requests into a
//! [`Target`] and a presented token, asks [`Policy::decide`], and forwards or refuses.
//!
//! Invariants: a token is issued only by [`Sessions::issue`] from randomness the caller
//! supplies, names one session, and stops working when revoked; nothing but a current
//! token ever yields [`Decision::Forward`]; a host reaches [`Decision::Forward`] only when
//! an allow-list pattern matches it (the model API is reached as the gateway itself, never
//! by host name).

use std::collections::HashMap;

use common::config::HostPattern;
use proto::ids::SessionId;

/// Prefix of session tokens, so one found in a log is recognisable.
pub const TOKEN_PREFIX: &str = "ccfleet-session-";

/// Where a request wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The model API (a request to the gateway as `ANTHROPIC_BASE_URL`).
    Model,
    /// Another host, through the proxy (plain HTTP or CONNECT).
    Host { host: String, port: u16 },
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one this gateway did not issue or has revoked.
    UnknownSession,
    /// The host is not on the session's allow-list.
    NotAllowed { host: String, port: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward { session: SessionId },
    Refuse(Refusal),
}

/// The live sessions' tokens. Only the worker holds them (in memory): a session restored
/// on another worker gets a new one there. `Debug` shows how many, not the tokens.
#[derive(Default)]
pub struct Sessions {
    by_token: HashMap<String, SessionId>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("tokens", &self.by_token.len())
            .finish()
    }
}

impl Sessions {
    /// A new token for `session` made from `random` (at least 16 bytes of the caller's
    /// randomness); the session's earlier tokens stop working.
    pub fn issue(&mut self, session: &SessionId, random: &[u8]) -> String {
        assert!(random.len() >= 16, "a session token needs 128 random bits");
        self.revoke(session);
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + 2 * random.len());
        token.push_str(TOKEN_PREFIX);
        for b in random {
            token.push_str(&format!("{b:02x}"));
        }
        self.by_token.insert(token.clone(), session.clone());
        token
    }

    /// The session's tokens stop working.
    pub fn revoke(&mut self, session: &SessionId) {
        self.by_token.retain(|_, s| s != session);
    }

    /// The session's tokens now name `to` (a warm container taken by a session).
    pub fn rename(&mut self, from: &SessionId, to: &SessionId) {
        self.revoke(to);
        for s in self.by_token.values_mut() {
            if s == from {
                *s = to.clone();
            }
        }
    }

    pub fn session(&self, token: &str) -> Option<&SessionId> {
        self.by_token.get(token)
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

/// What sessions may reach (global for now: one allow-list for every session).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<HostPattern>,
}

impl Policy {
    pub fn new(allowed: Vec<HostPattern>) -> Self {
        Self { allowed }
    }

    /// Whether `host:port` is on the allow-list. Hosts compare case-insensitively and
    /// without a trailing dot; `*.example.com` matches subdomains only.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.allowed.iter().any(|p| {
            let host_ok = if p.subdomains {
                host.len() > p.host.len() + 1
                    && host.ends_with(&p.host)
                    && host.as_bytes()[host.len() - p.host.len() - 1] == b'.'
            } else {
                host == p.host
            };
            host_ok && p.port.is_none_or(|allowed| allowed == port)
        })
    }

    /// Forward or refuse a request presenting `token` for `target`.
    pub fn decide(&self, sessions: &Sessions, token: Option<&str>, target: &Target) -> Decision {
        let Some(session) = token.and_then(|t| sessions.session(t)) else {
            return Decision::Refuse(Refusal::UnknownSession);
        };
        match target {
            Target::Model => Decision::Forward {
                session: session.clone(),
            },
            Target::Host { host, port } if self.allows(host, *port) => Decision::Forward {
                session: session.clone(),
            },
            Target::Host { host, port } => Decision::Refuse(Refusal::NotAllowed {
                host: host.clone(),
                port: *port,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(patterns: &[&str]) -> Policy {
        Policy::new(
            patterns
                .iter()
                .map(|p| HostPattern::parse(p).expect("a valid pattern"))
                .collect(),
        )
    }

    fn host(host: &str, port: u16) -> Target {
        Target::Host {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn exact_wildcard_and_port_patterns() {
        let p = policy(&["pypi.org", "*.example.com", "git.local:8443"]);
        assert!(p.allows("pypi.org", 443));
        assert!(p.allows("PyPI.org.", 80));
        assert!(!p.allows("files.pypi.org", 443));
        assert!(p.allows("api.example.com", 443));
        assert!(p.allows("a.b.example.com", 443));
        assert!(!p.allows("example.com", 443), "*. is subdomains only");
        assert!(!p.allows("evilexample.com", 443));
        assert!(!p.allows("example.com.evil.net", 443));
        assert!(p.allows("git.local", 8443));
        assert!(!p.allows("git.local", 443));
    }

    #[test]
    fn the_model_needs_only_a_current_token() {
        let mut sessions = Sessions::default();
        let s = SessionId::new("s1");
        let token = sessions.issue(&s, &[7; 16]);
        let p = policy(&[]);
        assert_eq!(
            p.decide(&sessions, Some(&token), &Target::Model),
            Decision::Forward { session: s.clone() }
        );
        assert_eq!(
            p.decide(&sessions, None, &Target::Model),
            Decision::Refuse(Refusal::UnknownSession)
        );
        assert_eq!(
            p.decide(&sessions, Some(&token), &host("pypi.org", 443)),
            Decision::Refuse(Refusal::NotAllowed {
                host: "pypi.org".into(),
                port: 443
            })
        );
        sessions.revoke(&s);
        assert_eq!(
            p.decide(&sessions, Some(&token), &Target::Model),
            Decision::Refuse(Refusal::UnknownSession)
        );
    }

    #[test]
    fn a_taken_warm_token_names_the_new_session() {
        let mut sessions = Sessions::default();
        let (pool, s) = (SessionId::new("pool-1"), SessionId::new("s1"));
        let token = sessions.issue(&pool, &[1; 16]);
        sessions.rename(&pool, &s);
        assert_eq!(sessions.session(&token), Some(&s));
        assert_eq!(sessions.len(), 1);
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?"
    }

    fn hostname() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Issue(usize, [u8; 16]),
        Revoke(usize),
        Rename(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, any::<[u8; 16]>()).prop_map(|(s, r)| Op::Issue(s, r)),
            (0..4usize).prop_map(Op::Revoke),
            (0..4usize, 0..4usize).prop_map(|(a, b)| Op::Rename(a, b)),
        ]
    }

    proptest! {
        /// A host is allowed exactly when it equals a pattern's host, or (for `*.`) ends
        /// with `.` + it; the port must match when the pattern names one.
        #[test]
        fn allowed_iff_a_pattern_matches(
            patterns in prop::collection::vec((hostname(), any::<bool>(), prop::option::of(1..65535u16)), 0..4),
            target in hostname(),
            port in 1..65535u16,
            upper in any::<bool>(),
        ) {
            let text: Vec<String> = patterns.iter().map(|(h, sub, port)| {
                let mut s = if *sub { format!("*.{h}") } else { h.clone() };
                if let Some(p) = port { s.push_str(&format!(":{p}")); }
                s
            }).collect();
            let p = Policy::new(text.iter().map(|t| HostPattern::parse(t).unwrap()).collect());
            let expected = patterns.iter().any(|(h, sub, pp)| {
                let host_ok = if *sub { target.ends_with(&format!(".{h}")) } else { target == *h };
                host_ok && pp.is_none_or(|pp| pp == port)
            });
            let asked = if upper { target.to_ascii_uppercase() } else { target.clone() };
            prop_assert_eq!(p.allows(&asked, port), expected);
            let mut sessions = Sessions::default();
            let token = sessions.issue(&SessionId::new("s"), &[9; 16]);
            let decision = p.decide(&sessions, Some(&token), &host(&asked, port));
            prop_assert_eq!(matches!(decision, Decision::Forward { .. }), expected);
        }

        /// Over any sequence of issues, revocations and renames: only the latest token a
        /// session was issued (or inherited by rename) forwards, and it names that session;
        /// every other token ever issued is refused, for the model and for any host.
        #[test]
        fn only_current_tokens_forward(ops in prop::collection::vec(op(), 0..40), probe in hostname()) {
            let ids: Vec<SessionId> = (0..4).map(|i| SessionId::new(format!("s{i}"))).collect();
            let mut sessions = Sessions::default();
            let mut current: HashMap<String, SessionId> = HashMap::new();
            let mut issued: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Issue(s, random) => {
                        current.retain(|_, v| *v != ids[s]);
                        let t = sessions.issue(&ids[s], &random);
                        prop_assert!(t.starts_with(TOKEN_PREFIX));
                        current.insert(t.clone(), ids[s].clone());
                        issued.push(t);
                    }
                    Op::Revoke(s) => {
                        current.retain(|_, v| *v != ids[s]);
                        sessions.revoke(&ids[s]);
                    }
                    Op::Rename(a, b) => {
                        current.retain(|_, v| *v != ids[b]);
                        for v in current.values_mut() {
                            if *v == ids[a] { *v = ids[b].clone(); }
                        }
                        sessions.rename(&ids[a], &ids[b]);
                    }
                }
            }
            let p = policy(&["*.allowed-zone.test"]);
            for t in &issued {
                let model = p.decide(&sessions, Some(t), &Target::Model);
                match current.get(t) {
                    Some(s) => prop_assert_eq!(model, Decision::Forward { session: s.clone() }),
                    None => prop_assert_eq!(model, Decision::Refuse(Refusal::UnknownSession)),
                }
                let elsewhere = p.decide(&sessions, Some(t), &host(&probe, 443));
                prop_assert!(!matches!(elsewhere, Decision::Forward { .. }), "{probe} is not allowed");
            }
            prop_assert_eq!(sessions.len(), current.len());
        }
    }
}
