//! HMAC-signed tokens: artifact links and button contexts.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, claims JSON))`. The
//! claims carry their own expiry. Every gateway replica and worker shares the key
//! (`gateway.signing_key`), so any of them can verify what another signed. Verification
//! compares MACs in constant time (`hmac`'s `verify_slice`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired at {expires_at_s}")]
    Expired { expires_at_s: u64 },
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

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(data);
        mac
    }

    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialize");
        let tag = self.mac(&json).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Verifies the signature, then the expiry against `now_s`.
    pub fn verify<C: DeserializeOwned + Expiring>(
        &self,
        token: &str,
        now_s: u64,
    ) -> Result<C, Error> {
        let (body, tag) = token.split_once('.').ok_or(Error::Malformed)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| Error::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Error::Malformed)?;
        self.mac(&json)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn link(exp: u64) -> LinkClaims {
        LinkClaims {
            thread: "t1".into(),
            prefix: "turn-1/".into(),
            expires_at_s: exp,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let signer = Signer::new(b"key");
        let token = signer.sign(&link(100));
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
        let (_, tag) = token.split_once('.').unwrap();
        let widened = format!(
            "{}.{tag}",
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
}
