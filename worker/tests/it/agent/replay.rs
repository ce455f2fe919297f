//! The driver against a replayed CLI: a task plays a transcript's stdout, waiting for
//! the host's control requests and answers where the real CLI did.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use worker::agent::{
    Agent, AgentIo, AgentOptions, Event, PermissionAnswer, PermissionKind, PermissionMode,
};

use super::{read_jsonl, transcripts_dir};

/// Plays `stdout.jsonl`; returns the host's stdin lines.
async fn play(
    lines: Vec<Value>,
    stdin: tokio::io::DuplexStream,
    mut stdout: tokio::io::DuplexStream,
) -> Vec<Value> {
    let mut host = BufReader::new(stdin).lines();
    let mut received = Vec::new();
    let mut next_host = async |wanted: &str, received: &mut Vec<Value>| -> Value {
        loop {
            let line = host
                .next_line()
                .await
                .unwrap()
                .expect("host closed stdin early");
            let value: Value = serde_json::from_str(&line).unwrap();
            received.push(value.clone());
            if value["type"] == wanted {
                return value;
            }
        }
    };
    for mut line in lines {
        let is_reply_to_host = line["type"] == "control_response"
            && line["response"]["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("req_"));
        if is_reply_to_host {
            let request = next_host("control_request", &mut received).await;
            line["response"]["request_id"] = request["request_id"].clone();
        }
        let mut text = line.to_string();
        text.push('\n');
        stdout.write_all(text.as_bytes()).await.unwrap();
        if line["type"] == "control_request" {
            let answer = next_host("control_response", &mut received).await;
            assert_eq!(answer["response"]["request_id"], line["request_id"]);
        }
    }
    // Like the CLI, read until the host closes stdin.
    while let Ok(Some(line)) = host.next_line().await {
        received.push(serde_json::from_str(&line).unwrap());
    }
    received
}

async fn replay(name: &str) -> Option<(Vec<Event>, Vec<Value>)> {
    let dir = transcripts_dir()?.join(name);
    let lines = read_jsonl(&dir.join("stdout.jsonl"));
    let (host_stdin, cli_stdin) = tokio::io::duplex(1 << 20);
    let (cli_stdout, host_stdout) = tokio::io::duplex(1 << 20);
    let cli = tokio::spawn(play(lines, cli_stdin, cli_stdout));
    let mut agent = Agent::new(
        AgentIo {
            stdin: Box::pin(host_stdin),
            stdout: Box::pin(host_stdout),
        },
        AgentOptions {
            control_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    );
    let handle = agent.handle();
    let init = handle.initialize().await.expect("initialize answered");
    assert_eq!(init["claude_code_version"], "2.1.330");
    if name == "s12_set_mode" {
        handle
            .set_permission_mode(PermissionMode::AcceptEdits)
            .await
            .unwrap();
    }
    handle.send_message("replayed prompt").await.unwrap();
    let mut events = Vec::new();
    let mut interrupted = false;
    loop {
        let event = agent
            .next_event_timeout(Duration::from_secs(10))
            .await
            .expect("the replay goes on");
        match &event {
            Event::PermissionRequest(request) => {
                let answer = match &request.kind {
                    PermissionKind::AskUserQuestion { questions } => PermissionAnswer::Answers(
                        [(questions[0].question.clone(), "Blue".to_owned())].into(),
                    ),
                    _ => PermissionAnswer::Allow {
                        updated_input: None,
                    },
                };
                assert_eq!(handle.pending_permissions().len(), 1);
                handle.respond(&request.request_id, answer).await.unwrap();
                assert!(handle.pending_permissions().is_empty());
            }
            Event::TextDelta { .. } if name == "s11_interrupt" && !interrupted => {
                interrupted = true;
                handle.interrupt().await.unwrap();
            }
            _ => {}
        }
        let done = matches!(event, Event::TurnResult(_));
        events.push(event);
        if done {
            break;
        }
    }
    assert!(agent.shutdown(Duration::from_secs(5)).await);
    let received = tokio::time::timeout(Duration::from_secs(5), cli)
        .await
        .expect("the replay ends once stdin is closed")
        .unwrap();
    Some((events, received))
}

#[tokio::test]
async fn replay_allow() {
    let Some((events, received)) = replay("s1_stream_perm_allow").await else {
        return;
    };
    assert!(matches!(events.last(), Some(Event::TurnResult(r)) if !r.is_error));
    let answer = received
        .iter()
        .find(|l| l["type"] == "control_response")
        .unwrap();
    assert_eq!(answer["response"]["response"]["behavior"], "allow");
    assert_eq!(
        answer["response"]["response"]["updatedInput"]["file_path"],
        "/workspace/hello.txt"
    );
    let prompt = received.iter().find(|l| l["type"] == "user").unwrap();
    assert_eq!(prompt["message"]["content"], "replayed prompt");
    assert!(prompt["uuid"].is_string());
}

#[tokio::test]
async fn replay_ask() {
    let Some((events, received)) = replay("s5_ask_answer").await else {
        return;
    };
    assert!(matches!(events.last(), Some(Event::TurnResult(r)) if !r.is_error));
    let answer = received
        .iter()
        .find(|l| l["type"] == "control_response")
        .unwrap();
    assert_eq!(
        answer["response"]["response"]["updatedInput"]["answers"]["Which color do you prefer?"],
        "Blue"
    );
}

#[tokio::test]
async fn replay_set_mode() {
    let Some((events, received)) = replay("s12_set_mode").await else {
        return;
    };
    assert!(
        received
            .iter()
            .any(|l| l["request"]["subtype"] == "set_permission_mode"
                && l["request"]["mode"] == "acceptEdits")
    );
    assert!(matches!(events.last(), Some(Event::TurnResult(r)) if !r.is_error));
}

#[tokio::test]
async fn replay_interrupt() {
    let Some((events, received)) = replay("s11_interrupt").await else {
        return;
    };
    assert!(
        received
            .iter()
            .any(|l| l["request"]["subtype"] == "interrupt")
    );
    assert!(matches!(events.last(), Some(Event::TurnResult(r))
        if r.terminal_reason.as_deref() == Some("aborted_streaming")));
}
