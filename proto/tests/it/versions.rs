use proto::v1::ReplyOp;
use proto::{CURRENT, ChatEvent, Envelope, Error, Kind, Message};

use crate::samples;

fn with_version(version: u16) -> Vec<u8> {
    let (_, event) = samples::chat_events().remove(0);
    let mut envelope = Envelope::decode(&event.encode().unwrap()).unwrap();
    envelope.version = version;
    postcard::to_stdvec(&envelope).unwrap()
}

#[test]
fn a_future_version_is_rejected_with_a_typed_error() {
    let err = ChatEvent::decode(&with_version(CURRENT + 1)).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { version, .. } if version == CURRENT + 1),
        "{err:?}"
    );
}

#[test]
fn version_zero_is_rejected() {
    let err = ChatEvent::decode(&with_version(0)).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedVersion { version: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn a_payload_of_another_kind_is_rejected() {
    let (_, event) = samples::chat_events().remove(0);
    let err = ReplyOp::decode(&event.encode().unwrap()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongKind {
                expected: Kind::ReplyOp,
                actual: Kind::ChatEvent
            }
        ),
        "{err:?}"
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(matches!(ChatEvent::decode(&[]), Err(Error::Envelope(_))));
    let truncated = &samples::chat_events()[0].1.encode().unwrap()[..10];
    assert!(ChatEvent::decode(truncated).is_err());
}

#[test]
fn a_message_is_written_in_a_supported_version_only() {
    let event = crate::samples::chat_events().remove(0).1;
    let bytes = event.encode_as(proto::CURRENT).unwrap();
    assert_eq!(
        proto::Envelope::decode(&bytes).unwrap().version,
        proto::CURRENT
    );
    assert!(matches!(
        event.encode_as(proto::CURRENT + 1),
        Err(proto::Error::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        proto::pin_write_version(proto::CURRENT + 1),
        Err(proto::Error::UnsupportedVersion { .. })
    ));
    proto::pin_write_version(0).unwrap();
    assert_eq!(proto::write_version(), proto::CURRENT);
}
