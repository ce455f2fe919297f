//! `common::lease::keep` against the real nats-server.

use std::time::Duration;

use async_nats::jetstream::kv;
use common::lease::{self, keep};
use common::nats::{Topology, ensure_fabric};
use common::testsupport::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(1);
const EVERY: Duration = Duration::from_millis(100);

async fn leases(env: &TestEnv) -> kv::Store {
    let client = env.nats().await;
    let topology = Topology::from_config(&env.config.nats, TTL);
    ensure_fabric(&client, &topology).await.unwrap().leases
}

async fn revision(leases: &kv::Store, key: &str) -> Option<u64> {
    leases.entry(key).await.unwrap().map(|entry| entry.revision)
}

#[tokio::test]
async fn a_held_lease_is_renewed_past_its_ttl_until_stopped() {
    let env = TestEnv::new().await;
    let leases = leases(&env).await;
    let first = leases.create("thread-a", "worker-1".into()).await.unwrap();
    let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
    let keeper = keep(
        &leases,
        "thread-a",
        "worker-1".into(),
        first,
        EVERY,
        &stop,
        &lost,
    );
    let check = async {
        // Three TTLs: without renewals the bucket's max age would have removed the key.
        tokio::time::sleep(3 * TTL).await;
        let entry = leases.entry("thread-a").await.unwrap().expect("still held");
        assert!(entry.revision > first, "renewed");
        assert_eq!(&entry.value[..], b"worker-1");
        assert!(!lost.is_cancelled());
        stop.cancel();
    };
    let (kept, ()) = tokio::join!(keeper, check);
    kept.expect("stopped, not lost");
    assert!(!lost.is_cancelled());
}

#[tokio::test]
async fn a_foreign_write_is_reported_as_lost_at_the_next_renewal() {
    let env = TestEnv::new().await;
    let leases = leases(&env).await;
    let first = leases.create("thread-b", "worker-1".into()).await.unwrap();
    let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
    let keeper = keep(
        &leases,
        "thread-b",
        "worker-1".into(),
        first,
        EVERY,
        &stop,
        &lost,
    );
    let thief = async {
        leases.put("thread-b", "worker-2".into()).await.unwrap();
        tokio::time::timeout(10 * EVERY, lost.cancelled())
            .await
            .expect("lost is cancelled within a few renewal periods");
    };
    let (kept, ()) = tokio::join!(keeper, thief);
    let err = kept.expect_err("the lease was taken");
    assert!(
        matches!(&err, lease::Error::Lost { key, .. } if key == "thread-b"),
        "{err:?}"
    );
    assert!(!stop.is_cancelled());
    // The keeper wrote nothing over the new holder.
    let entry = leases.entry("thread-b").await.unwrap().unwrap();
    assert_eq!(&entry.value[..], b"worker-2");
}

#[tokio::test]
async fn stopping_leaves_the_key_untouched() {
    let env = TestEnv::new().await;
    let leases = leases(&env).await;
    let first = leases.create("thread-c", "worker-1".into()).await.unwrap();
    let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
    let keeper = keep(
        &leases,
        "thread-c",
        "worker-1".into(),
        first,
        EVERY,
        &stop,
        &lost,
    );
    let stopper = async {
        // Let it renew at least once, then stop it.
        eventually(Duration::from_secs(5), "a renewal", || async {
            (revision(&leases, "thread-c").await > Some(first)).then_some(())
        })
        .await;
        stop.cancel();
    };
    let (kept, ()) = tokio::join!(keeper, stopper);
    kept.expect("stopped, not lost");
    let after_stop = revision(&leases, "thread-c").await;
    // Several renewal periods later nothing has written the key again, so the owner can
    // delete it (or let it lapse) without racing its own keeper.
    tokio::time::sleep(5 * EVERY).await;
    assert_eq!(revision(&leases, "thread-c").await, after_stop);
    assert!(!lost.is_cancelled());
}

#[test]
fn renewals_come_three_times_per_ttl_and_not_too_often() {
    assert_eq!(
        lease::renew_every(Duration::from_secs(30)),
        Duration::from_secs(10)
    );
    assert_eq!(
        lease::renew_every(Duration::from_millis(90)),
        Duration::from_millis(100)
    );
}
