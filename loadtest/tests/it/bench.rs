//! Smoke test of `loadtest bench`: the scenarios run end to end through the library API and
//! print the promised figures. Benchmarks are not pass/fail on speed: nothing here checks
//! how fast anything was.

use loadtest::bench::{BenchArgs, Scenario, egress, ingest, overhead, run, scale, startup};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_compares_cold_warm_and_the_bare_cli() {
    let outcome = run(&BenchArgs {
        scenario: Scenario::Startup(startup::Args {
            samples: 2,
            pool: 1,
            step_timeout_s: 120,
        }),
        report: None,
    })
    .await
    .expect("the startup bench runs");
    let f = &outcome.figures;
    has_fields(
        f,
        &[
            "cold_p50_ms",
            "cold_p99_ms",
            "warm_p50_ms",
            "warm_p99_ms",
            "bare_cli_p50_ms",
            "bare_cli_p99_ms",
            "warm_over_bare",
        ],
    );
    // Every warm sample was served by the pool (each waits for a full pool).
    assert_eq!(f["pool_hits"], 2, "{f}");
    assert_eq!(f["pool_misses"], 0, "{f}");
    assert_eq!(outcome.report.html().matches("<svg").count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_reports_bytes_per_idle_session_and_active_latency() {
    let outcome = run(&BenchArgs {
        scenario: Scenario::Scale(scale::Args {
            idle: 20,
            warmup: 5,
            active: 6,
            workers: 2,
            rate: 10.0,
            duration_s: 2.0,
            open_rate: 20.0,
            worker_bin: None,
            mm_budget: 100_000,
            timeout_s: 120,
        }),
        report: None,
    })
    .await
    .expect("the scale bench runs");
    let f = &outcome.figures;
    has_fields(
        f,
        &[
            "worker_bytes_per_idle_session",
            "worker_rss_before_bytes",
            "worker_rss_after_bytes",
            "active_new_p50_ms",
            "active_followup_p99_ms",
        ],
    );
    assert!(f["worker_rss_before_bytes"].as_u64().unwrap() > 0, "{f}");
    assert_eq!(f["active_lost"], 0, "{f}");
    assert_eq!(f["active_duplicated"], 0, "{f}");
}

#[tokio::test]
async fn egress_compares_the_gateway_with_direct_model_requests() {
    let outcome = run(&BenchArgs {
        scenario: Scenario::Egress(egress::Args { samples: 5 }),
        report: None,
    })
    .await
    .expect("the egress bench runs");
    let f = &outcome.figures;
    has_fields(
        f,
        &[
            "direct_p50_ms",
            "direct_p99_ms",
            "gateway_p50_ms",
            "gateway_p99_ms",
            "added_p50_ms",
        ],
    );
    assert_eq!(f["samples"], 5);
    assert!(f["gateway_p50_ms"].as_f64().unwrap() > 0.0, "{f}");
    assert_eq!(outcome.report.histograms.len(), 2);
}
