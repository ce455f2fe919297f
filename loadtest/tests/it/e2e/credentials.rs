//! The credential pool and metering through the real path: the real CLI in the runner
//! image, its model requests through the worker's egress gateway to the fake model, which
//! answers one credential's requests with scripted 429/529s. Turns complete on the other
//! credential; with both cooling the turn waits, the thread is told once when it will go
//! on, and the turn completes; every request's usage is in PostgreSQL exactly as the fake model reported.

use std::time::Duration;

use common::config::{ModelCredential, RuntimeKind, Secret};
use common::testsupport::TestEnv;
use loadtest::fake_model::{Limit, fingerprint};

use super::support::{answers, bot_posts, eventually, fleet_with};

const KEY_A: &str = "sk-ant-pool-first";
const KEY_B: &str = "sk-ant-pool-second";

fn credential(label: &str, secret: &str) -> ModelCredential {
    ModelCredential {
        secret: Secret::new(secret),
        label: label.into(),
        max_concurrency: 0,
        requests_per_minute: 0,
    }
}

fn limit(key: &str, status: u16, retry_after_s: u64, times: Option<u32>) -> Limit {
    Limit {
        credential: fingerprint(key),
        status,
        retry_after_s,
        times,
    }
}

#[tokio::test]
async fn turns_go_out_on_a_credential_that_is_not_rate_limited_or_wait_for_one() {
    let env = TestEnv::new().await;
    let fleet = fleet_with(&env, 1, 2, RuntimeKind::Docker, "default", |config| {
        config.model.credentials = vec![credential("first", KEY_A), credential("second", KEY_B)];
    })
    .await;
    let (a, b) = (fingerprint(KEY_A), fingerprint(KEY_B));

    // The first credential answers every request with a 429 (retry-after 5 s): the turn
    // completes on the second.
    fleet.model.limit(limit(KEY_A, 429, 5, None));
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude [[say:first-turn]] hello", None)
        .await
        .unwrap();
    let answer = eventually(Duration::from_secs(240), "the first answer", || async {
        answers(&fleet, &root.id).await.into_iter().next()
    })
    .await;
    assert!(answer.message.contains("first-turn"), "{}", answer.message);
    let seen = fleet.model.message_requests();
    assert!(
        seen.iter().any(|r| r.credential == a && r.status == 429),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .filter(|r| r.status == 200)
            .all(|r| r.credential == b),
        "{seen:?}"
    );

    // Both cooling: the second for 60 s, the first (still cooling from the first turn, or
    // rate-limited once more for 3 s). The turn waits for the first, the session is told
    // once, and the turn completes.
    fleet.model.unlimit();
    let earlier = fleet.model.message_requests().len();
    fleet.model.limit(limit(KEY_B, 529, 60, Some(1)));
    fleet.model.limit(limit(KEY_A, 429, 3, Some(1)));
    let before = cooling_notices(&fleet).len();
    fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[say:second-turn]] again",
            Some(&root.id),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(240), "the second answer", || async {
        answers(&fleet, &root.id)
            .await
            .into_iter()
            .find(|p| p.message.contains("second-turn"))
    })
    .await;
    let notices = cooling_notices(&fleet);
    assert_eq!(notices.len(), before + 1, "{notices:?}");
    // The thread was told once.
    let posts = bot_posts(&fleet, &root.id).await;
    let told: Vec<usize> = posts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.message.contains("Every model credential is rate-limited"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(told.len(), 1, "{posts:#?}");
    assert!(
        posts[told[0]]
            .message
            .contains("Claude continues by itself in about")
    );
    let seen = fleet.model.message_requests();
    let statuses: Vec<(bool, u16)> = seen[earlier..]
        .iter()
        .map(|r| (r.credential == a, r.status))
        .collect();
    assert!(statuses.contains(&(false, 529)), "{statuses:?}");
    assert!(statuses.contains(&(true, 429)), "{statuses:?}");

    // Every answered request's usage is recorded exactly, under its credential's label,
    // the session's user and channel.
    let mut expected = std::collections::BTreeMap::<String, [i64; 5]>::new();
    for request in &seen {
        let Some(usage) = &request.usage else {
            continue;
        };
        let label = if request.credential == a {
            "first"
        } else {
            "second"
        };
        let sums = expected.entry(label.to_owned()).or_default();
        for (i, key) in [
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ]
        .iter()
        .enumerate()
        {
            sums[i] += usage[key].as_i64().unwrap();
        }
        sums[4] += 1;
    }
    assert!(expected.contains_key("second"), "{expected:?}");
    let db = env.pool();
    let user = fleet.demo().id.clone();
    let channel = fleet.channel_id().to_owned();
    let read = || {
        let (db, user, channel) = (db.clone(), user.clone(), channel.clone());
        async move {
            let client = db.get().await.unwrap();
            let rows = client
                .query(
                    "SELECT credential, sum(input_tokens)::bigint, sum(output_tokens)::bigint,
                            sum(cache_read_tokens)::bigint, sum(cache_creation_tokens)::bigint,
                            count(*)::bigint, bool_and(user_id = $1 AND channel_id = $2)
                     FROM model_usage GROUP BY credential ORDER BY credential",
                    &[&user, &channel],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        (
                            [1, 2, 3, 4, 5].map(|i| r.get::<_, i64>(i)),
                            r.get::<_, bool>(6),
                        ),
                    )
                })
                .collect::<std::collections::BTreeMap<_, _>>()
        }
    };
    let want: std::collections::BTreeMap<String, ([i64; 5], bool)> =
        expected.into_iter().map(|(k, v)| (k, (v, true))).collect();
    let mut got = read().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = read().await;
    }
    assert_eq!(
        got, want,
        "model_usage against what the fake model reported"
    );
    fleet.stop().await;
}

fn cooling_notices(
    fleet: &loadtest::fleet::LocalFleet,
) -> Vec<(proto::ids::SessionId, std::time::SystemTime)> {
    match &fleet.workers[0].runtime {
        worker::runtime::Runtime::Docker(rt) => rt.egress().cooling_notices(),
        _ => Vec::new(),
    }
}
