//! Golden signed tokens: a button, dialog state or link signed by a gateway or worker of
//! this version is verified by every later one (buttons outlive deployments: a prompt posted before an
//! upgrade is clicked after it). `CCFLEET_BLESS=1` writes a missing file, never an
//! existing one.

use std::path::{Path, PathBuf};

use common::signing::{ActionClaims, DialogClaims, LinkClaims, Signer};

const KEY: &[u8] = b"golden-signing-key";

fn golden(name: &str, token: &str) -> String {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    if !path.exists() && std::env::var_os("CCFLEET_BLESS").is_some() {
        std::fs::write(&path, format!("{token}\n")).unwrap();
    }
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "golden file {} ({e}); run with CCFLEET_BLESS=1 once",
                path.display()
            )
        })
        .trim()
        .to_owned()
}

fn action_claims() -> ActionClaims {
    ActionClaims {
        thread: "t1".into(),
        channel: "c1".into(),
        action: "allow".into(),
        data: r#"{"approval":"a1","step":0}"#.into(),
        expires_at_s: 4_000_000_000,
    }
}

fn link_claims() -> LinkClaims {
    LinkClaims {
        thread: "t1".into(),
        prefix: "turn-3/".into(),
        expires_at_s: 4_000_000_000,
    }
}

/// The first format (no purpose): still verified for what it was signed for, never signed.
#[test]
fn a_first_format_button_context_and_link_still_verify_for_their_own_purpose() {
    let signer = Signer::new(KEY);
    let button = golden("action_token.txt", "");
    let verified: ActionClaims = signer.verify(&button, 1_700_000_000).unwrap();
    assert_eq!(verified, action_claims());
    assert!(
        signer
            .verify::<DialogClaims>(&button, 1_700_000_000)
            .is_err()
    );
    assert!(signer.verify::<LinkClaims>(&button, 1_700_000_000).is_err());
    let link = golden("link_token.txt", "");
    let verified: LinkClaims = signer.verify(&link, 1_700_000_000).unwrap();
    assert_eq!(verified, link_claims());
    assert!(signer.verify::<ActionClaims>(&link, 1_700_000_000).is_err());
}

#[test]
fn a_released_button_context_is_verified_and_signed_the_same() {
    let claims = action_claims();
    let signer = Signer::new(KEY);
    let token = golden("action_token_v2.txt", &signer.sign(&claims));
    let verified: ActionClaims = signer.verify(&token, 1_700_000_000).unwrap();
    assert_eq!(verified, claims);
    assert_eq!(signer.sign(&claims), token, "the token format changed");
    assert!(
        signer
            .verify::<DialogClaims>(&token, 1_700_000_000)
            .is_err()
    );
}

#[test]
fn a_released_dialog_state_is_verified_and_signed_the_same() {
    let claims = DialogClaims(action_claims());
    let signer = Signer::new(KEY);
    let token = golden("dialog_token_v2.txt", &signer.sign(&claims));
    let verified: DialogClaims = signer.verify(&token, 1_700_000_000).unwrap();
    assert_eq!(verified, claims);
    assert_eq!(signer.sign(&claims), token, "the token format changed");
    assert!(
        signer
            .verify::<ActionClaims>(&token, 1_700_000_000)
            .is_err()
    );
}

#[test]
fn a_released_link_token_is_verified_and_signed_the_same() {
    let claims = link_claims();
    let signer = Signer::new(KEY);
    let token = golden("link_token_v2.txt", &signer.sign(&claims));
    let verified: LinkClaims = signer.verify(&token, 1_700_000_000).unwrap();
    assert_eq!(verified, claims);
    assert_eq!(signer.sign(&claims), token, "the token format changed");
    assert!(
        signer
            .verify::<ActionClaims>(&token, 1_700_000_000)
            .is_err()
    );
}
