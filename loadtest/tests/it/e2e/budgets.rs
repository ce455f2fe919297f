//! Budgets through the real path: the real CLI in the runner image, its model requests
//! through the worker's egress gateway, which meters them and holds them once the owner's
//! daily budget is used up. The thread asks; "continue" lets the turn complete, "stop"
//! ends it; what PostgreSQL recorded is exactly what the fake model reported.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;
use loadtest::mmsim::model::Post;

use super::support::{answers, bot_posts, eventually, fleet_with};

const TURN: Duration = Duration::from_secs(240);

fn is_budget_prompt(post: &Post) -> bool {
    post.message.contains("daily budget is used up")
}

/// The budget prompts of the thread still waiting for an answer.
async fn open_prompts(fleet: &LocalFleet, root: &str) -> Vec<Post> {
    bot_posts(fleet, root)
        .await
        .into_iter()
        .filter(|p| is_budget_prompt(p) && p.message.contains("Answer with the buttons"))
        .collect()
}

async fn post(fleet: &LocalFleet, root: Option<&str>, text: &str) -> Post {
    fleet
        .demo()
        .post(fleet.channel_id(), text, root)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_used_up_daily_budget_holds_the_next_turn_until_continued_or_stopped() {
    let env = TestEnv::new().await;
    // Less than any model request costs: the first request of the day goes out, every
    // later one finds the budget used up.
    let fleet = fleet_with(&env, 1, 2, RuntimeKind::Docker, "bypassPermissions", |c| {
        c.budgets.user_daily_usd = 0.000_001;
    })
    .await;

    let root = post(&fleet, None, "@claude [[say:first-turn]] hello").await;
    let first = eventually(TURN, "the first answer", || async {
        answers(&fleet, &root.id).await.into_iter().next()
    })
    .await;
    assert!(first.message.contains("first-turn"), "{}", first.message);
    assert!(
        open_prompts(&fleet, &root.id).await.is_empty(),
        "the first turn was not held"
    );

    // The second turn is held: the thread says which budget, and nothing is answered.
    post(&fleet, Some(&root.id), "@claude [[say:second-turn]] again").await;
    let prompt = eventually(TURN, "the budget prompt", || async {
        open_prompts(&fleet, &root.id).await.into_iter().next()
    })
    .await;
    assert!(
        prompt.message.contains("@alice's daily budget is used up"),
        "{}",
        prompt.message
    );
    assert_eq!(answers(&fleet, &root.id).await.len(), 1);
    // Continue: the turn completes (each request it still makes is held again and
    // continued again).
    let continued = std::sync::atomic::AtomicI64::new(0);
    let second = eventually(TURN, "the second answer", || async {
        if let Some(answer) = answers(&fleet, &root.id)
            .await
            .into_iter()
            .find(|p| p.message.contains("second-turn"))
        {
            return Some(answer);
        }
        for open in open_prompts(&fleet, &root.id).await {
            if fleet.demo().click(&open.id, "budgetcontinue").await.is_ok() {
                continued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        None
    })
    .await;
    let continued = continued.into_inner();
    assert!(continued >= 1, "{continued}");
    assert!(second.message.contains("second-turn"), "{}", second.message);
    let settled = fleet.demo().get_post(&prompt.id).await.unwrap();
    assert!(
        settled.message.contains("**Continued** by @alice"),
        "{}",
        settled.message
    );

    // The third turn is held too; stopped, it ends without the model's answer.
    post(&fleet, Some(&root.id), "@claude [[say:third-turn]] more").await;
    let third = eventually(TURN, "the third budget prompt", || async {
        open_prompts(&fleet, &root.id).await.into_iter().next()
    })
    .await;
    fleet.demo().click(&third.id, "budgetstop").await.unwrap();
    let ended = eventually(TURN, "the third turn's end", || async {
        let all = answers(&fleet, &root.id).await;
        (all.len() >= 3).then(|| all.last().cloned()).flatten()
    })
    .await;
    assert!(!ended.message.contains("third-turn"), "{}", ended.message);
    assert_eq!(
        bot_posts(&fleet, &root.id)
            .await
            .iter()
            .filter(|p| is_budget_prompt(p))
            .count(),
        2,
        "stopped, the turn is not asked about again"
    );
    let stopped = fleet.demo().get_post(&third.id).await.unwrap();
    assert!(
        stopped.message.contains("**Stopped** by @alice"),
        "{}",
        stopped.message
    );

    // `/claude status` shows spend against the budget (ephemeral, to the asker).
    let mut events = fleet.demo().websocket().await.unwrap();
    fleet
        .demo()
        .execute_command(fleet.channel_id(), "/claude status", Some(&root.id))
        .await
        .unwrap();
    let status = events
        .wait_for(Duration::from_secs(60), |e| {
            e.kind() == loadtest::mmsim::client::EventKind::EphemeralMessage
                && e.post().is_some_and(|p| p.message.contains("Budgets"))
        })
        .await
        .expect("the status")
        .post()
        .unwrap()
        .message;
    assert!(
        status.contains("Budgets — @alice's daily budget: $"),
        "{status}"
    );

    // The record: every request the fake model answered with usage is in model_usage,
    // token for token, under the owner; the top-ups given are recorded.
    let mut expected = [0i64; 5];
    for request in fleet.model.message_requests() {
        let Some(usage) = &request.usage else {
            continue;
        };
        for (i, key) in [
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ]
        .iter()
        .enumerate()
        {
            expected[i] += usage[key].as_i64().unwrap();
        }
        expected[4] += 1;
    }
    let db = env.pool();
    let user = fleet.demo().id.clone();
    let read = || {
        let (db, user) = (db.clone(), user.clone());
        async move {
            let client = db.get().await.unwrap();
            let row = client
                .query_one(
                    "SELECT COALESCE(sum(input_tokens), 0)::bigint,
                            COALESCE(sum(output_tokens), 0)::bigint,
                            COALESCE(sum(cache_read_tokens), 0)::bigint,
                            COALESCE(sum(cache_creation_tokens), 0)::bigint,
                            count(*)::bigint
                     FROM model_usage WHERE user_id = $1",
                    &[&user],
                )
                .await
                .unwrap();
            [0, 1, 2, 3, 4].map(|i| row.get::<_, i64>(i))
        }
    };
    let mut got = read().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = read().await;
    }
    assert_eq!(got, expected, "model_usage against the fake model's usage");
    let client = env.pool().get().await.unwrap();
    let top_ups: i64 = client
        .query_one(
            "SELECT count(*)::bigint FROM budget_top_ups WHERE user_id = $1 AND budget = 'user_day'",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(top_ups, continued);
    fleet.stop().await;
}
