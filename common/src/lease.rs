//! Keeping a KV lease: the one renewal loop behind a thread's owner and the egress leader.
//!
//! A lease is a key in a bucket whose max age is the lease TTL; its holder re-writes it
//! with compare-and-set on the revision it last wrote. A failed renewal means someone
//! else wrote the key (or it lapsed and was taken): the holder has lost it and must stop
//! acting at once. [`keep`] is a plain future, not a spawned task, so the owner drives it
//! in its own task (join it with the work it guards): whatever ends the owner — even an
//! abort — ends the renewals too.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lease {key} lost: its renewal at revision {revision} was refused")]
    Lost {
        key: String,
        revision: u64,
        #[source]
        source: kv::UpdateError,
    },
}

/// How often to renew a lease of `ttl`: a third of it, so two renewals can fail (a slow
/// server, a reconnect) before it lapses; never more often than every 100 ms.
pub fn renew_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// Renews `key` (held at `revision`, written as `value`) every `every` until `stop`.
///
/// Returns the revision it last wrote once `stop` is cancelled, without writing the key
/// again (an owner that must be sure it still holds the lease before acting on it renews
/// once more at that revision). If a renewal
/// is refused, cancels `lost` at once (so whatever the lease guards can stop before the
/// error is handled) and returns the refusal. A renewal in flight when `stop` fires is
/// finished first, so when this returns no write of it is still under way (the owner may
/// then delete the key without racing it).
pub async fn keep(
    kv: &kv::Store,
    key: &str,
    value: Bytes,
    mut revision: u64,
    every: Duration,
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> Result<u64, Error> {
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(revision),
            () = tokio::time::sleep(every) => {}
        }
        match kv.update(key, value.clone(), revision).await {
            Ok(next) => revision = next,
            Err(source) => {
                lost.cancel();
                return Err(Error::Lost {
                    key: key.to_owned(),
                    revision,
                    source,
                });
            }
        }
    }
}
