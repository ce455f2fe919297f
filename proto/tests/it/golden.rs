//! Golden bytes: every released message shape, as committed bytes, decodes to the value
//! it was made from, forever. `CCFLEET_BLESS=1` writes files that are missing; it never
//! overwrites one, because a released file must not change.

use std::path::{Path, PathBuf};

use proto::Message;

use crate::samples;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1")
}

fn check<M: Message + PartialEq + std::fmt::Debug>(name: &str, value: &M) {
    let path = data_dir().join(format!("{name}.hex"));
    if !path.exists() && std::env::var_os("CCFLEET_BLESS").is_some() {
        std::fs::write(&path, hex::encode(value.encode().unwrap()) + "\n").unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} missing ({e}); run with CCFLEET_BLESS=1 once",
            path.display()
        )
    });
    let bytes = hex::decode(text.trim()).expect("golden file is hex");
    let decoded = M::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(&decoded, value, "{name}: decoded value differs");
    assert_eq!(value.encode().unwrap(), bytes, "{name}: encoding changed");
}

#[test]
fn every_v1_chat_event_decodes_from_golden_bytes() {
    let samples = samples::chat_events();
    assert_eq!(samples.len(), 5, "one sample per EventBody variant");
    for (name, value) in samples {
        check(name, &value);
    }
}

#[test]
fn every_v1_reply_op_decodes_from_golden_bytes() {
    let samples = samples::reply_ops();
    assert_eq!(samples.len(), 6, "one sample per Op variant");
    for (name, value) in samples {
        check(name, &value);
    }
}

#[test]
fn every_golden_file_has_a_sample() {
    let names: Vec<_> = samples::chat_events()
        .into_iter()
        .map(|(n, _)| n)
        .chain(samples::reply_ops().into_iter().map(|(n, _)| n))
        .collect();
    for entry in std::fs::read_dir(data_dir()).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let stem = file.trim_end_matches(".hex");
        assert!(names.contains(&stem), "golden file {file} has no sample");
    }
}
