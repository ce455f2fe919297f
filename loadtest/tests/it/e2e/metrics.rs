//! What operators read: one mention that runs a tool after an approval and writes a file
//! shows in the worker's and the gateway's `/metrics` — claims, the session's state, the
//! turn, its tool call, the approval wait, tokens and cost equal to the turn's record, the
//! checkpoint, and Mattermost's answers.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::support::*;

const TURN: Duration = Duration::from_secs(60);

fn value(samples: &std::collections::BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

/// The sum of every sample of `name` whose labels include each of `labels`.
fn sum(samples: &std::collections::BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(key, _)| {
            key.split_once('{')
                .is_some_and(|(n, rest)| n == name && labels.iter().all(|l| rest.contains(l)))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_with_an_approval_shows_in_the_worker_and_gateway_metrics() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo counted > counted.txt]] run it",
            None,
        )
        .await
        .unwrap();
    let prompt = wait_for_post(&fleet, &root.id, TURN, "the permission request", |p| {
        p.message.contains("Permission needed")
    })
    .await;

    // While the approval is open the session is in a turn.
    let during = samples(&worker_metrics(&fleet, 0).await);
    assert_eq!(
        value(&during, r#"ccfleet_worker_sessions{state="active"}"#),
        1.0
    );
    assert_eq!(
        value(&during, r#"ccfleet_worker_sessions{state="idle"}"#),
        0.0
    );
    assert_eq!(value(&during, "ccfleet_worker_slots"), 4.0);
    assert_eq!(value(&during, "ccfleet_worker_slots_free"), 3.0);
    assert_eq!(
        value(&during, r#"ccfleet_worker_claims_total{kind="new"}"#),
        1.0
    );
    assert_eq!(
        value(&during, r#"ccfleet_worker_claims_total{kind="takeover"}"#),
        0.0
    );
    assert_eq!(
        value(&during, "ccfleet_worker_queue_wait_seconds_count"),
        1.0
    );
    assert_eq!(value(&during, "ccfleet_worker_threads_waiting"), 0.0);

    tokio::time::sleep(Duration::from_millis(300)).await;
    react_when_known(&fleet, &prompt, "+1").await;
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("Done"), "{}", done.message);
    wait_for_post(&fleet, &root.id, TURN, "the artifact links", |p| {
        p.message.contains("counted.txt")
    })
    .await;

    // The checkpoint is stored after the answer is shown, and the session is active
    // until the turn's checkpoint and record are done.
    let after = eventually(TURN, "the turn counted and checkpointed", || async {
        let after = samples(&worker_metrics(&fleet, 0).await);
        (after.get("ccfleet_worker_checkpoint_bytes_count") == Some(&1.0)
            && after.get(r#"ccfleet_worker_turns_total{outcome="completed"}"#) == Some(&1.0)
            && after.get(r#"ccfleet_worker_sessions{state="active"}"#) == Some(&0.0))
        .then_some(after)
    })
    .await;
    assert_eq!(
        value(&after, r#"ccfleet_worker_sessions{state="idle"}"#),
        1.0
    );
    assert_eq!(
        value(&after, r#"ccfleet_worker_turns_total{outcome="failed"}"#),
        0.0
    );
    assert_eq!(
        value(&after, "ccfleet_worker_turn_duration_seconds_count"),
        1.0
    );
    assert_eq!(
        value(&after, "ccfleet_worker_turn_first_output_seconds_count"),
        1.0
    );
    assert!(
        value(&after, "ccfleet_worker_turn_first_output_seconds_sum")
            <= value(&after, "ccfleet_worker_turn_duration_seconds_sum")
    );
    assert_eq!(
        value(&after, r#"ccfleet_worker_tool_calls_total{tool="Bash"}"#),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"ccfleet_worker_approval_wait_seconds_count{kind="tool"}"#
        ),
        1.0
    );
    // The approval waited at least the pause before the reaction.
    assert!(
        value(
            &after,
            r#"ccfleet_worker_approval_wait_seconds_sum{kind="tool"}"#
        ) >= 0.3
    );
    assert!(value(&after, "ccfleet_worker_checkpoint_bytes_sum") > 0.0);
    assert_eq!(sum(&after, "ccfleet_worker_errors_total", &[]), 0.0);

    // Tokens and cost are what the turn's record holds.
    let records = worker::records::Records::new(env.pool());
    let (turns, input_all, output, cost) = records.usage(&root.id).await.unwrap();
    assert_eq!(turns, 1);
    let tokens = |kind: &str| {
        sum(
            &after,
            "ccfleet_worker_model_tokens_total",
            &[&format!(r#"kind="{kind}""#)],
        )
    };
    assert!(output > 0, "the fake model reports usage");
    assert_eq!(tokens("output"), output as f64);
    assert_eq!(
        tokens("input") + tokens("cache_read") + tokens("cache_write"),
        input_all as f64
    );
    let metered = sum(&after, "ccfleet_worker_model_cost_dollars_total", &[]);
    assert!((metered - cost).abs() < 1e-9, "{metered} vs {cost}");

    // The gateway: the mention came in, Mattermost answered, nothing is left held.
    let gateway = eventually(TURN, "the egress queue drained", || async {
        let text = reqwest::get(format!("{}/metrics", fleet.gateway_url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let gateway = samples(&text);
        (gateway.get("ccfleet_gateway_egress_queue_depth") == Some(&0.0)).then_some(gateway)
    })
    .await;
    assert!(sum(&gateway, "ccfleet_gateway_events_in_total", &[]) >= 2.0);
    assert!(
        value(
            &gateway,
            r#"ccfleet_gateway_mattermost_responses_total{class="2xx"}"#
        ) >= 3.0
    );
    assert_eq!(
        value(
            &gateway,
            r#"ccfleet_gateway_mattermost_responses_total{class="5xx"}"#
        ),
        0.0
    );
    assert_eq!(value(&gateway, "ccfleet_gateway_egress_leader"), 1.0);
    fleet.stop().await;
}
