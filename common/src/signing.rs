//! HMAC-signed tokens: artifact links, button contexts and dialog states.
//!
//! A token is `v2.` `base64url(claims JSON)` `.` `base64url(HMAC-SHA256(K_p, claims JSON))`,
//! where `K_p = HMAC-SHA256(key, "ccfleet-signing/v2/" + purpose)` is a key of its own for
//! each [`Purpose`]: a token signed for one purpose never verifies for another, whatever
//! its claims look like. The claims carry their own expiry. Every gateway replica and
//! worker shares the key (`gateway.signing_key`), so any of them can verify what another
//! signed. Verification compares MACs in constant time (`hmac`'s `verify_slice`).
//!
//! Tokens of the first format (`base64url(JSON).base64url(HMAC(key, JSON))`, no purpose)
//! were signed for links and buttons only; they are still accepted for those two purposes
//! (and only as their own claim types, whose shapes differ) until the last of them expires:
//! buttons live `approval_timeout_s` + 7 days, links 30 days. Nothing signs them any more.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of tokens signed under a purpose's own key.
const V2: &str = "v2";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired at {expires_at_s}")]
    Expired { expires_at_s: u64 },
}

/// What a token is for. Each purpose signs under its own key derived from the signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// An artifact link ([`LinkClaims`]).
    ArtifactLink,
    /// The context a button carries back ([`ActionClaims`]).
    ButtonContext,
    /// The state an interactive dialog carries back ([`DialogClaims`]).
    DialogState,
}

impl Purpose {
    /// The label its key is derived with. Released: never change one.
    fn label(self) -> &'static str {
        match self {
            Purpose::ArtifactLink => "artifact-link",
            Purpose::ButtonContext => "button-context",
            Purpose::DialogState => "dialog-state",
        }
    }

    /// Whether tokens of the first format (no purpose) are accepted for it: only for the
    /// two purposes that were signed then.
    fn accepts_unkeyed(self) -> bool {
        matches!(self, Purpose::ArtifactLink | Purpose::ButtonContext)
    }
}

/// Signs and verifies claims with one key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

/// Claims that expire.
pub trait Expiring {
    /// Seconds since the Unix epoch after which the claims are void.
    fn expires_at_s(&self) -> u64;
}

/// Claims of one purpose: [`Signer::sign`] and [`Signer::verify`] take the purpose from
/// the type, so a caller cannot pick the wrong one.
pub trait Claims: Serialize + DeserializeOwned + Expiring {
    const PURPOSE: Purpose;
}

fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    /// The key of `purpose`: `HMAC(key, "ccfleet-signing/v2/" + label)`.
    fn purpose_key(&self, purpose: Purpose) -> Vec<u8> {
        let label = format!("ccfleet-signing/{V2}/{}", purpose.label());
        mac(&self.key, label.as_bytes())
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Signs typed claims for their purpose.
    pub fn sign<C: Claims>(&self, claims: &C) -> String {
        self.sign_for(C::PURPOSE, claims)
    }

    /// Verifies a token of `C`'s purpose, then the expiry against `now_s`.
    pub fn verify<C: Claims>(&self, token: &str, now_s: u64) -> Result<C, Error> {
        self.verify_for(C::PURPOSE, token, now_s)
    }

    /// Signs any serializable claims for `purpose` (the typed [`Signer::sign`] is the one
    /// to use; this one serves harnesses that sign arbitrary JSON).
    pub fn sign_for<C: Serialize + ?Sized>(&self, purpose: Purpose, claims: &C) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialize");
        let tag = mac(&self.purpose_key(purpose), &json)
            .finalize()
            .into_bytes();
        format!(
            "{V2}.{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Verifies the signature under `purpose`'s key, then the expiry against `now_s`.
    pub fn verify_for<C: DeserializeOwned + Expiring>(
        &self,
        purpose: Purpose,
        token: &str,
        now_s: u64,
    ) -> Result<C, Error> {
        let parts: Vec<&str> = token.split('.').collect();
        let (key, body, tag) = match parts.as_slice() {
            [V2, body, tag] => (self.purpose_key(purpose), *body, *tag),
            [body, tag] if purpose.accepts_unkeyed() => (self.key.clone(), *body, *tag),
            [_, _] => return Err(Error::BadSignature),
            _ => return Err(Error::Malformed),
        };
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| Error::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Error::Malformed)?;
        mac(&key, &json)
            .verify_slice(&tag)
            .map_err(|_| Error::BadSignature)?;
        let claims: C = serde_json::from_slice(&json).map_err(|_| Error::Malformed)?;
        if claims.expires_at_s() < now_s {
            return Err(Error::Expired {
                expires_at_s: claims.expires_at_s(),
            });
        }
        Ok(claims)
    }
}

/// What an artifact link grants: read access to the objects of one thread under a path
/// prefix, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// The thread (session) the artifacts belong to.
    #[serde(rename = "t")]
    pub thread: String,
    /// Object-key prefix under the thread's artifact root, e.g. `turn-3/` or `""` for all.
    #[serde(rename = "p")]
    pub prefix: String,
    #[serde(rename = "e")]
    pub expires_at_s: u64,
}

impl Expiring for LinkClaims {
    fn expires_at_s(&self) -> u64 {
        self.expires_at_s
    }
}

impl Claims for LinkClaims {
    const PURPOSE: Purpose = Purpose::ArtifactLink;
}

/// What a button carries back to the gateway: which session and request it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionClaims {
    pub thread: String,
    pub channel: String,
    /// The action the button stands for, e.g. `allow`, `deny`, `answer:1`.
    pub action: String,
    /// Free-form data for the worker (e.g. the pending request id), as JSON.
    pub data: String,
    pub expires_at_s: u64,
}

impl Expiring for ActionClaims {
    fn expires_at_s(&self) -> u64 {
        self.expires_at_s
    }
}

impl Claims for ActionClaims {
    const PURPOSE: Purpose = Purpose::ButtonContext;
}

/// What an interactive dialog carries back: the same fields as a button's context, signed
/// for dialogs only (a button's context is no dialog state, and the other way round).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DialogClaims(pub ActionClaims);

impl Expiring for DialogClaims {
    fn expires_at_s(&self) -> u64 {
        self.0.expires_at_s
    }
}

impl Claims for DialogClaims {
    const PURPOSE: Purpose = Purpose::DialogState;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn link(exp: u64) -> LinkClaims {
        LinkClaims {
            thread: "t1".into(),
            prefix: "turn-1/".into(),
            expires_at_s: exp,
        }
    }

    fn action(exp: u64) -> ActionClaims {
        ActionClaims {
            thread: "t1".into(),
            channel: "c1".into(),
            action: "allow".into(),
            data: "{}".into(),
            expires_at_s: exp,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let signer = Signer::new(b"key");
        let token = signer.sign(&link(100));
        assert!(token.starts_with("v2."));
        assert_eq!(signer.verify::<LinkClaims>(&token, 100), Ok(link(100)));
        assert_eq!(
            signer.verify::<LinkClaims>(&token, 101),
            Err(Error::Expired { expires_at_s: 100 })
        );
    }

    #[test]
    fn tampering_or_another_key_is_detected() {
        let signer = Signer::new(b"key");
        let token = signer.sign(&link(100));
        let forged = Signer::new(b"other").sign(&link(100));
        assert_eq!(
            signer.verify::<LinkClaims>(&forged, 0),
            Err(Error::BadSignature)
        );
        let tag = token.rsplit('.').next().unwrap();
        let widened = format!(
            "v2.{}.{tag}",
            URL_SAFE_NO_PAD.encode(
                serde_json::to_vec(&LinkClaims {
                    prefix: "".into(),
                    ..link(100)
                })
                .unwrap()
            )
        );
        assert_eq!(
            signer.verify::<LinkClaims>(&widened, 0),
            Err(Error::BadSignature)
        );
        assert_eq!(
            signer.verify::<LinkClaims>("garbage", 0),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn a_button_context_is_no_dialog_state_and_the_other_way_round() {
        let signer = Signer::new(b"key");
        let button = signer.sign(&action(100));
        let dialog = signer.sign(&DialogClaims(action(100)));
        assert_eq!(
            signer.verify::<DialogClaims>(&button, 0),
            Err(Error::BadSignature)
        );
        assert_eq!(
            signer.verify::<ActionClaims>(&dialog, 0),
            Err(Error::BadSignature)
        );
        assert_eq!(
            signer.verify::<DialogClaims>(&dialog, 0),
            Ok(DialogClaims(action(100)))
        );
        // Even claims that would parse as the other kind: the key differs.
        let as_link = signer.sign_for(Purpose::ButtonContext, &link(100));
        assert_eq!(
            signer.verify::<LinkClaims>(&as_link, 0),
            Err(Error::BadSignature)
        );
    }

    #[test]
    fn first_format_tokens_verify_only_as_what_they_were_signed_for() {
        // As the first format signed them: HMAC(key, JSON), no purpose, no prefix.
        let key = b"key";
        let unkeyed = |json: Vec<u8>| {
            let tag = mac(key, &json).finalize().into_bytes();
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(&json),
                URL_SAFE_NO_PAD.encode(tag)
            )
        };
        let signer = Signer::new(key);
        let old_link = unkeyed(serde_json::to_vec(&link(100)).unwrap());
        let old_button = unkeyed(serde_json::to_vec(&action(100)).unwrap());
        assert_eq!(signer.verify::<LinkClaims>(&old_link, 0), Ok(link(100)));
        assert_eq!(
            signer.verify::<ActionClaims>(&old_button, 0),
            Ok(action(100))
        );
        assert!(signer.verify::<ActionClaims>(&old_link, 0).is_err());
        assert!(signer.verify::<LinkClaims>(&old_button, 0).is_err());
        // No dialog state was ever signed that way.
        assert_eq!(
            signer.verify::<DialogClaims>(&old_button, 0),
            Err(Error::BadSignature)
        );
    }

    const PURPOSES: [Purpose; 3] = [
        Purpose::ArtifactLink,
        Purpose::ButtonContext,
        Purpose::DialogState,
    ];

    proptest! {
        /// Whatever the claims, a token verifies for the purpose it was signed for and for
        /// no other, and one changed character never verifies.
        #[test]
        fn a_token_verifies_only_for_its_own_purpose(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            thread in "[a-z0-9]{0,26}",
            channel in "[a-z0-9]{0,26}",
            data in ".{0,40}",
            signed_for in 0usize..3,
            tamper in any::<usize>(),
        ) {
            let signer = Signer::new(&key);
            let claims = ActionClaims {
                thread,
                channel,
                action: "allow".into(),
                data,
                expires_at_s: 1_000,
            };
            let token = signer.sign_for(PURPOSES[signed_for], &claims);
            for (i, purpose) in PURPOSES.iter().enumerate() {
                let verified = signer.verify_for::<ActionClaims>(*purpose, &token, 0);
                if i == signed_for {
                    prop_assert_eq!(verified, Ok(claims.clone()));
                } else {
                    prop_assert_eq!(verified, Err(Error::BadSignature));
                }
            }
            let mut bytes = token.clone().into_bytes();
            let at = tamper % bytes.len();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(bytes).unwrap();
            if forged != token {
                for purpose in PURPOSES {
                    prop_assert!(signer.verify_for::<ActionClaims>(purpose, &forged, 0).is_err());
                }
            }
        }
    }
}
