//! The `sim` runtime, for benchmarks only: an in-process agent that speaks the CLI's
//! stream-json protocol instantly, scripted by the fake model's prompt markers
//! (`design.md` §6), so benchmarks measure the fleet's own overhead through the same
//! driver and parser.
//!
//! It writes `[[write:PATH]]` files into the session's workspace (so checkpoints and
//! artifacts behave), asks the same permission requests as the CLI, but does not run
//! `[[bash:CMD]]` commands. `[[slow:MS]]` really takes MS milliseconds (interruptible).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::ids::SessionId;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};
use tokio::task::JoinHandle;

use super::{Error, Files, Lifecycle, Session, SessionFiles, SessionSpec, archive, process};
use crate::agent::{Agent, AgentIo, AgentOptions, PermissionMode};

/// The sim runtime. Session directories live under `sessions_dir` as for `process`.
#[derive(Debug, Clone)]
pub struct SimRuntime {
    sessions_dir: Arc<PathBuf>,
}

impl SimRuntime {
    pub fn new(sessions_dir: PathBuf) -> Self {
        Self {
            sessions_dir: Arc::new(sessions_dir),
        }
    }

    pub(crate) fn session_root(&self, id: &SessionId) -> PathBuf {
        self.sessions_dir.join(id.as_str())
    }

    pub(crate) async fn start(&self, spec: SessionSpec) -> Result<Session, Error> {
        let session = spec.session_id.to_string();
        let root = self.session_root(&spec.session_id);
        process::prepare_root(&root, spec.restore.clone(), &session).await?;
        let (host_stdin, sim_stdin) = tokio::io::duplex(64 * 1024);
        let (sim_stdout, host_stdout) = tokio::io::duplex(256 * 1024);
        let sim = SimAgent {
            // The agent's side of the pipe (a container's, for real runtimes): small.
            lines: BufReader::with_capacity(1024, sim_stdin).lines(),
            out: sim_stdout,
            workspace: root.join(archive::WORKSPACE),
            session_id: spec
                .resume
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            mode: spec.permission_mode,
            next_request: 0,
            queued: Vec::new(),
        };
        let task = tokio::spawn(sim.run());
        let agent = Agent::new(
            AgentIo {
                stdin: Box::pin(host_stdin),
                stdout: Box::pin(host_stdout),
            },
            AgentOptions::default(),
        );
        if let Err(source) = agent.handle().initialize().await {
            task.abort();
            return Err(Error::Initialize { session, source });
        }
        Ok(Session {
            id: spec.session_id.clone(),
            agent,
            egress: None,
            files: SessionFiles {
                session: spec.session_id,
                files: Files::Dir(root),
            },
            life: Lifecycle::Sim(SimLife { task }),
        })
    }
}

pub(crate) struct SimLife {
    task: JoinHandle<()>,
}

impl SimLife {
    pub(crate) async fn stop(self) -> Result<(), Error> {
        self.task.abort();
        if let Err(err) = self.task.await
            && !err.is_cancelled()
        {
            tracing::error!(error = &err as &dyn std::error::Error, "sim agent failed");
        }
        Ok(())
    }
}

/// A step of the prompt's script.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Write(String),
    Bash(String),
    Ask,
    Plan,
    Todo,
    Slow(u64),
    Long(usize),
    Error(u16),
}

fn parse_steps(prompt: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("[[") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("]]") else { break };
        let body = &after[..end];
        let (name, arg) = match body.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (body, None),
        };
        let step = match (name, arg) {
            ("write", Some(p)) if !p.trim().is_empty() => Some(Step::Write(p.trim().to_owned())),
            ("bash", Some(c)) if !c.trim().is_empty() => Some(Step::Bash(c.to_owned())),
            ("ask", None) => Some(Step::Ask),
            ("plan", None) => Some(Step::Plan),
            ("todo", None) => Some(Step::Todo),
            ("slow", Some(ms)) => ms.trim().parse().ok().map(Step::Slow),
            ("long", Some(n)) => n.trim().parse().ok().map(Step::Long),
            ("error", Some(s)) => s.trim().parse().ok().map(Step::Error),
            _ => None,
        };
        match step {
            Some(step) => {
                steps.push(step);
                rest = &after[end + 2..];
            }
            None => rest = after,
        }
    }
    steps
}

/// Why a turn stopped early.
enum Abort {
    /// `interrupt` or deny-and-interrupt: the turn ends with an error result.
    Interrupted { reason: &'static str },
    /// stdin closed or stdout gone: the agent exits.
    Gone,
}

struct SimAgent {
    lines: Lines<BufReader<DuplexStream>>,
    out: DuplexStream,
    workspace: PathBuf,
    session_id: String,
    mode: PermissionMode,
    next_request: u64,
    /// Prompts that arrived during a turn.
    queued: Vec<String>,
}

impl SimAgent {
    async fn run(mut self) {
        loop {
            let prompt = match self.queued.pop() {
                Some(prompt) => prompt,
                None => match self.next_host_line().await {
                    Some(Host::Prompt(prompt)) => prompt,
                    Some(_) => continue,
                    None => return,
                },
            };
            if self.turn(&prompt).await.is_err() {
                return;
            }
        }
    }

    async fn emit(&mut self, value: Value) -> Result<(), Abort> {
        let mut line = value.to_string();
        line.push('\n');
        self.out
            .write_all(line.as_bytes())
            .await
            .map_err(|_| Abort::Gone)
    }

    /// Reads host lines, answering control requests; returns the first that needs the
    /// caller (a prompt, a control response, an interrupt).
    async fn next_host_line(&mut self) -> Option<Host> {
        loop {
            let line = self.lines.next_line().await.ok()??;
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match value.get("type").and_then(Value::as_str) {
                Some("user") => {
                    let content = &value["message"]["content"];
                    let text = match content {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    return Some(Host::Prompt(text));
                }
                Some("control_response") => {
                    return Some(Host::Answer(value["response"].clone()));
                }
                Some("control_request") => {
                    let id = value["request_id"].as_str().unwrap_or("").to_owned();
                    let request = &value["request"];
                    let response = match request["subtype"].as_str() {
                        Some("initialize") => json!({
                            "commands": [], "agents": [], "models": [],
                            "claude_code_version": "sim",
                            "current_permission_mode": self.mode.as_str(),
                            "session_state": "idle"
                        }),
                        Some("set_permission_mode") => {
                            if let Some(mode) =
                                request["mode"].as_str().and_then(PermissionMode::parse)
                            {
                                self.mode = mode;
                            }
                            json!({"mode": self.mode.as_str()})
                        }
                        Some("interrupt") => json!({"still_queued": []}),
                        _ => json!({}),
                    };
                    let reply = json!({"type": "control_response",
                        "response": {"subtype": "success", "request_id": id, "response": response}});
                    if self.emit(reply).await.is_err() {
                        return None;
                    }
                    match request["subtype"].as_str() {
                        Some("interrupt") => return Some(Host::Interrupt),
                        Some("set_permission_mode") => {
                            let status = json!({"type": "system", "subtype": "status", "status": null,
                                "permissionMode": self.mode.as_str(), "session_id": self.session_id});
                            if self.emit(status).await.is_err() {
                                return None;
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    fn assistant(&self, id: &str, block: Value) -> Value {
        json!({"type": "assistant", "message": {"id": id, "type": "message", "role": "assistant",
            "model": "sim", "content": [block], "stop_reason": null,
            "usage": {"input_tokens": 100, "output_tokens": 10}},
            "parent_tool_use_id": null, "session_id": self.session_id})
    }

    fn tool_result(&self, tool_use_id: &str, content: &str, is_error: bool) -> Value {
        json!({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use_id, "content": content, "is_error": is_error}]},
            "parent_tool_use_id": null, "session_id": self.session_id})
    }

    /// Asks permission; returns the answer's inner response.
    async fn ask(&mut self, tool: &str, tool_use_id: &str, input: &Value) -> Result<Value, Abort> {
        self.next_request += 1;
        let request_id = format!("sim-{}", self.next_request);
        let mut request = json!({"subtype": "can_use_tool", "tool_name": tool, "display_name": tool,
            "input": input, "tool_use_id": tool_use_id, "permission_suggestions": []});
        if matches!(tool, "AskUserQuestion" | "ExitPlanMode") {
            request["requires_user_interaction"] = json!(true);
        }
        self.emit(json!({"type": "control_request", "request_id": request_id, "request": request}))
            .await?;
        loop {
            match self.next_host_line().await {
                None => return Err(Abort::Gone),
                Some(Host::Answer(response)) if response["request_id"] == request_id.as_str() => {
                    return Ok(response["response"].clone());
                }
                Some(Host::Answer(_)) => {}
                Some(Host::Prompt(prompt)) => self.queued.push(prompt),
                Some(Host::Interrupt) => {
                    return Err(Abort::Interrupted {
                        reason: "aborted_tools",
                    });
                }
            }
        }
    }

    /// Runs a tool that needs permission; returns the tool_result text and error flag.
    async fn permitted(
        &mut self,
        tool: &str,
        id: &str,
        input: Value,
        needs_permission: bool,
        run: impl FnOnce(&Value) -> (String, bool),
    ) -> Result<(), Abort> {
        let answer = if needs_permission {
            self.ask(tool, id, &input).await?
        } else {
            json!({"behavior": "allow", "updatedInput": input})
        };
        let (content, is_error) = if answer["behavior"] == "allow" {
            let input = answer.get("updatedInput").cloned().unwrap_or(input);
            run(&input)
        } else {
            let message = answer["message"].as_str().unwrap_or("denied").to_owned();
            if answer["interrupt"] == true {
                let result = self.tool_result(id, &message, true);
                self.emit(result).await?;
                return Err(Abort::Interrupted {
                    reason: "aborted_tools",
                });
            }
            (message, true)
        };
        let result = self.tool_result(id, &content, is_error);
        self.emit(result).await
    }

    async fn turn(&mut self, prompt: &str) -> Result<(), ()> {
        let started = Instant::now();
        let init = json!({"type": "system", "subtype": "init", "session_id": self.session_id,
            "cwd": self.workspace.to_string_lossy(), "model": "sim",
            "permissionMode": self.mode.as_str(), "claude_code_version": "sim",
            "tools": ["AskUserQuestion", "Bash", "ExitPlanMode", "TodoWrite", "Write"]});
        if self.emit(init).await.is_err() {
            return Err(());
        }
        let outcome = self.steps(prompt).await;
        let (subtype, is_error, reason, result) = match outcome {
            Ok(text) => ("success", false, "completed", Some(text)),
            Err(Abort::Interrupted { reason }) => {
                let during_tool_use = if reason == "aborted_tools" {
                    " for tool use"
                } else {
                    ""
                };
                let note = json!({"type": "user", "message": {"role": "user", "content": [
                    {"type": "text", "text": format!("[Request interrupted by user{during_tool_use}]")}]},
                    "session_id": self.session_id});
                if self.emit(note).await.is_err() {
                    return Err(());
                }
                ("error_during_execution", true, reason, None)
            }
            Err(Abort::Gone) => return Err(()),
        };
        let api_error: Option<u16> = result
            .as_deref()
            .and_then(|r| r.strip_prefix("API Error: "))
            .and_then(|r| r.split(' ').next())
            .and_then(|s| s.parse().ok());
        let (subtype, is_error, reason) = match api_error {
            Some(_) => ("success", true, "api_error"),
            None => (subtype, is_error, reason),
        };
        let line = json!({"type": "result", "subtype": subtype, "is_error": is_error,
            "terminal_reason": reason, "result": result, "session_id": self.session_id,
            "duration_ms": started.elapsed().as_millis() as u64, "duration_api_ms": 0,
            "num_turns": 1, "total_cost_usd": 0.0,
            "usage": {"input_tokens": 100, "output_tokens": 10,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            "permission_denials": [], "api_error_status": api_error});
        self.emit(line).await.map_err(drop)
    }

    /// Runs the prompt's steps; returns the final text.
    async fn steps(&mut self, prompt: &str) -> Result<String, Abort> {
        let steps = parse_steps(prompt);
        let mut text_len = None;
        let mut slow_ms = 0;
        let mut n = 0;
        for step in steps.iter().cloned() {
            n += 1;
            let msg = format!("msg_sim_{n}");
            let id = format!("toolu_sim_{n}");
            let asks = matches!(self.mode, PermissionMode::Default | PermissionMode::Plan);
            match step {
                Step::Slow(ms) => slow_ms = ms,
                Step::Long(len) => text_len = Some(len),
                Step::Error(status) => {
                    let line = json!({"type": "assistant", "message": {"id": msg, "model": "<synthetic>",
                        "role": "assistant", "content": [{"type": "text", "text": format!("API Error: {status} sim")}]},
                        "session_id": self.session_id, "error": "server_error",
                        "api_error_status": status, "is_api_error_message": true});
                    self.emit(line).await?;
                    return Ok(format!("API Error: {status} sim"));
                }
                Step::Write(path) => {
                    let input = json!({"file_path": path, "content": file_content(&path)});
                    let text = self.assistant(
                        &msg,
                        json!({"type": "text", "text": format!("I'll create {path}.")}),
                    );
                    self.emit(text).await?;
                    let call = self.assistant(
                        &msg,
                        json!({"type": "tool_use", "id": id, "name": "Write", "input": input}),
                    );
                    self.emit(call).await?;
                    let workspace = self.workspace.clone();
                    let asks = asks || self.mode == PermissionMode::DontAsk;
                    self.permitted("Write", &id, input, asks, |input| {
                        write_file(&workspace, input)
                    })
                    .await?;
                }
                Step::Bash(command) => {
                    let input =
                        json!({"command": command, "description": "Run the requested command"});
                    let call = self.assistant(
                        &msg,
                        json!({"type": "tool_use", "id": id, "name": "Bash", "input": input}),
                    );
                    self.emit(call).await?;
                    let asks = self.mode != PermissionMode::BypassPermissions;
                    self.permitted("Bash", &id, input, asks, |input| {
                        (
                            format!("(sim) not run: {}", input["command"].as_str().unwrap_or("")),
                            false,
                        )
                    })
                    .await?;
                }
                Step::Ask => {
                    let input = json!({"questions": [{"question": "Which color do you prefer?", "header": "Color",
                        "multiSelect": false, "options": [{"label": "Red", "description": "warm"},
                        {"label": "Blue", "description": "cool"}]}]});
                    let call = self.assistant(&msg, json!({"type": "tool_use", "id": id, "name": "AskUserQuestion", "input": input}));
                    self.emit(call).await?;
                    self.permitted("AskUserQuestion", &id, input, true, |input| {
                        match input.get("answers").and_then(Value::as_object) {
                            Some(answers) => {
                                let pairs: Vec<String> = answers
                                    .iter()
                                    .map(|(q, a)| format!("\"{q}\"={a}"))
                                    .collect();
                                (
                                    format!(
                                        "Your questions have been answered: {}.",
                                        pairs.join(", ")
                                    ),
                                    false,
                                )
                            }
                            None => ("The user did not answer the questions.".to_owned(), false),
                        }
                    })
                    .await?;
                }
                Step::Plan => {
                    let input = json!({"plan": "# Plan\n1. Write hello.txt\n2. Report back\n"});
                    let call = self.assistant(&msg, json!({"type": "tool_use", "id": id, "name": "ExitPlanMode", "input": input}));
                    self.emit(call).await?;
                    let before = self.mode;
                    self.permitted("ExitPlanMode", &id, input, true, |_| {
                        (
                            "User has approved your plan. You can now start coding.".to_owned(),
                            false,
                        )
                    })
                    .await?;
                    if before == PermissionMode::Plan {
                        self.mode = PermissionMode::Default;
                        let status = json!({"type": "system", "subtype": "status", "status": null,
                            "permissionMode": "default", "session_id": self.session_id});
                        self.emit(status).await?;
                    }
                }
                Step::Todo => {
                    let todos = json!([
                        {"content": "Write hello.txt", "status": "in_progress", "activeForm": "Writing hello.txt"},
                        {"content": "Say done", "status": "pending", "activeForm": "Saying done"}]);
                    let call = self.assistant(&msg, json!({"type": "tool_use", "id": id, "name": "TodoWrite", "input": {"todos": todos}}));
                    self.emit(call).await?;
                    let mut result =
                        self.tool_result(&id, "Todos have been modified successfully.", false);
                    result["tool_use_result"] = json!({"oldTodos": [], "newTodos": todos});
                    self.emit(result).await?;
                }
            }
        }
        let text = match text_len {
            Some(len) => "lorem ipsum dolor sit amet "
                .chars()
                .cycle()
                .take(len)
                .collect(),
            None if steps.is_empty() => "Hello from the sim agent.".to_owned(),
            None => "Done.".to_owned(),
        };
        if slow_ms > 0 {
            self.stream_slowly(&text, Duration::from_millis(slow_ms))
                .await?;
        }
        let line = self.assistant("msg_sim_final", json!({"type": "text", "text": text}));
        self.emit(line).await?;
        Ok(text)
    }

    async fn stream_slowly(&mut self, text: &str, over: Duration) -> Result<(), Abort> {
        let chunks: Vec<String> = text
            .chars()
            .collect::<Vec<_>>()
            .chunks(8)
            .map(|c| c.iter().collect())
            .collect();
        let pause = over / chunks.len().max(1) as u32;
        for chunk in chunks {
            let delta = json!({"type": "stream_event", "event": {"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": chunk}}, "session_id": self.session_id});
            self.emit(delta).await?;
            let deadline = tokio::time::sleep(pause);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    line = self.next_host_line() => match line {
                        None => return Err(Abort::Gone),
                        Some(Host::Interrupt) => return Err(Abort::Interrupted { reason: "aborted_streaming" }),
                        Some(Host::Prompt(prompt)) => self.queued.push(prompt),
                        Some(Host::Answer(_)) => {}
                    },
                }
            }
        }
        Ok(())
    }
}

enum Host {
    Prompt(String),
    Answer(Value),
    Interrupt,
}

/// What the fake model writes too: an HTML page for `.html`, else a line of text.
fn file_content(path: &str) -> &'static str {
    if path.ends_with(".html") || path.ends_with(".htm") {
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Hello</title></head>\n<body><h1>Hello from the fake model</h1></body>\n</html>\n"
    } else {
        "hello from fake model\n"
    }
}

fn write_file(workspace: &std::path::Path, input: &Value) -> (String, bool) {
    let path = input["file_path"].as_str().unwrap_or("");
    let content = input["content"].as_str().unwrap_or("");
    let rel = path
        .strip_prefix(&*workspace.to_string_lossy())
        .unwrap_or(path)
        .trim_start_matches('/');
    let Ok(rel) = archive::relative_path(rel) else {
        return (format!("(sim) refused path {path}"), true);
    };
    let full = workspace.join(rel);
    let written = full
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| std::fs::write(&full, content));
    match written {
        Ok(()) => (format!("File created successfully at: {path}"), false),
        Err(err) => (format!("(sim) write failed: {err}"), true),
    }
}
