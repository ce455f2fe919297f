//! Fuzz harnesses for what the gateway parses from outside: the HTTP ingress bodies
//! (webhook, slash command, button action, dialog), the Mattermost WebSocket envelope, and
//! signed artifact links and button contexts.
//!
//! Each function takes the fuzzer's bytes, runs the gateway's own parsing code on them and
//! panics when a property fails; anything else is fine. They are called by the cargo-fuzz
//! targets in `fuzz/` and, on stable, by `loadtest`'s `fuzz_corpus` test over the checked-in
//! corpora. Not an API: nothing else may call them.

use axum::http::{HeaderMap, HeaderValue, header};
use common::signing::{ActionClaims, DialogClaims, LinkClaims, Purpose, Signer};
use proto::commands;
use serde_json::{Value, json};

use crate::artifacts;
use crate::ingress::http::{
    ActionRequest, DialogRequest, SlashPlan, SlashRequest, WebhookRequest, decode, is_json,
};
use crate::ingress::ws::Envelope;
use crate::ingress::{channel_type, mentions_user, token_matches};

/// The key every harness signs and verifies with; seeds carry tokens signed with it.
pub const KEY: &[u8] = b"ccfleet-fuzz-signing-key";
/// "Now" for every expiry check, in seconds.
pub const NOW_S: u64 = 1_800_000_000;
/// The bot's user id and name the WebSocket harness reads events for.
pub const BOT_ID: &str = "botuserid0000000000000000a";
pub const BOT_NAME: &str = "claude";

/// A `Content-Type` picked by the input's first byte: JSON, JSON with a charset, a form,
/// or none (a form).
fn headers(mode: u8) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = match mode % 4 {
        0 => "application/json",
        1 => "application/json; charset=utf-8",
        2 => "application/x-www-form-urlencoded",
        _ => return headers,
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
    headers
}

/// An outgoing webhook's body: `[content-type byte] body`.
pub fn webhook(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let headers = headers(mode);
    let json = is_json(&headers);
    assert_eq!(json, mode % 4 < 2);
    let Ok(request) = decode::<WebhookRequest>(&headers, body) else {
        return;
    };
    let ms = request.create_at_ms(json);
    if !json || matches!(request.timestamp, Value::String(_)) {
        assert_eq!(ms % 1000, 0, "seconds become whole milliseconds");
    }
    let files = request.file_ids();
    for file in &files {
        assert!(!file.as_str().is_empty() && !file.as_str().contains(','));
    }
    let joined: String = files.iter().map(|f| f.as_str()).collect();
    assert_eq!(joined, request.file_ids.replace(',', ""));
    assert_eq!(
        request.is_complete(),
        !request.post_id.is_empty()
            && !request.channel_id.is_empty()
            && !request.user_id.is_empty()
    );
    assert!(!token_matches(&request.token, ""), "an empty token refuses");
    assert_eq!(
        token_matches(&request.token, "fuzz-webhook-token"),
        request.token == "fuzz-webhook-token"
    );
}

/// A `/claude` slash command's body: `[content-type byte] body`.
pub fn slash(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let Ok(request) = decode::<SlashRequest>(&headers(mode), body) else {
        return;
    };
    let text = request.text.trim();
    let first = text.split_whitespace().next();
    match request.plan() {
        SlashPlan::Help => {
            assert!(first.is_none_or(|w| {
                commands::verb(w).is_some_and(|v| v.action == commands::Action::Help)
            }))
        }
        SlashPlan::NeedsThread { word } => {
            assert_eq!(Some(word), first);
            assert!(request.root_id.is_empty());
            assert!(commands::verb(word).is_some_and(|v| v.in_thread));
        }
        SlashPlan::Send {
            text: sent,
            verb,
            in_thread,
        } => {
            assert_eq!(sent, text);
            assert!(!sent.is_empty());
            assert_eq!(in_thread, !request.root_id.is_empty());
            assert_eq!(verb, first.and_then(commands::verb));
        }
    }
}

/// A button click's body (JSON), verified against [`KEY`] at [`NOW_S`].
pub fn action(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<ActionRequest>(data) else {
        return;
    };
    let signer = Signer::new(KEY);
    if let Ok(claims) = request.claims(&signer, NOW_S) {
        assert_eq!(claims.channel, request.channel_id);
        assert!(claims.expires_at_s >= NOW_S);
        let token = request.context["token"].as_str().expect("a verified token");
        assert_eq!(signer.verify::<ActionClaims>(token, NOW_S), Ok(claims));
        assert!(
            Signer::new(b"another key")
                .verify::<ActionClaims>(token, NOW_S)
                .is_err()
        );
    }
}

/// A dialog submission's body (JSON), verified against [`KEY`] at [`NOW_S`].
pub fn dialog(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<DialogRequest>(data) else {
        return;
    };
    let submission = request.submission_json();
    // Numbers may come back a last digit off (serde_json's fast float parsing), so the
    // check is that the worker can read it, not that it is equal.
    assert!(serde_json::from_str::<Value>(&submission).is_ok());
    let signer = Signer::new(KEY);
    if let Ok(claims) = request.claims(&signer, NOW_S) {
        assert!(claims.expires_at_s >= NOW_S);
        assert!(
            Signer::new(b"another key")
                .verify::<DialogClaims>(&request.state, NOW_S)
                .is_err()
        );
        // A dialog state is no button context.
        assert!(
            signer
                .verify::<ActionClaims>(&request.state, NOW_S)
                .is_err()
        );
    }
}

/// One WebSocket text frame from Mattermost.
pub fn ws_envelope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(envelope) = Envelope::read(text) else {
        return;
    };
    if let (Some(seq), Some(next)) = (envelope.seq, envelope.next_seq()) {
        assert!(next > seq || seq == u64::MAX);
    }
    let _ = envelope.connection_id();
    let _ = envelope.channel_id();
    if let Some(posted) = envelope.posted(BOT_ID) {
        assert!(!posted.username.starts_with('@'));
        if posted.mentions_bot {
            assert!(envelope.data["mentions"].is_string());
        }
        let _ = channel_type(posted.kind);
        let person = posted.post.is_from_a_person(BOT_ID);
        assert!(!person || posted.post.user_id != BOT_ID);
        let _ = mentions_user(&posted.post.message, BOT_NAME);
    }
    if envelope.reaction().is_some() {
        assert!(envelope.data["reaction"].is_string());
    }
}

/// Claims built from the input: JSON if it parses as JSON, else fields separated by NUL
/// bytes (thread, channel or prefix, action, data, expiry offset).
fn claims_of(data: &[u8], link: bool) -> Value {
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        return value;
    }
    let mut parts = data
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let mut next = || parts.next().unwrap_or_default();
    let (thread, second, action, data) = (next(), next(), next(), next());
    let offset: i64 = next().trim().parse().unwrap_or(60);
    let expires = NOW_S.saturating_add_signed(offset);
    if link {
        json!({ "t": thread, "p": second, "e": expires })
    } else {
        json!({
            "thread": thread,
            "channel": second,
            "action": action,
            "data": data,
            "expires_at_s": expires,
        })
    }
}

/// Signing and verifying link and button-context tokens: `[mode] [tamper index] claims`.
/// Claims signed with [`KEY`] verify to exactly what was signed (if they are claims of
/// that kind and unexpired); a token with any byte changed never verifies.
pub fn signed_token(data: &[u8]) {
    let [mode, tamper, rest @ ..] = data else {
        return;
    };
    let signer = Signer::new(KEY);
    let link = mode % 3 == 0;
    let signed = claims_of(rest, link);
    let purpose = match mode % 3 {
        0 => Purpose::ArtifactLink,
        1 => Purpose::ButtonContext,
        _ => Purpose::DialogState,
    };
    let token = signer.sign_for(purpose, &signed);
    match mode % 3 {
        0 => {
            let expected = serde_json::from_value::<LinkClaims>(signed.clone())
                .ok()
                .filter(|c| c.expires_at_s >= NOW_S);
            let verified = artifacts::verify_link(&signer, &token, NOW_S).ok();
            assert_eq!(verified, expected);
            if let Some(claims) = verified {
                link_paths(&claims, rest);
            }
        }
        n => {
            let expected = serde_json::from_value::<ActionClaims>(signed.clone())
                .ok()
                .filter(|c| c.expires_at_s >= NOW_S);
            let verified = if n == 1 {
                // The click comes from the signed channel, or another one when the low bit
                // of the tamper byte says so.
                let channel = match &expected {
                    Some(c) if tamper % 2 == 0 => c.channel.clone(),
                    _ => "elsewhere".to_owned(),
                };
                let request: ActionRequest = serde_json::from_value(json!({
                    "channel_id": channel,
                    "context": { "token": token },
                }))
                .expect("an action request");
                let verified = request.claims(&signer, NOW_S).ok();
                if let Some(claims) = &verified {
                    assert_eq!(claims.channel, request.channel_id);
                }
                verified.or(expected.clone().filter(|c| c.channel != channel))
            } else {
                let request: DialogRequest =
                    serde_json::from_value(json!({ "state": token })).expect("a dialog request");
                request.claims(&signer, NOW_S).ok()
            };
            assert_eq!(verified, expected);
        }
    }
    // One byte changed anywhere: never verifies.
    let mut forged = token.clone().into_bytes();
    let at = usize::from(*tamper) % forged.len();
    forged[at] = forged[at].wrapping_add(1 + mode / 3);
    if let Ok(forged) = String::from_utf8(forged)
        && forged != token
    {
        assert!(signer.verify::<LinkClaims>(&forged, NOW_S).is_err());
        assert!(signer.verify::<ActionClaims>(&forged, NOW_S).is_err());
        assert!(signer.verify::<DialogClaims>(&forged, NOW_S).is_err());
    }
    // Signed for one purpose, never valid for another.
    if purpose != Purpose::ArtifactLink {
        assert!(signer.verify::<LinkClaims>(&token, NOW_S).is_err());
    }
    if purpose != Purpose::ButtonContext {
        assert!(signer.verify::<ActionClaims>(&token, NOW_S).is_err());
    }
    if purpose != Purpose::DialogState {
        assert!(signer.verify::<DialogClaims>(&token, NOW_S).is_err());
    }
}

/// A link's paths: whatever `clean` accepts names an object under the link's scope.
fn link_paths(claims: &LinkClaims, data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    let Ok(relative) = artifacts::clean(&path) else {
        return;
    };
    for segment in relative.split('/') {
        assert!(!matches!(segment, "." | ".."));
        assert!(!segment.contains('\\') && !segment.contains('\0'));
    }
    assert!(relative.is_empty() || relative.split('/').all(|s| !s.is_empty()));
    let key = artifacts::object_key(claims, &relative);
    assert!(key.starts_with(&format!("{}/", artifacts::scope(claims))));
    assert!(key.starts_with(&artifacts::thread_root(&claims.thread)));
}
