//! The egress gateway's decisions, without I/O: which session a credential names, and
//! whether that session may reach a target. The shell (`super`) parses requests into a
//! [`Target`] and a presented token, asks [`Policy::decide`], and forwards or refuses.
//!
//! Invariants: a token is issued only by [`Sessions::issue`] from randomness the caller
//! supplies, names one session, and stops working when revoked; nothing but a current
//! token ever yields [`Decision::Forward`]; a host reaches [`Decision::Forward`] only when
//! the global allow-list, the session's channel's list or a grant of that session matches
//! it (the model API is reached as the gateway itself, never by host name); a grant for
//! one request is used by exactly one request; one session's grants never open a host to
//! another session.

use std::collections::{HashMap, HashSet};

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

/// How long an allowance in the thread lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The next request to the host (one plain request or one tunnel).
    Once,
    /// Every request of the session.
    Session,
}

/// What one session may reach besides the global allow-list: its channel's list
/// (configuration) and what the thread allowed.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub channel: Vec<HostPattern>,
    /// Hosts (lower case, no trailing dot) allowed for the session, any port.
    pub hosts: HashSet<String>,
    /// Hosts allowed for one more request each: how many.
    pub once: HashMap<String, u32>,
}

/// The live sessions' tokens and grants. Only the worker holds them (in memory): a session
/// restored on another worker gets a new token there, and its grants again from the
/// record. `Debug` shows how many, not the tokens.
#[derive(Default)]
pub struct Sessions {
    by_token: HashMap<String, SessionId>,
    grants: HashMap<SessionId, Grants>,
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

    /// The session's tokens stop working (its grants stay until [`Sessions::forget`]:
    /// a new token for the same session keeps what the thread allowed).
    pub fn revoke(&mut self, session: &SessionId) {
        self.by_token.retain(|_, s| s != session);
    }

    /// The session's tokens stop working and its grants are dropped.
    pub fn forget(&mut self, session: &SessionId) {
        self.revoke(session);
        self.grants.remove(session);
    }

    /// The session's tokens now name `to` (a warm container taken by a session); the warm
    /// container had no grants of its own.
    pub fn rename(&mut self, from: &SessionId, to: &SessionId) {
        self.revoke(to);
        self.grants.remove(from);
        for s in self.by_token.values_mut() {
            if s == from {
                *s = to.clone();
            }
        }
    }

    /// The hosts of the session's channel (replacing earlier ones).
    pub fn set_channel(&mut self, session: &SessionId, hosts: Vec<HostPattern>) {
        self.grants.entry(session.clone()).or_default().channel = hosts;
    }

    /// The thread allowed `host` for the session.
    pub fn grant(&mut self, session: &SessionId, host: &str, scope: Scope) {
        let host = normal_host(host);
        let grants = self.grants.entry(session.clone()).or_default();
        match scope {
            Scope::Session => {
                grants.once.remove(&host);
                grants.hosts.insert(host);
            }
            Scope::Once => *grants.once.entry(host).or_default() += 1,
        }
    }

    pub fn grants(&self, session: &SessionId) -> Option<&Grants> {
        self.grants.get(session)
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

    /// Whether `host:port` is on the global allow-list. Hosts compare case-insensitively
    /// and without a trailing dot; `*.example.com` matches subdomains only.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        matches_any(&self.allowed, &normal_host(host), port)
    }

    /// Forward or refuse a request presenting `token` for `target`. A grant for one
    /// request is used up by the request it lets through.
    pub fn decide(
        &self,
        sessions: &mut Sessions,
        token: Option<&str>,
        target: &Target,
    ) -> Decision {
        let Some(session) = token.and_then(|t| sessions.session(t)).cloned() else {
            return Decision::Refuse(Refusal::UnknownSession);
        };
        let (host, port) = match target {
            Target::Model => return Decision::Forward { session },
            Target::Host { host, port } => (host, *port),
        };
        let normal = normal_host(host);
        if matches_any(&self.allowed, &normal, port) {
            return Decision::Forward { session };
        }
        if let Some(grants) = sessions.grants.get_mut(&session) {
            if grants.hosts.contains(&normal) || matches_any(&grants.channel, &normal, port) {
                return Decision::Forward { session };
            }
            if let Some(left) = grants.once.get_mut(&normal) {
                *left -= 1;
                if *left == 0 {
                    grants.once.remove(&normal);
                }
                return Decision::Forward { session };
            }
        }
        Decision::Refuse(Refusal::NotAllowed {
            host: host.clone(),
            port,
        })
    }
}

/// Lower case, without a trailing dot.
pub fn normal_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn matches_any(patterns: &[HostPattern], host: &str, port: u16) -> bool {
    patterns.iter().any(|p| {
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
            p.decide(&mut sessions, Some(&token), &Target::Model),
            Decision::Forward { session: s.clone() }
        );
        assert_eq!(
            p.decide(&mut sessions, None, &Target::Model),
            Decision::Refuse(Refusal::UnknownSession)
        );
        assert_eq!(
            p.decide(&mut sessions, Some(&token), &host("pypi.org", 443)),
            Decision::Refuse(Refusal::NotAllowed {
                host: "pypi.org".into(),
                port: 443
            })
        );
        sessions.revoke(&s);
        assert_eq!(
            p.decide(&mut sessions, Some(&token), &Target::Model),
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

    #[test]
    fn a_channel_list_opens_hosts_to_that_session_only() {
        let mut sessions = Sessions::default();
        let (a, b) = (SessionId::new("a"), SessionId::new("b"));
        let ta = sessions.issue(&a, &[1; 16]);
        let tb = sessions.issue(&b, &[2; 16]);
        sessions.set_channel(&a, vec![HostPattern::parse("*.docs.test").unwrap()]);
        let p = policy(&[]);
        let target = host("api.docs.test", 443);
        assert!(matches!(
            p.decide(&mut sessions, Some(&ta), &target),
            Decision::Forward { .. }
        ));
        assert!(matches!(
            p.decide(&mut sessions, Some(&tb), &target),
            Decision::Refuse(_)
        ));
        // A new token for the same session keeps its grants; forgetting drops them.
        let ta = sessions.issue(&a, &[3; 16]);
        assert!(matches!(
            p.decide(&mut sessions, Some(&ta), &target),
            Decision::Forward { .. }
        ));
        sessions.forget(&a);
        let ta = sessions.issue(&a, &[4; 16]);
        assert!(matches!(
            p.decide(&mut sessions, Some(&ta), &target),
            Decision::Refuse(_)
        ));
    }

    #[derive(Debug, Clone)]
    enum GrantOp {
        Grant {
            session: usize,
            host: usize,
            session_scope: bool,
        },
        Request {
            session: usize,
            host: usize,
            port: u16,
        },
    }

    fn grant_op() -> impl Strategy<Value = GrantOp> {
        prop_oneof![
            (0..2usize, 0..3usize, any::<bool>()).prop_map(|(session, host, session_scope)| {
                GrantOp::Grant {
                    session,
                    host,
                    session_scope,
                }
            }),
            (0..2usize, 0..3usize, prop_oneof![Just(80u16), Just(443u16)]).prop_map(
                |(session, host, port)| GrantOp::Request {
                    session,
                    host,
                    port
                }
            ),
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
            let decision = p.decide(&mut sessions, Some(&token), &host(&asked, port));
            prop_assert_eq!(matches!(decision, Decision::Forward { .. }), expected);
        }

        /// Over any sequence of grants and requests: a session-wide grant lets every
        /// request of that session to the host through, on any port; `n` grants for one
        /// request let exactly `n` through; nothing one session was granted opens the host
        /// to another.
        #[test]
        fn grants_are_per_session_and_once_is_once(ops in prop::collection::vec(grant_op(), 0..60)) {
            let hosts = ["api.one.test", "Two.test.", "three.test"];
            let ids = [SessionId::new("a"), SessionId::new("b")];
            let mut sessions = Sessions::default();
            let tokens: Vec<String> = ids.iter().enumerate()
                .map(|(i, s)| sessions.issue(s, &[u8::try_from(i).unwrap() + 1; 16]))
                .collect();
            let p = policy(&[]);
            let mut whole = HashSet::new();
            let mut once: HashMap<(usize, usize), u32> = HashMap::new();
            for op in ops {
                match op {
                    GrantOp::Grant { session, host: h, session_scope } => {
                        let scope = if session_scope { Scope::Session } else { Scope::Once };
                        sessions.grant(&ids[session], hosts[h], scope);
                        if session_scope {
                            whole.insert((session, h));
                            once.remove(&(session, h));
                        } else {
                            *once.entry((session, h)).or_default() += 1;
                        }
                    }
                    GrantOp::Request { session, host: h, port } => {
                        let asked = hosts[h].to_ascii_uppercase();
                        let decision = p.decide(&mut sessions, Some(&tokens[session]), &host(&asked, port));
                        let expected = if whole.contains(&(session, h)) {
                            true
                        } else if let Some(n) = once.get_mut(&(session, h)) {
                            *n -= 1;
                            if *n == 0 { once.remove(&(session, h)); }
                            true
                        } else {
                            false
                        };
                        prop_assert_eq!(matches!(decision, Decision::Forward { .. }), expected);
                        if let Decision::Forward { session: s } = decision {
                            prop_assert_eq!(&s, &ids[session]);
                        }
                    }
                }
            }
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
                let model = p.decide(&mut sessions, Some(t), &Target::Model);
                match current.get(t) {
                    Some(s) => prop_assert_eq!(model, Decision::Forward { session: s.clone() }),
                    None => prop_assert_eq!(model, Decision::Refuse(Refusal::UnknownSession)),
                }
                let elsewhere = p.decide(&mut sessions, Some(t), &host(&probe, 443));
                prop_assert!(!matches!(elsewhere, Decision::Forward { .. }), "{probe} is not allowed");
            }
            prop_assert_eq!(sessions.len(), current.len());
        }
    }
}
