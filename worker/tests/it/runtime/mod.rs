//! Runtimes end to end: the real CLI (process, docker) or the sim agent against the fake
//! model, one scenario per property, each run on every runtime.

mod docker;
pub mod harness;
mod measure;

use std::time::{Duration, Instant};

use std::io::{Read, Write};
use std::sync::Arc;

use harness::{Harness, Kind, allow, next_permission, turn_result, until};
use worker::agent::{Event, PermissionAnswer, PermissionKind, PermissionMode};
use worker::runtime::{ExportedFile, SessionSpec};

/// What an exported file holds.
fn content(file: &ExportedFile) -> Vec<u8> {
    let mut out = Vec::new();
    (&file.content)
        .take(file.size)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Runs each scenario on the process, docker and sim runtimes.
macro_rules! on_every_runtime {
    ($($scenario:ident),* $(,)?) => {
        mod process {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Harness::new(super::Kind::Process).await).await;
            })*
        }
        mod docker_runtime {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Harness::new(super::Kind::Docker).await).await;
            })*
        }
        mod sim {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Harness::new(super::Kind::Sim).await).await;
            })*
        }
    };
}

on_every_runtime!(
    write_and_bash_leave_files,
    denial_reaches_the_model,
    question_answer_reaches_the_model,
    plan_is_approved,
    interrupt_ends_a_slow_turn,
    checkpoint_restore_resume,
    an_unrestorable_checkpoint_is_refused_before_the_cli_starts,
    todo_list_updates,
    api_error_is_reported,
    stop_keeps_the_session,
);

async fn write_and_bash_leave_files(h: Harness) {
    let mut session = h.runtime.start(h.spec()).await.expect("session starts");
    let agent = session.agent_handle();
    agent
        .send_message("Please [[write:hello.txt]]")
        .await
        .unwrap();
    let request = next_permission(session.agent()).await;
    assert_eq!(request.tool_name, "Write");
    assert_eq!(request.kind, PermissionKind::Tool);
    agent.respond(&request.request_id, allow()).await.unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::ToolResult {
            is_error: false,
            ..
        }
    )));

    agent
        .send_message("Now [[bash:echo hi > out.txt]]")
        .await
        .unwrap();
    let request = next_permission(session.agent()).await;
    assert_eq!(request.tool_name, "Bash");
    assert_eq!(request.input["command"], "echo hi > out.txt");
    agent.respond(&request.request_id, allow()).await.unwrap();
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");

    let files = session.files();
    let exported = files
        .export(&["hello.txt".into(), "out.txt".into(), "missing.txt".into()])
        .await
        .unwrap();
    let hello = exported
        .iter()
        .find(|f| f.path == "hello.txt")
        .expect("hello.txt");
    assert_eq!(content(hello), b"hello from fake model\n".as_slice());
    let manifest = files.manifest(0).await.unwrap();
    assert!(manifest.files.contains_key("hello.txt"), "{manifest:?}");
    if h.kind != Kind::Sim {
        // The sim agent does not run commands.
        let out = exported
            .iter()
            .find(|f| f.path == "out.txt")
            .expect("out.txt");
        assert_eq!(content(out), b"hi\n".as_slice());
        assert!(manifest.files.contains_key("out.txt"));
    }
    session.remove().await.unwrap();
}

async fn denial_reaches_the_model(h: Harness) {
    let mut session = h.runtime.start(h.spec()).await.unwrap();
    let agent = session.agent_handle();
    agent.send_message("[[write:nope.txt]]").await.unwrap();
    let request = next_permission(session.agent()).await;
    agent
        .respond(
            &request.request_id,
            PermissionAnswer::Deny {
                message: "Not in this workspace, thanks".into(),
            },
        )
        .await
        .unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(events.iter().any(|e| matches!(e,
        Event::ToolResult { is_error: true, content, .. } if content.contains("Not in this workspace"))));
    assert!(
        session
            .files()
            .export(&["nope.txt".into()])
            .await
            .unwrap()
            .is_empty()
    );
    if h.kind != Kind::Sim {
        assert!(!result.is_error);
        assert_eq!(result.permission_denials.len(), 1);
        let last = h.last_request();
        assert!(
            last.transcript().contains("Not in this workspace, thanks"),
            "the model did not get the denial: {}",
            last.transcript()
        );
    }
    session.remove().await.unwrap();
}

async fn question_answer_reaches_the_model(h: Harness) {
    let mut session = h.runtime.start(h.spec()).await.unwrap();
    let agent = session.agent_handle();
    agent.send_message("Pick one [[ask]]").await.unwrap();
    let request = next_permission(session.agent()).await;
    let PermissionKind::AskUserQuestion { questions } = &request.kind else {
        panic!("expected AskUserQuestion, got {request:#?}")
    };
    assert_eq!(questions.len(), 1);
    let labels: Vec<&str> = questions[0]
        .options
        .iter()
        .map(|o| o.label.as_str())
        .collect();
    assert_eq!(labels, ["Red", "Blue"]);
    let answers = [(questions[0].question.clone(), "Blue".to_owned())].into();
    agent
        .respond(&request.request_id, PermissionAnswer::Answers(answers))
        .await
        .unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    assert!(events.iter().any(|e| matches!(e,
        Event::ToolResult { content, .. } if content.contains("\"Which color do you prefer?\"=\"Blue\"") || content.contains("=\"Blue\"") || content.contains("=Blue"))));
    if h.kind != Kind::Sim {
        let last = h.last_request().transcript();
        assert!(
            last.contains("Which color do you prefer?") && last.contains("Blue"),
            "{last}"
        );
    }
    session.remove().await.unwrap();
}

async fn plan_is_approved(h: Harness) {
    let mut spec = h.spec();
    spec.permission_mode = PermissionMode::Plan;
    let mut session = h.runtime.start(spec).await.unwrap();
    let agent = session.agent_handle();
    agent.send_message("Plan it [[plan]]").await.unwrap();
    let request = next_permission(session.agent()).await;
    let PermissionKind::ExitPlanMode { plan, .. } = &request.kind else {
        panic!("expected ExitPlanMode, got {request:#?}")
    };
    assert!(plan.contains("Write hello.txt"), "{plan}");
    agent.respond(&request.request_id, allow()).await.unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PermissionModeChanged { mode } if mode == "default")),
        "{events:#?}"
    );
    assert!(events.iter().any(|e| matches!(e,
        Event::ToolResult { is_error: false, content, .. } if content.contains("approved your plan"))));
    session.remove().await.unwrap();
}

async fn interrupt_ends_a_slow_turn(h: Harness) {
    let mut session = h.runtime.start(h.spec()).await.unwrap();
    let agent = session.agent_handle();
    let sent = Instant::now();
    agent
        .send_message("Take your time [[slow:5000]]")
        .await
        .unwrap();
    // Interrupt once the text streams.
    until(session.agent(), Duration::from_secs(30), |e| {
        matches!(e, Event::TextDelta { .. })
    })
    .await;
    let interrupted = Instant::now();
    agent.interrupt().await.unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(result.is_error, "{result:#?}");
    assert_eq!(
        result.terminal_reason.as_deref(),
        Some("aborted_streaming"),
        "{result:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Interrupted { .. }))
    );
    let took = interrupted.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the turn ended {took:?} after the interrupt"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "the slow answer was not cut short"
    );
    // The session is still usable.
    agent.send_message("hello again").await.unwrap();
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    session.remove().await.unwrap();
}

async fn checkpoint_restore_resume(h: Harness) {
    let spec = h.spec();
    let mut session = h.runtime.start(spec.clone()).await.unwrap();
    let agent = session.agent_handle();
    agent
        .send_message("Remember the word giraffe and [[write:notes.txt]]")
        .await
        .unwrap();
    let request = next_permission(session.agent()).await;
    agent.respond(&request.request_id, allow()).await.unwrap();
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    // What `--resume` takes (the same id `Event::Init` carries).
    let cli_session = result.session_id.clone();
    assert!(!cli_session.is_empty());

    // A limit the workspace is over refuses the checkpoint, saying by how much.
    let refused = session.checkpoint(10).await.expect_err("over the limit");
    let (size, limit) = refused.too_large().expect("refused as too large");
    assert!(size > 10 && limit == 10, "{refused:?}");
    let checkpoint = session.checkpoint(0).await.unwrap();
    assert!(checkpoint.as_file().metadata().unwrap().len() > 100);
    // Gone: container (or process) and volume (or directory).
    session.remove().await.unwrap();
    h.fake.clear();

    let restored = SessionSpec {
        resume: Some(cli_session.clone()),
        restore: Some(Arc::new(checkpoint)),
        ..spec
    };
    let mut session = h
        .runtime
        .start(restored)
        .await
        .expect("restored session starts");
    let exported = session.files().export(&["notes.txt".into()]).await.unwrap();
    assert_eq!(exported.len(), 1, "the workspace was not restored");
    let agent = session.agent_handle();
    agent
        .send_message("What word did I ask you to remember?")
        .await
        .unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Init(init) if init.session_id == cli_session))
    );
    if h.kind != Kind::Sim {
        let last = h.last_request();
        let transcript = last.transcript();
        assert!(
            transcript.contains("giraffe") && transcript.contains("What word did I ask"),
            "the model did not receive the earlier conversation: {transcript}"
        );
        assert!(last.messages().len() >= 4, "{}", last.messages().len());
    }
    session.remove().await.unwrap();
}

async fn an_unrestorable_checkpoint_is_refused_before_the_cli_starts(h: Harness) {
    let mut spec = h.spec();
    let mut garbage = tempfile::NamedTempFile::new().unwrap();
    garbage.write_all(b"not a checkpoint").unwrap();
    spec.restore = Some(Arc::new(garbage));
    let err = h
        .runtime
        .start(spec.clone())
        .await
        .expect_err("an unreadable checkpoint is refused");
    // What tells the session to try an earlier checkpoint instead of retrying this one.
    assert!(err.is_unrestorable(), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    spec.restore = None;
    let session = h.runtime.start(spec).await.expect("starts without it");
    session.remove().await.unwrap();
}

/// Runs `command` through the CLI's Bash tool (allowing it); returns its output.
async fn bash(session: &mut worker::runtime::Session, command: &str) -> String {
    let agent = session.agent_handle();
    agent
        .send_message(&format!("[[bash:{command}]]"))
        .await
        .unwrap();
    let request = next_permission(session.agent()).await;
    agent.respond(&request.request_id, allow()).await.unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    events
        .iter()
        .find_map(|e| match e {
            Event::ToolResult { content, .. } => Some(content.trim().to_owned()),
            _ => None,
        })
        .expect("the command's output")
}

/// What `python -m venv` and friends leave in a workspace — symlinks absolute or leaving
/// the tree, hard links, empty directories, modes — comes back from a checkpoint, on the
/// runtimes that run commands.
async fn a_workspace_with_links_survives_a_restore(h: Harness) {
    let spec = h.spec();
    let mut session = h.runtime.start(spec.clone()).await.unwrap();
    bash(
        &mut session,
        "mkdir -p empty/inner && ln -s /usr/bin venvlink && ln -s ../../../etc up && echo data > orig && ln orig hard && chmod 750 orig && echo made",
    )
    .await;
    let checkpoint = session.checkpoint(0).await.unwrap();
    session.remove().await.unwrap();

    let restored = SessionSpec {
        restore: Some(Arc::new(checkpoint)),
        ..spec
    };
    let mut session = h
        .runtime
        .start(restored)
        .await
        .expect("restored session starts");
    let seen = bash(
        &mut session,
        "echo $(readlink venvlink) $(readlink up) $(stat -c %h orig) $(test orig -ef hard && echo same) $(stat -c %a orig) $(test -d empty/inner && echo emptydir)",
    )
    .await;
    // Docker takes a relative link leaving its volume only as the absolute path it names.
    let up = if h.kind == Kind::Docker {
        "/etc"
    } else {
        "../../../etc"
    };
    assert_eq!(seen, format!("/usr/bin {up} 2 same 750 emptydir"));
    session.remove().await.unwrap();
}

mod links {
    #[tokio::test]
    async fn process() {
        super::a_workspace_with_links_survives_a_restore(
            super::Harness::new(super::Kind::Process).await,
        )
        .await;
    }

    #[tokio::test]
    async fn docker() {
        super::a_workspace_with_links_survives_a_restore(
            super::Harness::new(super::Kind::Docker).await,
        )
        .await;
    }
}

async fn todo_list_updates(h: Harness) {
    let mut session = h.runtime.start(h.spec()).await.unwrap();
    session
        .agent_handle()
        .send_message("Track it [[todo]]")
        .await
        .unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    let items = events
        .iter()
        .find_map(|e| match e {
            Event::TodoUpdate { items } => Some(items.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no TodoUpdate in {events:#?}"));
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].status, "in_progress");
    session.remove().await.unwrap();
}

async fn api_error_is_reported(h: Harness) {
    let mut session = h.runtime.start(h.spec()).await.unwrap();
    let agent = session.agent_handle();
    // 400 is not retried with backoff, so the turn fails fast.
    agent.send_message("[[error:400]]").await.unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(result.is_error, "{result:#?}");
    assert_eq!(result.api_error_status, Some(400), "{result:#?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Error(err) if err.api_status == Some(400))),
        "{events:#?}"
    );
    // The session survives a failed turn.
    agent.send_message("hello").await.unwrap();
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    session.remove().await.unwrap();
}

async fn stop_keeps_the_session(h: Harness) {
    let spec = h.spec();
    let mut session = h.runtime.start(spec.clone()).await.unwrap();
    let agent = session.agent_handle();
    agent
        .send_message("Remember the word zebra [[write:kept.txt]]")
        .await
        .unwrap();
    let request = next_permission(session.agent()).await;
    agent.respond(&request.request_id, allow()).await.unwrap();
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    let stopping = Instant::now();
    session.stop().await.unwrap();
    // stdin closed at an idle point: the CLI exits by itself, well before the kill.
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        stopping.elapsed()
    );
    h.fake.clear();

    let resumed = SessionSpec {
        resume: Some(result.session_id.clone()),
        ..spec.clone()
    };
    let mut session = h.runtime.start(resumed).await.unwrap();
    assert_eq!(
        session
            .files()
            .export(&["kept.txt".into()])
            .await
            .unwrap()
            .len(),
        1
    );
    session
        .agent_handle()
        .send_message("Which animal?")
        .await
        .unwrap();
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    if h.kind != Kind::Sim {
        assert!(h.last_request().transcript().contains("zebra"));
    }
    session.remove().await.unwrap();
    h.runtime.remove_data(&spec.session_id).await.unwrap();
}
