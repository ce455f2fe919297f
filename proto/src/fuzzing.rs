//! Fuzz harness for the wire format: whatever bytes arrive on NATS or in a KV bucket.
//!
//! Called by the cargo-fuzz target `proto_decode` in `fuzz/` and, on stable, by
//! `loadtest`'s `fuzz_corpus` test over the checked-in corpus. Not an API.

use crate::envelope::{CURRENT, Envelope, MIN_SUPPORTED, Message};
use crate::{control, kv, v1};

/// Decodes `data` every way a reader does. What decodes re-encodes to bytes that decode
/// to the same value, at the version it came in.
pub fn decode(data: &[u8]) {
    if let Ok(envelope) = Envelope::decode(data) {
        assert!((MIN_SUPPORTED..=CURRENT).contains(&envelope.version));
        let again = postcard::to_stdvec(&envelope).expect("an envelope encodes");
        assert_eq!(
            Envelope::decode(&again).expect("re-encoded envelope"),
            envelope
        );
    }
    round_trip::<v1::ChatEvent>(data);
    round_trip::<v1::ReplyOp>(data);
    if let Some(heartbeat) = kv::Heartbeat::decode(data) {
        assert_eq!(kv::Heartbeat::decode(&heartbeat.encode()), Some(heartbeat));
    }
    if let Some(command) = control::WorkerCommand::decode(data) {
        assert_eq!(
            control::WorkerCommand::decode(&command.encode()),
            Some(command)
        );
    }
    if let Some(reply) = control::WorkerReply::decode(data) {
        assert_eq!(control::WorkerReply::decode(&reply.encode()), Some(reply));
    }
    let _ = kv::lease_holder(data);
    if let Some(n) = kv::decimal(data) {
        assert_eq!(kv::decimal(n.to_string().as_bytes()), Some(n));
    }
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(message) = M::decode(data) else {
        return;
    };
    let version = Envelope::decode(data)
        .expect("a decoded message has an envelope")
        .version;
    let bytes = message
        .encode_as(version)
        .expect("a decoded message encodes");
    assert_eq!(
        M::decode(&bytes).expect("a re-encoded message decodes"),
        message
    );
}
