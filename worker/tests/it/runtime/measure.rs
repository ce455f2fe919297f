//! Figures for the closing note, not pass/fail tests:
//! `cargo nextest run -p worker --run-ignored only measure_startup --no-capture`
//! prints one JSON line: the time from `Runtime::start` to the CLI's first model request
//! (process vs docker, a fresh session and container each run; median of 10) and the
//! peak memory of one session container after a turn with a tool call.

use std::time::{Duration, Instant};

use bollard::query_parameters::StatsOptionsBuilder;
use futures::StreamExt;
use worker::runtime::Runtime;

use super::harness::{Harness, Kind, allow, next_permission, turn_result};

const RUNS: usize = 10;

async fn first_request_ms(h: &Harness) -> f64 {
    h.fake.clear();
    let started = Instant::now();
    let session = h.runtime.start(h.spec()).await.unwrap();
    session.agent_handle().send_message("hello").await.unwrap();
    let deadline = started + Duration::from_secs(60);
    while h.fake.message_requests().is_empty() {
        assert!(Instant::now() < deadline, "no model request within 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    session.remove().await.unwrap();
    ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn startup(kind: Kind) -> (f64, Vec<f64>) {
    let h = Harness::new(kind).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(first_request_ms(&h).await);
    }
    (median(runs.clone()), runs)
}

async fn peak_memory_bytes() -> u64 {
    let h = Harness::docker(None).await;
    let mut session = h.runtime.start(h.spec()).await.unwrap();
    let agent = session.agent_handle();
    agent
        .send_message("[[write:hello.txt]] [[bash:echo hi > out.txt]]")
        .await
        .unwrap();
    for _ in 0..2 {
        let request = next_permission(session.agent()).await;
        agent.respond(&request.request_id, allow()).await.unwrap();
    }
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error);
    let Runtime::Docker(rt) = &h.runtime else {
        unreachable!()
    };
    let container = session.files().container().unwrap().to_owned();
    let options = StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(false)
        .build();
    let stats = rt
        .client()
        .stats(&container, Some(options))
        .next()
        .await
        .unwrap()
        .unwrap();
    let memory = stats.memory_stats.unwrap();
    // cgroup v1 reports the peak as max_usage; v2 has no peak here, use usage.
    let peak = memory.max_usage.or(memory.usage).unwrap_or(0);
    session.remove().await.unwrap();
    peak
}

#[tokio::test]
#[ignore = "measurement; run with --run-ignored only"]
async fn measure_startup() {
    let (process_ms, process_runs) = startup(Kind::Process).await;
    let (docker_ms, docker_runs) = startup(Kind::Docker).await;
    let peak = peak_memory_bytes().await;
    let line = serde_json::json!({
        "bench": "startup",
        "runs": RUNS,
        "process_first_request_median_ms": process_ms.round(),
        "docker_first_request_median_ms": docker_ms.round(),
        "process_runs_ms": process_runs.iter().map(|v| v.round()).collect::<Vec<_>>(),
        "docker_runs_ms": docker_runs.iter().map(|v| v.round()).collect::<Vec<_>>(),
        "docker_peak_memory_mb": (peak as f64 / 1_048_576.0).round(),
    });
    println!("{line}");
}
