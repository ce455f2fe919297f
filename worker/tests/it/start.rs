//! What the `ccfleet-worker` binary refuses before anything starts: exit 64 (bad
//! configuration) with a message naming the key and saying why.

use std::process::Command;

/// Runs the worker with only these `--set` overrides (no file, no `CCFLEET__*`
/// environment); its exit code and standard error.
fn start(overrides: &[&str]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ccfleet-worker"));
    command.env_clear();
    for set in overrides {
        command.args(["--set", set]);
    }
    let output = command.output().expect("the worker binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bypass_permissions_with_the_unsandboxed_process_runtime_is_refused() {
    let (code, stderr) = start(&[
        "worker.runtime=process",
        "worker.permission_mode=bypassPermissions",
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("`worker.permission_mode`"), "{stderr}");
    assert!(stderr.contains("no sandbox"), "{stderr}");
}

#[test]
fn a_weak_signing_key_is_refused() {
    for (key, why) in [
        ("too-short-key", "characters long"),
        ("abababababababababababababababababababab", "entropy"),
        ("signing-key-of-at-least-32-bytes-long", "placeholder"),
        (
            "change-me-change-me-change-me-change-me-1234",
            "placeholder",
        ),
    ] {
        let (code, stderr) = start(&[&format!("gateway.signing_key={key}")]);
        assert_eq!(code, Some(64), "{key}: {stderr}");
        assert!(stderr.contains("`gateway.signing_key`"), "{key}: {stderr}");
        assert!(stderr.contains(why), "{key}: {stderr}");
        assert!(
            !stderr.contains(key),
            "the key itself is never printed: {stderr}"
        );
    }
}
