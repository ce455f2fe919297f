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
