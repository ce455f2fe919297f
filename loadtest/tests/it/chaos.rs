//! `loadtest chaos --schedule short` (issue 17): a containerized fleet (2 gateways, 3
//! workers, a three-node NATS cluster) taken through every fault kind once while its
//! threads keep talking; nothing may be lost, answered twice, reordered or left stuck.

use loadtest::chaos::schedule::Length;
use loadtest::chaos::{Args, run};

#[tokio::test]
async fn the_short_chaos_schedule_loses_nothing() {
    let args = Args {
        schedule: Length::Short,
        seed: 17,
        threads: 3,
        max_threads: 5,
        step_timeout_s: 240,
        state_dir: None,
        no_build: false,
        release: false,
    };
    let line = run(&args).await.expect("the chaos run completes");
    println!("{line}");
    for key in ["lost", "duplicated", "out_of_order", "stuck"] {
        assert_eq!(line[key], 0, "{key}: {line}");
    }
    assert!(line["sent"].as_u64().unwrap() > 30, "{line}");
    let faults = line["faults"].as_object().unwrap();
    assert_eq!(
        faults.len(),
        loadtest::chaos::schedule::FaultKind::ALL.len(),
        "{line}"
    );
}
