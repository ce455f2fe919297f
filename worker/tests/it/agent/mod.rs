//! Driver tests: the parser over the CLI's recorded transcripts
//! (`../shared/reference/claude-code/transcripts`, read in place), the answers the driver
//! writes against what the recordings' host wrote, and the driver replaying a recording.

mod replay;

use std::path::PathBuf;

use serde_json::{Value, json};
use worker::agent::protocol::{self, Incoming};
use worker::agent::{Event, PermissionAnswer, PermissionKind, PermissionRequest, TurnResult};

/// The transcripts directory, or `None` (with a loud message) when shared/ is absent.
pub fn transcripts_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/claude-code/transcripts");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: transcripts not found at {} (shared/ is not beside the repository)",
            dir.display()
        );
        None
    }
}

pub fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// Every event of a transcript's stdout, plus the kinds of lines ignored.
fn parse(name: &str) -> Option<(Vec<Event>, Vec<String>)> {
    let dir = transcripts_dir()?.join(name);
    let text = std::fs::read_to_string(dir.join("stdout.jsonl")).unwrap();
    let mut events = Vec::new();
    let mut ignored = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match protocol::parse_line(line).expect("every recorded line is JSON") {
            Incoming::Events(list) => events.extend(list),
            Incoming::Ignored { kind } => ignored.push(kind),
            Incoming::ControlResponse { .. } => ignored.push("control_response".into()),
            Incoming::UnsupportedControlRequest { subtype, .. } => {
                panic!("{name}: unexpected control request {subtype}")
            }
        }
    }
    Some((events, ignored))
}

fn result_of(events: &[Event]) -> &TurnResult {
    events
        .iter()
        .find_map(|e| match e {
            Event::TurnResult(r) => Some(r),
            _ => None,
        })
        .expect("a result line")
}

fn permission_of(events: &[Event]) -> &PermissionRequest {
    events
        .iter()
        .find_map(|e| match e {
            Event::PermissionRequest(r) => Some(r),
            _ => None,
        })
        .expect("a permission request")
}

#[test]
fn every_transcript_parses() {
    let Some(dir) = transcripts_dir() else { return };
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let (events, _) = parse(&name).unwrap();
        assert!(
            events.iter().any(|e| matches!(e, Event::TurnResult(_))),
            "{name}: no TurnResult"
        );
        count += 1;
    }
    assert!(
        count >= 13,
        "expected the 13 recorded transcripts, found {count}"
    );
}

#[test]
fn allow_turn() {
    let Some((events, ignored)) = parse("s1_stream_perm_allow") else {
        return;
    };
    let Event::Init(init) = &events[0] else {
        panic!("first event is {:?}", events[0])
    };
    assert_eq!(init.session_id, "a0bfb42f-2ffb-4ddf-99bf-20acfbc31eb1");
    assert_eq!(init.cwd, "/workspace");
    assert_eq!(init.permission_mode, "default");
    assert!(init.tools.iter().any(|t| t == "Write"));
    assert!(matches!(&events[1], Event::Text { text, .. } if text == "I'll create hello.txt."));
    assert!(
        matches!(&events[2], Event::ToolUse { name, input, .. } if name == "Write" && input["file_path"] == "/workspace/hello.txt")
    );
    let request = permission_of(&events);
    assert_eq!(request.tool_name, "Write");
    assert_eq!(request.kind, PermissionKind::Tool);
    assert_eq!(request.description.as_deref(), Some("hello.txt"));
    assert_eq!(request.suggestions.len(), 1);
    assert!(events.iter().any(
        |e| matches!(e, Event::ToolResult { is_error: false, content, .. } if content.starts_with("File created"))
    ));
    let result = result_of(&events);
    assert!(!result.is_error);
    assert_eq!(result.subtype, "success");
    assert_eq!(result.terminal_reason.as_deref(), Some("completed"));
    assert_eq!(result.usage.input_tokens, 27510);
    assert_eq!(result.usage.output_tokens, 76);
    assert_eq!(result.duration_ms, 316);
    assert_eq!(result.num_turns, 2);
    assert!((result.cost_usd - 0.11156).abs() < 1e-6);
    assert_eq!(result.result.as_deref(), Some("Done: I created hello.txt."));
    assert!(ignored.iter().any(|k| k == "command_lifecycle"));
}

#[test]
fn deny_turn_lists_the_denial() {
    let Some((events, _)) = parse("s2_stream_perm_deny") else {
        return;
    };
    assert!(events.iter().any(|e| matches!(e,
        Event::ToolResult { is_error: true, content, .. } if content == "User denied this in the test harness")));
    let result = result_of(&events);
    assert!(!result.is_error);
    assert_eq!(result.permission_denials.len(), 1);
    assert_eq!(result.permission_denials[0].tool_name, "Write");
}

#[test]
fn deny_and_interrupt() {
    let Some((events, _)) = parse("s3_stream_perm_deny_interrupt") else {
        return;
    };
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Interrupted {
            during_tool_use: true
        }
    )));
    let result = result_of(&events);
    assert!(result.is_error);
    assert_eq!(result.subtype, "error_during_execution");
    assert_eq!(result.terminal_reason.as_deref(), Some("aborted_tools"));
}

#[test]
fn todo_list() {
    let Some((events, _)) = parse("s4_todowrite") else {
        return;
    };
    let items = events
        .iter()
        .find_map(|e| match e {
            Event::TodoUpdate { items } => Some(items),
            _ => None,
        })
        .expect("a TodoUpdate");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].content, "Write hello.txt");
    assert_eq!(items[0].status, "in_progress");
    assert_eq!(items[0].active_form, "Writing hello.txt");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::SessionState { state } if state == "idle"))
    );
}

#[test]
fn ask_user_question() {
    let Some((events, _)) = parse("s5_ask_answer") else {
        return;
    };
    let request = permission_of(&events);
    let PermissionKind::AskUserQuestion { questions } = &request.kind else {
        panic!("kind {:?}", request.kind)
    };
    assert_eq!(questions.len(), 1);
    assert_eq!(questions[0].question, "Which color do you prefer?");
    assert_eq!(questions[0].header, "Color");
    assert_eq!(questions[0].options[1].label, "Blue");
    assert!(!questions[0].multi_select);
    let states: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::SessionState { state } => Some(state.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(states, ["running", "requires_action", "running", "idle"]);
}

#[test]
fn exit_plan_mode() {
    let Some((events, _)) = parse("s9_plan2") else {
        return;
    };
    let request = events
        .iter()
        .find_map(|e| match e {
            Event::PermissionRequest(r) if r.tool_name == "ExitPlanMode" => Some(r),
            _ => None,
        })
        .expect("ExitPlanMode request");
    assert_eq!(
        request.kind,
        PermissionKind::ExitPlanMode {
            plan: "# Plan\n1. Write hello.txt\n2. Report back\n".into(),
            plan_file_path: Some(
                "/home/agent/.claude/plans/plan-it-scenario-plan2-fluffy-forest.md".into()
            ),
        }
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PermissionModeChanged { mode } if mode == "default"))
    );
}

#[test]
fn partial_messages_give_text_deltas() {
    let Some((events, _)) = parse("s10_partial") else {
        return;
    };
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            Event::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(!deltas.is_empty());
    // Complete text blocks still come.
    assert!(events.iter().any(|e| matches!(e, Event::Text { .. })));
}

#[test]
fn interrupt_mid_stream() {
    let Some((events, _)) = parse("s11_interrupt") else {
        return;
    };
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Interrupted {
            during_tool_use: false
        }
    )));
    let result = result_of(&events);
    assert!(result.is_error);
    assert_eq!(result.terminal_reason.as_deref(), Some("aborted_streaming"));
}

#[test]
fn set_permission_mode_status() {
    let Some((events, _)) = parse("s12_set_mode") else {
        return;
    };
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PermissionModeChanged { mode } if mode == "acceptEdits"))
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::PermissionRequest(_)))
    );
}

#[test]
fn bash_request_details() {
    let Some((events, _)) = parse("s13_bash") else {
        return;
    };
    let request = permission_of(&events);
    assert_eq!(request.tool_name, "Bash");
    assert_eq!(request.blocked_path.as_deref(), Some("/workspace/bash.txt"));
    assert_eq!(request.suggestions.len(), 2);
}

#[test]
fn max_turns_and_replays() {
    let Some((events, ignored)) = parse("s14_maxturns_replay") else {
        return;
    };
    assert!(ignored.iter().any(|k| k == "user/replay"));
    let result = result_of(&events);
    assert_eq!(result.subtype, "error_max_turns");
    assert_eq!(result.errors, ["Reached maximum number of turns (1)"]);
}

#[test]
fn resumed_session_keeps_its_id() {
    let Some((events, _)) = parse("r1_resume_stream") else {
        return;
    };
    assert_eq!(
        result_of(&events).session_id,
        "a0bfb42f-2ffb-4ddf-99bf-20acfbc31eb1"
    );
}

#[test]
fn api_error_with_retries() {
    let Some((events, _)) = parse("e_http_529") else {
        return;
    };
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Retry(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[0].attempt, 1);
    assert_eq!(retries[0].max_retries, 2);
    assert_eq!(retries[0].error_status, Some(529));
    assert_eq!(retries[0].delay_ms, 503);
    let error = events
        .iter()
        .find_map(|e| match e {
            Event::Error(e) => Some(e),
            _ => None,
        })
        .expect("an Error event");
    assert_eq!(error.kind, "server_error");
    assert_eq!(error.api_status, Some(529));
    assert!(error.message.starts_with("API Error: 529"));
    let result = result_of(&events);
    assert!(result.is_error);
    assert_eq!(result.terminal_reason.as_deref(), Some("api_error"));
    assert_eq!(result.api_error_status, Some(529));
}

#[test]
fn unknown_lines_are_ignored() {
    assert!(matches!(
        protocol::parse_line(r#"{"type":"brand_new","x":1}"#).unwrap(),
        Incoming::Ignored { kind } if kind == "brand_new"
    ));
    assert!(matches!(
        protocol::parse_line(r#"{"type":"system","subtype":"compact_boundary"}"#).unwrap(),
        Incoming::Ignored { .. }
    ));
    assert!(protocol::parse_line("Warning: not json").is_err());
    assert!(matches!(
        protocol::parse_line(r#"{"type":"control_request","request_id":"h1","request":{"subtype":"hook_callback"}}"#).unwrap(),
        Incoming::UnsupportedControlRequest { subtype, .. } if subtype == "hook_callback"
    ));
}

/// The answers the driver writes equal what the recorded host wrote.
#[test]
fn answers_match_the_recordings() {
    let Some(dir) = transcripts_dir() else { return };
    let cases: [(&str, PermissionAnswer); 5] = [
        (
            "s1_stream_perm_allow",
            PermissionAnswer::Allow {
                updated_input: None,
            },
        ),
        (
            "s2_stream_perm_deny",
            PermissionAnswer::Deny {
                message: "User denied this in the test harness".into(),
            },
        ),
        (
            "s3_stream_perm_deny_interrupt",
            PermissionAnswer::DenyAndInterrupt {
                message: "denied+interrupt".into(),
            },
        ),
        (
            "s5_ask_answer",
            PermissionAnswer::Answers(
                [("Which color do you prefer?".to_owned(), "Blue".to_owned())].into(),
            ),
        ),
        (
            "s9_plan2",
            PermissionAnswer::Allow {
                updated_input: None,
            },
        ),
    ];
    for (name, answer) in cases {
        let (events, _) = parse(name).unwrap();
        let request = events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::PermissionRequest(r) => Some(r),
                _ => None,
            })
            .unwrap();
        let written = protocol::permission_response(request, &answer);
        let recorded = read_jsonl(&dir.join(name).join("stdin.jsonl"))
            .into_iter()
            .find(|l| l["type"] == "control_response")
            .unwrap();
        assert_eq!(written, recorded, "{name}");
    }
    // Allow-always sends the suggestions back as updatedPermissions (s13, with the
    // recording's edited input).
    let (events, _) = parse("s13_bash").unwrap();
    let recorded = read_jsonl(&dir.join("s13_bash/stdin.jsonl"))
        .into_iter()
        .find(|l| l["type"] == "control_response")
        .unwrap();
    let written = protocol::permission_response(
        permission_of(&events),
        &PermissionAnswer::AllowAlways {
            updated_input: Some(
                json!({"command": "echo hi-from-bash > bash.txt && pwd", "description": "write bash.txt"}),
            ),
        },
    );
    assert_eq!(written, recorded);
}
