//! Smoke test of `loadtest bench`: the scenarios run end to end through the library API and
//! print the promised figures. Benchmarks are not pass/fail on speed: nothing here checks
//! how fast anything was.

use loadtest::bench::{BenchArgs, Scenario, ingest, overhead, run};
use serde_json::Value;

fn has_fields(figures: &Value, fields: &[&str]) {
    for field in fields {
        assert!(
            figures.get(field).is_some_and(|v| !v.is_null()),
            "{field} missing from {figures}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_overhead_print_their_figures_without_losing_or_duplicating() {
    let ingest = run(&BenchArgs {
        scenario: Scenario::Ingest(ingest::Args {
            clients: 4,
            duration_s: 2.0,
        }),
        report: None,
    })
    .await
    .expect("the ingest bench runs");
    has_fields(
        &ingest.figures,
        &[
            "events_per_s",
            "p50_ms",
            "p99_ms",
            "errors",
            "stream_messages",
        ],
    );
    assert_eq!(ingest.figures["errors"], 0, "{}", ingest.figures);
    assert_eq!(
        ingest.figures["stream_messages"], ingest.figures["accepted"],
        "every accepted webhook is in the stream: {}",
        ingest.figures
    );

    let overhead = run(&BenchArgs {
        scenario: Scenario::Overhead(overhead::Args {
            threads: 5,
            rate: 20.0,
            duration_s: 2.0,
            workers: 2,
            max_sessions: None,
            drain_s: 60.0,
            mm_budget: 100_000,
            mm_rate_limit: None,
        }),
        report: None,
    })
    .await
    .expect("the overhead bench runs");
    let f = &overhead.figures;
    has_fields(
        f,
        &[
            "new_p50_ms",
            "new_p99_ms",
            "followup_p50_ms",
            "followup_p99_ms",
            "events_per_s",
            "lost",
            "duplicated",
            "mm_429",
            "mm_calls_per_turn",
        ],
    );
    assert!(f["sent"].as_u64().unwrap() > 0, "{f}");
    assert_eq!(f["lost"], 0, "{f}");
    assert_eq!(f["duplicated"], 0, "{f}");
    let html = overhead.report.html();
    assert_eq!(html.matches("<svg").count(), 3, "one histogram per path");
}
