//! `loadtest faults` end to end, small: a few threads through every fault (its own services
//! instance is stopped and started; the shared services of the other tests are not
//! touched). Nothing may be lost, answered twice or left hanging, and the threads must
//! have been told about the failures they lived through.

use loadtest::faults::run::{Args, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_taken_through_every_fault_loses_nothing_and_says_so() {
    let args = Args {
        threads: 4,
        workers: 2,
        max_sessions: 8,
        mattermost_outage_s: 8,
        service_outage_s: 3,
        slow_turn_ms: 6000,
        round_timeout_s: 240,
        worker_bin: None,
        services_script: None,
        state_dir: None,
        port_base: 24_100,
        keep: false,
    };
    let line = run(&args).await.expect("the fault run finishes");
    eprintln!("{line}");
    assert_eq!(line["lost"], 0, "{line}");
    assert_eq!(line["duplicated"], 0, "{line}");
    assert_eq!(line["stuck"], 0, "{line}");
    assert_eq!(line["messages"], 4 * 8, "{line}");
    let kinds = &line["notices_by_kind"];
    // Garage down: turns could not be saved, then were.
    assert!(kinds["warning"].as_u64().unwrap_or(0) >= 1, "{line}");
    assert!(kinds["saved_later"].as_u64().unwrap_or(0) >= 1, "{line}");
    assert_eq!(line["faults"].as_array().map(Vec::len), Some(5), "{line}");
}
