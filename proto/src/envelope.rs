//! The versioned envelope and the typed decode of its payload.

use serde::{Deserialize, Serialize};

use crate::v1;

/// The newest wire version this build writes.
pub const CURRENT: u16 = 1;
/// The oldest wire version this build still reads.
pub const MIN_SUPPORTED: u16 = 1;

/// The version this process writes: [`CURRENT`] unless an operator pinned an older one for
/// a rolling upgrade (`nats.wire_version`), so that processes not yet upgraded can read
/// everything the upgraded ones write.
static WRITE_VERSION: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(CURRENT);

/// Pins the version this process writes; `0` means [`CURRENT`]. A version outside
/// `MIN_SUPPORTED..=CURRENT` is refused.
pub fn pin_write_version(version: u16) -> Result<(), Error> {
    let version = if version == 0 { CURRENT } else { version };
    if !(MIN_SUPPORTED..=CURRENT).contains(&version) {
        return Err(Error::UnsupportedVersion {
            version,
            min: MIN_SUPPORTED,
            max: CURRENT,
        });
    }
    WRITE_VERSION.store(version, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The version [`Message::encode`] writes.
pub fn write_version() -> u16 {
    WRITE_VERSION.load(std::sync::atomic::Ordering::Relaxed)
}

/// What the payload of an envelope holds. Variants are append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// An inbound [`v1::ChatEvent`] published by the gateway.
    ChatEvent,
    /// An outbound [`v1::ReplyOp`] published by a worker.
    ReplyOp,
}

/// The frame of every NATS message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported wire version {version} (this build reads {min}..={max})")]
    UnsupportedVersion { version: u16, min: u16, max: u16 },
    #[error("envelope holds a {actual:?}, expected a {expected:?}")]
    WrongKind { expected: Kind, actual: Kind },
    #[error("malformed envelope")]
    Envelope(#[source] postcard::Error),
    #[error("malformed {kind:?} payload (version {version})")]
    Payload {
        kind: Kind,
        version: u16,
        #[source]
        source: postcard::Error,
    },
    #[error("could not encode {kind:?}")]
    Encode {
        kind: Kind,
        #[source]
        source: postcard::Error,
    },
}

/// A message type that travels inside an envelope.
pub trait Message: Sized + Serialize + for<'de> Deserialize<'de> {
    const KIND: Kind;

    /// Encodes `self` as an envelope of the version this process writes ([`write_version`]).
    fn encode(&self) -> Result<Vec<u8>, Error> {
        self.encode_as(write_version())
    }

    /// Encodes `self` as an envelope of `version`. Only version 1 exists, so every
    /// supported version has the same payload; a version 2 adds a match arm that writes
    /// the older shape.
    fn encode_as(&self, version: u16) -> Result<Vec<u8>, Error> {
        if !(MIN_SUPPORTED..=CURRENT).contains(&version) {
            return Err(Error::UnsupportedVersion {
                version,
                min: MIN_SUPPORTED,
                max: CURRENT,
            });
        }
        let payload = postcard::to_stdvec(self).map_err(|source| Error::Encode {
            kind: Self::KIND,
            source,
        })?;
        let envelope = Envelope {
            version,
            kind: Self::KIND,
            payload,
        };
        postcard::to_stdvec(&envelope).map_err(|source| Error::Encode {
            kind: Self::KIND,
            source,
        })
    }

    /// Decodes an envelope of any supported version into the current type.
    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let envelope = Envelope::decode(bytes)?;
        if envelope.kind != Self::KIND {
            return Err(Error::WrongKind {
                expected: Self::KIND,
                actual: envelope.kind,
            });
        }
        // Only version 1 exists; a version 2 adds a match arm that upgrades v1 payloads.
        postcard::from_bytes(&envelope.payload).map_err(|source| Error::Payload {
            kind: Self::KIND,
            version: envelope.version,
            source,
        })
    }
}

impl Envelope {
    /// Decodes the frame and checks its version against the supported range.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let envelope: Envelope = postcard::from_bytes(bytes).map_err(Error::Envelope)?;
        if !(MIN_SUPPORTED..=CURRENT).contains(&envelope.version) {
            return Err(Error::UnsupportedVersion {
                version: envelope.version,
                min: MIN_SUPPORTED,
                max: CURRENT,
            });
        }
        Ok(envelope)
    }
}

impl Message for v1::ChatEvent {
    const KIND: Kind = Kind::ChatEvent;
}

impl Message for v1::ReplyOp {
    const KIND: Kind = Kind::ReplyOp;
}
