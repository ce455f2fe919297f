//! Ingress: Mattermost events in, chat events out to JetStream.
//!
//! Every path acknowledges Mattermost only after JetStream acknowledged the publish, and
//! every publish carries the Mattermost-derived id as `Nats-Msg-Id`, so any number of
//! replicas may receive the same event and it is handled once.

pub mod http;
pub mod ws;

use proto::v1::ChannelType;

pub(crate) fn channel_type(code: &str) -> ChannelType {
    match code {
        "D" => ChannelType::Direct,
        "G" => ChannelType::Group,
        "P" => ChannelType::Private,
        _ => ChannelType::Open,
    }
}

/// Constant-time comparison of a presented token with the configured one. An empty
/// configured token refuses everything.
pub(crate) fn token_matches(presented: &str, expected: &str) -> bool {
    if expected.is_empty() || presented.len() != expected.len() {
        return false;
    }
    presented
        .bytes()
        .zip(expected.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Whether `text` mentions `username` the way Mattermost counts mentions: a word `@name`
/// (trailing punctuation ignored, any case), or `@channel`, `@all`, `@here`.
pub(crate) fn mentions_user(text: &str, username: &str) -> bool {
    let username = username.to_lowercase();
    text.split_whitespace().any(|word| {
        let Some(name) = word.strip_prefix('@') else {
            return false;
        };
        let name = name
            .trim_end_matches(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .trim_end_matches('.')
            .to_lowercase();
        name == username || matches!(name.as_str(), "channel" | "all" | "here")
    })
}

#[cfg(test)]
mod tests {
    use super::mentions_user;
    use proptest::prelude::*;

    #[test]
    fn mentions_are_words_starting_with_an_at_sign() {
        assert!(mentions_user("@claude do this", "claude"));
        assert!(mentions_user("hey @Claude, please.", "claude"));
        assert!(mentions_user("ping @claude.", "claude"));
        assert!(mentions_user("@here anyone?", "claude"));
        assert!(!mentions_user("claude do this", "claude"));
        assert!(!mentions_user("mail me@claude.dev", "claude"));
        assert!(!mentions_user("@claudette hi", "claude"));
    }

    proptest! {
        #[test]
        fn a_text_without_an_at_sign_mentions_nobody(text in "[^@]*") {
            prop_assert!(!mentions_user(&text, "claude"));
        }

        #[test]
        fn an_added_mention_is_always_seen(before in ".*", after in ".*") {
            let text = format!("{before} @claude {after}");
            prop_assert!(mentions_user(&text, "claude"));
        }
    }
}
