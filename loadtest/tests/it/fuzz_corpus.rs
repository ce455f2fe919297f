//! The fuzz targets on the stable toolchain: every target's harness (`<crate>::fuzzing`, the
//! same function its cargo-fuzz target in `fuzz/` calls) over its checked-in corpus
//! (`fuzz/corpus/<target>`), then over a bounded budget of random mutations of it. The long
//! runs are `fuzz/run` (nightly, cargo-fuzz).
//!
//! The seeds are written by `write_seeds` (ignored; run it to regenerate):
//! `cargo nextest run -p loadtest --run-ignored only fuzz_corpus::write_seeds`.

use std::path::{Path, PathBuf};

use common::signing::{ActionClaims, DialogClaims, LinkClaims, Signer};
use gateway::fuzzing::{BOT_ID, KEY, NOW_S};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

type Harness = fn(&[u8]);

/// Every target: its name (= `fuzz/fuzz_targets/<name>.rs`), harness, and how many random
/// cases CI runs (a few seconds in all; a restore touches the disk, so fewer).
const TARGETS: &[(&str, Harness, u32)] = &[
    ("proto_decode", proto::fuzzing::decode, 2000),
    ("http_webhook", gateway::fuzzing::webhook, 2000),
    ("http_slash", gateway::fuzzing::slash, 2000),
    ("http_action", gateway::fuzzing::action, 2000),
    ("http_dialog", gateway::fuzzing::dialog, 2000),
    ("ws_envelope", gateway::fuzzing::ws_envelope, 2000),
    ("signed_token", gateway::fuzzing::signed_token, 2000),
    ("stream_json", worker::fuzzing::stream_json, 1000),
    (
        "checkpoint_restore",
        worker::fuzzing::checkpoint_restore,
        300,
    ),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn harness(target: &str) -> (Harness, u32) {
    let (_, harness, cases) = TARGETS
        .iter()
        .find(|(name, ..)| *name == target)
        .unwrap_or_else(|| panic!("no harness for {target}"));
    (*harness, *cases)
}

/// The corpus, then `cases` random mutations of it (bytes changed, inserted, cut; pieces
/// of two inputs spliced). A failure shrinks to a small input, printed as hex.
fn check(target: &str) {
    let (harness, cases) = harness(target);
    let seeds = corpus(target);
    assert!(
        seeds.len() >= 5,
        "{target}: the corpus has {} inputs",
        seeds.len()
    );
    for (name, bytes) in &seeds {
        if std::panic::catch_unwind(|| harness(bytes)).is_err() {
            panic!("{target}: corpus input {name} fails");
        }
    }
    let inputs: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    let mutated = (
        prop::sample::select(inputs.clone()),
        prop::sample::select(inputs),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut input, other, edits, splice)| {
            for (at, byte, op) in edits {
                let len = input.len();
                match op {
                    0 if len > 0 => input[at.index(len)] = byte,
                    1 => input.insert(at.index(len + 1), byte),
                    2 if len > 0 => {
                        input.remove(at.index(len));
                    }
                    _ if len > 0 => input.truncate(at.index(len)),
                    _ => {}
                }
            }
            if !other.is_empty() && splice.index(4) == 0 {
                let cut = splice.index(other.len());
                input.extend_from_slice(&other[cut..]);
            }
            input
        });
    let strategy = prop_oneof![
        4 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ];
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |input| {
        harness(&input);
        Ok(())
    });
    if let Err(err) = result {
        panic!("{target}: {err}");
    }
}

#[test]
fn every_target_has_a_harness_and_a_seed_corpus() {
    let mut targets: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            path.file_stem().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    targets.sort();
    let mut known: Vec<String> = TARGETS.iter().map(|(n, ..)| (*n).to_owned()).collect();
    known.sort();
    assert_eq!(
        targets, known,
        "fuzz/fuzz_targets and TARGETS list the same targets"
    );
    let total: u64 = walk_size(&fuzz_dir().join("corpus"));
    assert!(
        total < 4 << 20,
        "the checked-in corpora stay small: {total} bytes"
    );
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk_size(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[test]
fn proto_decode() {
    check("proto_decode");
}

#[test]
fn http_webhook() {
    check("http_webhook");
}

#[test]
fn http_slash() {
    check("http_slash");
}

#[test]
fn http_action() {
    check("http_action");
}

#[test]
fn http_dialog() {
    check("http_dialog");
}

#[test]
fn ws_envelope() {
    check("ws_envelope");
}

#[test]
fn signed_token() {
    check("signed_token");
}

#[test]
fn stream_json() {
    check("stream_json");
}

#[test]
fn checkpoint_restore() {
    check("checkpoint_restore");
}

// ---------------------------------------------------------------------------------------
// The seeds.

struct Seeds {
    dir: PathBuf,
}

impl Seeds {
    fn new(target: &str) -> Self {
        let dir = fuzz_dir().join("corpus").join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Seeds { dir }
    }

    fn put(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.dir.join(name), bytes).unwrap();
    }
}

fn unhex(text: &str) -> Vec<u8> {
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A content-type byte (see `gateway::fuzzing`) and a body.
fn typed(json: bool, body: impl AsRef<[u8]>) -> Vec<u8> {
    let mut out = vec![if json { 0 } else { 2 }];
    out.extend_from_slice(body.as_ref());
    out
}

fn form(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

/// One entry of `worker::fuzzing::entries_tar`'s description.
fn entry(kind: u8, name: &str, link: &str, size: Option<u64>, data: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(link.len() as u8);
    out.extend_from_slice(link.as_bytes());
    match size {
        Some(size) => {
            out.push(8);
            out.extend_from_slice(&size.to_le_bytes());
        }
        None => out.push(0),
    }
    out.push(data.len() as u8);
    out.extend_from_slice(data);
    out
}

const FILE: u8 = 0;
const DIR: u8 = 1;
const SYMLINK: u8 = 2;
const HARD_LINK: u8 = 3;
const FIFO: u8 = 6;
const PAX: u8 = 8;
const BOMB: u8 = 0x80;

fn described(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![2];
    for e in entries {
        out.extend_from_slice(e);
    }
    out
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand to regenerate the seeds"]
fn write_seeds() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let signer = Signer::new(KEY);
    let action_claims = |channel: &str, exp: u64| ActionClaims {
        thread: "root00000000000000000000001".into(),
        channel: channel.into(),
        action: "allow".into(),
        data: r#"{"request":"req-1"}"#.into(),
        expires_at_s: exp,
    };

    // proto: the golden envelopes of every released message, the KV values, the control
    // messages.
    let seeds = Seeds::new("proto_decode");
    for file in std::fs::read_dir(repo.join("proto/tests/data/v1")).unwrap() {
        let path = file.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        seeds.put(&stem, unhex(&std::fs::read_to_string(&path).unwrap()));
    }
    for file in std::fs::read_dir(repo.join("proto/tests/data/kv")).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        seeds.put(&format!("kv_{name}"), std::fs::read(&path).unwrap());
    }
    seeds.put(
        "control_drain",
        proto::control::WorkerCommand::Drain { by: "ops".into() }.encode(),
    );
    seeds.put(
        "control_reply",
        proto::control::WorkerReply {
            worker: "w-1".into(),
            draining: true,
            owned: 2,
        }
        .encode(),
    );

    // Outgoing webhooks, as Mattermost sends them (reference §2): JSON and form.
    let seeds = Seeds::new("http_webhook");
    let webhook = json!({
        "token": "fuzz-webhook-token", "team_id": "team0000000000000000000001",
        "team_domain": "acme", "channel_id": "chan0000000000000000000001",
        "channel_name": "town-square", "timestamp": 1_700_000_000_123i64,
        "user_id": "user0000000000000000000001", "user_name": "alice",
        "post_id": "post0000000000000000000001", "text": "@claude write hello.py",
        "trigger_word": "@claude", "file_ids": "file000000000000000000001,file000000000000000000002",
    });
    seeds.put("json", typed(true, webhook.to_string()));
    let mut no_files = webhook.clone();
    no_files["file_ids"] = json!("");
    no_files["timestamp"] = json!("1700000000");
    seeds.put("json_string_timestamp", typed(true, no_files.to_string()));
    let mut big = webhook.clone();
    big["timestamp"] = json!(i64::MAX);
    seeds.put("json_huge_timestamp", typed(true, big.to_string()));
    let pairs = [
        ("token", "fuzz-webhook-token"),
        ("team_id", "team0000000000000000000001"),
        ("channel_id", "chan0000000000000000000001"),
        ("timestamp", "1700000000"),
        ("user_id", "user0000000000000000000001"),
        ("user_name", "alice"),
        ("post_id", "post0000000000000000000001"),
        ("text", "@claude fix the tests, then /claude status"),
        ("file_ids", "file000000000000000000001"),
    ];
    seeds.put("form", typed(false, form(&pairs)));
    seeds.put(
        "form_missing_ids",
        typed(false, "token=x&text=hi%20there&timestamp=abc"),
    );
    seeds.put("form_as_json", typed(true, form(&pairs)));
    seeds.put("empty_json", typed(true, "{}"));

    // Slash commands (reference §3): always a form.
    let seeds = Seeds::new("http_slash");
    let slash = |text: &str, root: &str| {
        typed(
            false,
            form(&[
                ("token", "fuzz-slash-token"),
                ("team_id", "team0000000000000000000001"),
                ("channel_id", "chan0000000000000000000001"),
                ("user_id", "user0000000000000000000001"),
                ("user_name", "alice"),
                ("command", "/claude"),
                ("text", text),
                ("trigger_id", "dHJpZ2dlcjp1c2VyOjE3MDAwMDAwMDAwMDA6"),
                ("root_id", root),
                ("response_url", "http://mm.local/hooks/commands/abc"),
            ]),
        )
    };
    let root = "root00000000000000000000001";
    for (name, text, root) in [
        ("prompt", "write a web server in rust", ""),
        ("prompt_in_thread", "now add tests", root),
        ("help", "help", ""),
        ("empty", "   ", ""),
        ("status_outside", "status", ""),
        ("status_in_thread", "status", root),
        ("stop", "stop", root),
        ("mode", "mode plan", root),
        (
            "unicode",
            "\u{00e9}t\u{00e9} \u{2014} r\u{00e9}sum\u{00e9}",
            root,
        ),
    ] {
        seeds.put(name, slash(text, root));
    }
    seeds.put("json", typed(true, r#"{"text":"status","root_id":"r"}"#));

    // Button clicks (reference §4.1) carrying contexts signed with the harness key.
    let seeds = Seeds::new("http_action");
    let click = |token: &str, channel: &str| {
        json!({
            "user_id": "user0000000000000000000001", "user_name": "alice",
            "channel_id": channel, "channel_name": "town-square",
            "team_id": "team0000000000000000000001", "team_domain": "acme",
            "post_id": "post0000000000000000000001", "trigger_id": "dHJpZ2dlcg",
            "type": "", "data_source": "", "context": { "token": token },
        })
        .to_string()
    };
    let channel = "chan0000000000000000000001";
    let valid = signer.sign(&action_claims(channel, NOW_S + 3600));
    seeds.put("valid", click(&valid, channel));
    seeds.put("other_channel", click(&valid, "chan0000000000000000000002"));
    seeds.put(
        "expired",
        click(&signer.sign(&action_claims(channel, NOW_S - 1)), channel),
    );
    seeds.put(
        "other_key",
        click(
            &Signer::new(b"other").sign(&action_claims(channel, NOW_S + 60)),
            channel,
        ),
    );
    seeds.put("garbage_token", click("not.a-token", channel));
    seeds.put("no_context", r#"{"user_id":"u","channel_id":"c"}"#);
    seeds.put(
        "select_option",
        json!({"channel_id": channel, "context": {"token": valid, "selected_option": "1"}})
            .to_string(),
    );

    // Dialog submissions (reference §4.2).
    let seeds = Seeds::new("http_dialog");
    let submit = |state: &str, cancelled: bool| {
        json!({
            "type": "dialog_submission", "callback_id": "answer", "state": state,
            "user_id": "user0000000000000000000001", "channel_id": channel,
            "team_id": "team0000000000000000000001",
            "submission": { "answer": "Use PostgreSQL", "other": null, "n": 3, "x": 1.5 },
            "cancelled": cancelled,
        })
        .to_string()
    };
    let dialog_state = signer.sign(&DialogClaims(action_claims(channel, NOW_S + 3600)));
    seeds.put("valid", submit(&dialog_state, false));
    seeds.put("cancelled", submit(&dialog_state, true));
    seeds.put("button_context", submit(&valid, false));
    seeds.put(
        "expired",
        submit(
            &signer.sign(&DialogClaims(action_claims(channel, NOW_S - 1))),
            false,
        ),
    );
    seeds.put("bad_state", submit("eyJ0IjoiIn0.AAAA", false));
    seeds.put(
        "nested_submission",
        r#"{"state":"","submission":{"a":[[[[{"b":[1e308,-0,"\u0000"]}]]]]}}"#,
    );

    // WebSocket events (reference §5): hello, posted (a mention, a DM, a reply, a system
    // post), reactions, and what the listener skips.
    let seeds = Seeds::new("ws_envelope");
    let post = |id: &str, root: &str, message: &str, kind: &str| {
        json!({
            "id": id, "create_at": 1_700_000_000_000i64, "update_at": 1_700_000_000_000i64,
            "edit_at": 0, "delete_at": 0, "is_pinned": false,
            "user_id": "user0000000000000000000001", "channel_id": channel,
            "root_id": root, "original_id": "", "message": message, "type": kind,
            "props": {}, "hashtags": "", "file_ids": ["file000000000000000000001"],
            "pending_post_id": "", "metadata": {},
        })
        .to_string()
    };
    let posted = |post: String, channel_type: &str, mentions: bool, seq: u64| {
        let mut data = json!({
            "channel_display_name": "Town Square", "channel_name": "town-square",
            "channel_type": channel_type, "post": post, "sender_name": "@alice",
            "set_online": true, "team_id": "team0000000000000000000001",
        });
        if mentions {
            data["mentions"] = json!(json!([BOT_ID]).to_string());
        }
        json!({
            "event": "posted", "data": data, "seq": seq,
            "broadcast": { "omit_users": null, "user_id": "", "channel_id": channel, "team_id": "" },
        })
        .to_string()
    };
    seeds.put(
        "hello",
        json!({"event": "hello", "data": {"server_version": "10.11.0.1.abc.true",
            "connection_id": "conn0000000000000000000001"}, "broadcast": {"user_id": BOT_ID}, "seq": 0})
        .to_string(),
    );
    seeds.put(
        "posted_mention",
        posted(post("post1", "", "@claude hi", ""), "O", true, 1),
    );
    seeds.put(
        "posted_dm",
        posted(post("post2", "", "hello", ""), "D", false, 2),
    );
    seeds.put(
        "posted_reply",
        posted(post("post3", "post1", "and then?", ""), "P", false, 3),
    );
    seeds.put(
        "posted_system",
        posted(
            post("post4", "", "alice joined", "system_join_channel"),
            "O",
            false,
            4,
        ),
    );
    seeds.put(
        "posted_seq_max",
        posted(post("post5", "", "@claude", ""), "G", true, u64::MAX),
    );
    for (name, event) in [
        ("reaction_added", "reaction_added"),
        ("reaction_removed", "reaction_removed"),
    ] {
        let reaction = json!({"user_id": "user0000000000000000000001", "post_id": "post1",
            "emoji_name": "white_check_mark", "create_at": 1_700_000_000_500i64})
        .to_string();
        seeds.put(
            name,
            json!({"event": event, "data": {"reaction": reaction},
                "broadcast": {"channel_id": channel}, "seq": 7})
            .to_string(),
        );
    }
    seeds.put(
        "typing",
        r#"{"event":"typing","data":{"parent_id":"","user_id":"u"},"broadcast":{"channel_id":"c"},"seq":9}"#,
    );
    seeds.put("reply", r#"{"status":"OK","seq_reply":1}"#);

    // Signed tokens: `[mode, tamper] claims` (see `gateway::fuzzing::signed_token`).
    let seeds = Seeds::new("signed_token");
    let token_seed = |mode: u8, tamper: u8, claims: &[u8]| {
        let mut out = vec![mode, tamper];
        out.extend_from_slice(claims);
        out
    };
    let link = serde_json::to_vec(&LinkClaims {
        thread: "root00000000000000000000001".into(),
        prefix: "turn-3/".into(),
        expires_at_s: NOW_S + 600,
    })
    .unwrap();
    seeds.put("link_json", token_seed(0, 5, &link));
    seeds.put(
        "link_fields",
        token_seed(0, 200, b"thread\0turn-1/\0\0\x00600"),
    );
    seeds.put(
        "link_traversal",
        token_seed(0, 1, b"t\0../../etc\0\0\x00600"),
    );
    seeds.put("link_expired", token_seed(3, 9, b"t\0\0\0\0-1"));
    let button = serde_json::to_vec(&action_claims(channel, NOW_S + 600)).unwrap();
    seeds.put("button_json", token_seed(1, 0, &button));
    seeds.put("button_other_channel", token_seed(1, 1, &button));
    seeds.put("button_fields", token_seed(4, 2, b"t\0c\0allow\0{}\x0030"));
    seeds.put("dialog_json", token_seed(2, 77, &button));
    seeds.put(
        "not_claims",
        token_seed(2, 3, br#"[1,2,{"expires_at_s":1e400}]"#),
    );

    // stream-json: lines of the recorded Claude Code transcripts, a few of each type and
    // subtype, at most 4 KiB each.
    let seeds = Seeds::new("stream_json");
    let transcripts = Path::new("/work/shared/reference/claude-code/transcripts");
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    let mut dirs: Vec<_> = std::fs::read_dir(transcripts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let Ok(text) = std::fs::read_to_string(dir.join("stdout.jsonl")) else {
            continue;
        };
        for line in text.lines().filter(|l| l.len() <= 4096) {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let kind = format!(
                "{}_{}",
                value["type"].as_str().unwrap_or("none"),
                value["subtype"]
                    .as_str()
                    .or(value["request"]["subtype"].as_str())
                    .or(value["event"]["type"].as_str())
                    .unwrap_or("")
            );
            let seen = kinds.entry(kind.clone()).or_default();
            if *seen < 2 {
                *seen += 1;
                seeds.put(&format!("{kind}_{seen}"), line);
            }
        }
    }
    seeds.put("plain_text_diagnostic", "Warning: something odd\n");
    seeds.put("not_an_object", "[1,2,3]");

    // Checkpoints: real ones taken of small trees, and hostile descriptions (symlink
    // chains, hard links, `..`, absolute names, long names, huge size fields, bombs).
    let seeds = Seeds::new("checkpoint_restore");
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    std::fs::create_dir_all(root.join("workspace/src")).unwrap();
    std::fs::create_dir_all(root.join("claude/projects")).unwrap();
    std::fs::write(root.join("workspace/src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(root.join("workspace/README.md"), "# hello\n").unwrap();
    std::os::unix::fs::symlink("src/main.rs", root.join("workspace/link")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", root.join("workspace/python")).unwrap();
    std::fs::hard_link(
        root.join("workspace/README.md"),
        root.join("workspace/README.copy"),
    )
    .unwrap();
    std::fs::write(root.join("claude/projects/session.jsonl"), "{}\n").unwrap();
    let mut real = vec![0];
    real.extend(worker::runtime::archive::checkpoint_dir(root).unwrap());
    seeds.put("real_checkpoint", real);
    let top = || {
        vec![
            entry(DIR, "workspace", "", None, b""),
            entry(DIR, "claude", "", None, b""),
        ]
    };
    let with = |more: Vec<Vec<u8>>| {
        let mut all = top();
        all.extend(more);
        described(&all)
    };
    let mut plain = vec![1];
    plain.extend(worker::fuzzing::entries_tar(
        &with(vec![entry(FILE, "claude/x.json", "", None, b"{}")])[1..],
    ));
    seeds.put("plain_tar", plain);
    seeds.put(
        "files_and_links",
        with(vec![
            entry(FILE, "workspace/a.txt", "", None, b"hello"),
            entry(HARD_LINK, "workspace/b.txt", "workspace/a.txt", None, b""),
            entry(SYMLINK, "workspace/c", "a.txt", None, b""),
            entry(DIR | 0x10, "workspace/d", "", None, b""),
        ]),
    );
    seeds.put(
        "symlink_chain",
        with(vec![
            entry(SYMLINK, "workspace/l1", "l2", None, b""),
            entry(SYMLINK, "workspace/l2", "l3", None, b""),
            entry(SYMLINK, "workspace/l3", "../../..", None, b""),
            entry(FILE, "workspace/l1/escape", "", None, b"x"),
        ]),
    );
    seeds.put(
        "symlink_then_file",
        with(vec![
            entry(SYMLINK, "workspace/out", "/tmp", None, b""),
            entry(FILE, "workspace/out/x", "", None, b"x"),
        ]),
    );
    seeds.put(
        "dotdot",
        with(vec![entry(FILE, "workspace/../../escape", "", None, b"x")]),
    );
    seeds.put(
        "absolute",
        with(vec![entry(FILE, "/tmp/escape", "", None, b"x")]),
    );
    seeds.put(
        "hard_link_outside",
        with(vec![entry(
            HARD_LINK,
            "workspace/h",
            "/etc/passwd",
            None,
            b"",
        )]),
    );
    seeds.put(
        "hard_link_to_symlink",
        with(vec![
            entry(SYMLINK, "workspace/s", "/etc/passwd", None, b""),
            entry(HARD_LINK, "workspace/h", "workspace/s", None, b""),
        ]),
    );
    seeds.put(
        "duplicate",
        with(vec![
            entry(FILE, "workspace/a", "", None, b"1"),
            entry(FILE, "workspace/a", "", None, b"2"),
        ]),
    );
    let long = format!("workspace/{}", "d/".repeat(60) + "file");
    seeds.put(
        "long_name",
        with(vec![entry(FILE, &long, "", None, b"deep")]),
    );
    seeds.put(
        "huge_size",
        with(vec![entry(
            FILE,
            "workspace/big",
            "",
            Some(u64::MAX / 2),
            b"x",
        )]),
    );
    seeds.put(
        "pax_header",
        with(vec![
            entry(PAX, "pax", "", None, b"30 path=workspace/../../x\n"),
            entry(FILE, "workspace/p", "", None, b"x"),
        ]),
    );
    seeds.put(
        "bomb",
        with(vec![entry(
            FILE | BOMB,
            "workspace/zeros",
            "",
            Some(256 << 10),
            b"",
        )]),
    );
    seeds.put(
        "fifo_and_file_top",
        described(&[
            entry(FIFO, "workspace/fifo", "", None, b""),
            entry(FILE, "workspace", "", None, b"not a dir"),
        ]),
    );
}
