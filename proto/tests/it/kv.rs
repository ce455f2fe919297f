//! Golden KV values: what a worker or gateway of this version wrote is read by every later
//! one (rolling upgrades read each other's heartbeats, leases and post references).

use std::path::{Path, PathBuf};

use proto::UserId;
use proto::kv::{Directory, Heartbeat, Pin, decimal, lease_holder};

fn data(name: &str) -> Vec<u8> {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/kv")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()))
}

#[test]
fn a_released_heartbeat_is_read_and_written_the_same() {
    let golden = data("heartbeat.json");
    let beat = Heartbeat::decode(&golden).expect("a released heartbeat decodes");
    assert_eq!(
        beat,
        Heartbeat {
            free: 3,
            owned: 1,
            max: 4
        }
    );
    assert_eq!(
        beat.encode(),
        golden.trim_ascii_end(),
        "the encoding changed"
    );
    // A newer writer may add fields: they are ignored, not an error.
    let newer = br#"{"free":2,"owned":2,"max":4,"draining":true}"#;
    assert_eq!(Heartbeat::decode(newer).map(|b| b.free), Some(2));
}

#[test]
fn released_lease_and_applied_values_are_read() {
    assert_eq!(
        lease_holder(data("lease.txt").trim_ascii_end()).as_str(),
        "worker-host-1"
    );
    assert_eq!(decimal(&data("applied.txt")), Some(42));
    assert_eq!(decimal(b"x"), None);
}

#[test]
fn a_released_directory_is_read_and_written_the_same() {
    let golden = data("directory.json");
    let directory = Directory::decode(&golden).expect("a released directory decodes");
    let mut expected = Directory::default();
    expected.pins.insert(
        "alice".into(),
        Pin {
            id: UserId::from("o9p3tf1d5pgzjfbrw3e1ymqwmo"),
            username: "alice.renamed".into(),
        },
    );
    expected.pins.insert(
        "id:k7yq3nbgwjbsdgoqhfbnwz1n3r".into(),
        Pin {
            id: UserId::from("k7yq3nbgwjbsdgoqhfbnwz1n3r"),
            username: String::new(),
        },
    );
    assert_eq!(directory, expected);
    assert_eq!(
        directory.encode(),
        golden.trim_ascii_end(),
        "the encoding changed"
    );
    assert_eq!(
        directory.user_of("alice").map(UserId::as_str),
        Some("o9p3tf1d5pgzjfbrw3e1ymqwmo")
    );
    assert_eq!(directory.user_of("alice.renamed"), None);
}
