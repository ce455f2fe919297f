//! Who may call the admin API: a sans-IO decision from the request's `Authorization`
//! header and the configured tokens.
//!
//! A bearer token is compared with every configured one, each in constant time over the
//! SHA-256 digests of both (so neither the content nor the length of a configured token
//! leaks through timing), and every token is compared even after a match.

use common::config::{AdminScope, AdminToken};
use sha2::{Digest, Sha256};

/// Who called, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, for the audit.
    pub name: String,
    pub scope: AdminScope,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header, or a token nobody configured (401).
    Unauthenticated,
    /// A known token whose scope does not allow the request (403).
    Forbidden(Caller),
}

/// What a request needs: [`AdminScope::Read`] to look, [`AdminScope::Admin`] to act.
pub fn authorize(
    tokens: &[AdminToken],
    authorization: Option<&str>,
    needs: AdminScope,
) -> Result<Caller, Denied> {
    let presented = authorization
        .and_then(bearer)
        .ok_or(Denied::Unauthenticated)?;
    let presented = Sha256::digest(presented.as_bytes());
    let mut found = None;
    for token in tokens {
        let configured = Sha256::digest(token.token.expose().as_bytes());
        if constant_time_eq(&presented, &configured) && found.is_none() {
            found = Some(token);
        }
    }
    let token = found.ok_or(Denied::Unauthenticated)?;
    let caller = Caller {
        name: token.name.clone(),
        scope: token.scope,
    };
    if allows(token.scope, needs) {
        Ok(caller)
    } else {
        Err(Denied::Forbidden(caller))
    }
}

/// Whether a token of scope `has` may do what needs `needs`.
pub fn allows(has: AdminScope, needs: AdminScope) -> bool {
    match needs {
        AdminScope::Read => true,
        AdminScope::Admin => has == AdminScope::Admin,
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Equal slices, in time that depends only on their length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the compiler from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::Secret;
    use proptest::prelude::*;

    fn token(name: &str, secret: &str, scope: AdminScope) -> AdminToken {
        AdminToken {
            name: name.into(),
            token: Secret::new(secret),
            scope,
        }
    }

    fn tokens() -> Vec<AdminToken> {
        vec![
            token("viewer", "read-token-0123456789abcdef", AdminScope::Read),
            token("ops", "admin-token-0123456789abcdef", AdminScope::Admin),
        ]
    }

    fn check(header: Option<&str>, needs: AdminScope) -> Result<String, String> {
        authorize(&tokens(), header, needs)
            .map(|caller| caller.name)
            .map_err(|denied| match denied {
                Denied::Unauthenticated => "401".into(),
                Denied::Forbidden(caller) => format!("403 {}", caller.name),
            })
    }

    #[test]
    fn decisions() {
        let read = Some("Bearer read-token-0123456789abcdef");
        let admin = Some("bearer admin-token-0123456789abcdef");
        assert_eq!(check(None, AdminScope::Read), Err("401".into()));
        assert_eq!(check(Some("Bearer "), AdminScope::Read), Err("401".into()));
        assert_eq!(
            check(Some("Basic read-token-0123456789abcdef"), AdminScope::Read),
            Err("401".into())
        );
        assert_eq!(
            check(Some("Bearer read-token-0123456789abcdeF"), AdminScope::Read),
            Err("401".into())
        );
        assert_eq!(check(read, AdminScope::Read), Ok("viewer".into()));
        assert_eq!(check(read, AdminScope::Admin), Err("403 viewer".into()));
        assert_eq!(check(admin, AdminScope::Read), Ok("ops".into()));
        assert_eq!(check(admin, AdminScope::Admin), Ok("ops".into()));
        assert_eq!(
            authorize(&[], read, AdminScope::Read),
            Err(Denied::Unauthenticated)
        );
    }

    fn scope() -> impl Strategy<Value = AdminScope> {
        prop_oneof![Just(AdminScope::Read), Just(AdminScope::Admin)]
    }

    proptest! {
        /// A request is let through exactly when it presents a configured token whose
        /// scope covers what it needs; it is 403 (not 401) exactly when the token is
        /// known but its scope falls short.
        #[test]
        fn only_a_configured_token_with_enough_scope_passes(
            configured in prop::collection::vec(("[a-z]{1,8}", "[!-~]{24,40}", scope()), 0..5),
            presented in prop::option::of("[ -~]{0,40}"),
            pick in prop::option::of(0usize..5),
            needs in scope(),
        ) {
            let tokens: Vec<AdminToken> = configured
                .iter()
                .map(|(name, secret, scope)| token(name, secret, *scope))
                .collect();
            let presented = match pick {
                Some(i) if i < tokens.len() => Some(tokens[i].token.expose().to_owned()),
                _ => presented,
            };
            let header = presented.as_ref().map(|p| format!("Bearer {p}"));
            let result = authorize(&tokens, header.as_deref(), needs);
            let known = presented.as_ref().and_then(|p| {
                tokens.iter().find(|t| t.token.expose() == p.trim() && !p.trim().is_empty())
            });
            match (known, result) {
                (None, Err(Denied::Unauthenticated)) => {}
                (Some(t), Ok(caller)) => {
                    prop_assert!(allows(t.scope, needs));
                    prop_assert_eq!(caller.name, t.name.clone());
                }
                (Some(t), Err(Denied::Forbidden(caller))) => {
                    prop_assert!(!allows(t.scope, needs));
                    prop_assert_eq!(caller.name, t.name.clone());
                }
                (known, result) => prop_assert!(false, "{known:?} → {result:?}"),
            }
        }

        #[test]
        fn equality_is_exact(a in prop::collection::vec(any::<u8>(), 0..40), b in prop::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(constant_time_eq(&a, &b), a == b);
        }
    }
}
