//! The CLI's stream-json protocol without I/O: stdout lines into [`Incoming`] items, and
//! the stdin lines the host writes.
//!
//! Every stdout line type observed with CLI 2.1.330 is handled; unknown types and
//! subtypes come back as [`Incoming::Ignored`] so the driver can log them and go on.

use serde_json::{Value, json};

use super::event::{
    AgentError, Event, Init, PermissionAnswer, PermissionDenial, PermissionKind, PermissionMode,
    PermissionRequest, Question, Retry, TodoItem, TurnResult,
};

/// What one stdout line means to the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// Events for the session's owner (a line can carry several, e.g. tool results).
    Events(Vec<Event>),
    /// The answer to a control request the host sent.
    ControlResponse {
        request_id: String,
        /// The inner `response` object, or the CLI's error message.
        result: Result<Value, String>,
    },
    /// A control request from the CLI other than `can_use_tool` (hook callbacks, MCP
    /// messages): the driver must answer it with an error so the CLI does not wait.
    UnsupportedControlRequest { request_id: String, subtype: String },
    /// A line with nothing for the host (lifecycle, status, replays, unknown types).
    Ignored { kind: String },
}

/// A line that is not a JSON object.
#[derive(Debug, thiserror::Error)]
#[error("stdout line is not a JSON object")]
pub struct ParseError(#[source] pub serde_json::Error);

/// Parses one stdout line.
pub fn parse_line(line: &str) -> Result<Incoming, ParseError> {
    let value: Value = serde_json::from_str(line).map_err(ParseError)?;
    Ok(parse_value(&value))
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn status_of(v: &Value, key: &str) -> Option<u16> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
}

/// Parses one stdout line already decoded as JSON.
pub fn parse_value(v: &Value) -> Incoming {
    let kind = str_of(v, "type");
    match kind.as_str() {
        "system" => parse_system(v),
        "assistant" => parse_assistant(v),
        "user" => parse_user(v),
        "result" => Incoming::Events(vec![Event::TurnResult(parse_result(v))]),
        "stream_event" => parse_stream_event(v),
        "control_request" => parse_control_request(v),
        "control_response" => {
            let response = v.get("response").unwrap_or(&Value::Null);
            let request_id = str_of(response, "request_id");
            let result = if str_of(response, "subtype") == "success" {
                Ok(response.get("response").cloned().unwrap_or(Value::Null))
            } else {
                Err(opt_str(response, "error").unwrap_or_else(|| response.to_string()))
            };
            Incoming::ControlResponse { request_id, result }
        }
        "control_cancel_request" => Incoming::Events(vec![Event::PermissionCancelled {
            request_id: str_of(v, "request_id"),
        }]),
        _ => Incoming::Ignored { kind },
    }
}

fn parse_system(v: &Value) -> Incoming {
    let subtype = str_of(v, "subtype");
    let event = match subtype.as_str() {
        "init" => Event::Init(Init {
            session_id: str_of(v, "session_id"),
            model: str_of(v, "model"),
            cwd: str_of(v, "cwd"),
            permission_mode: str_of(v, "permissionMode"),
            tools: v
                .get("tools")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            cli_version: str_of(v, "claude_code_version"),
        }),
        "status" => match opt_str(v, "permissionMode") {
            Some(mode) => Event::PermissionModeChanged { mode },
            None => {
                return Incoming::Ignored {
                    kind: "system/status".into(),
                };
            }
        },
        "session_state_changed" => Event::SessionState {
            state: str_of(v, "state"),
        },
        "api_retry" => Event::Retry(Retry {
            attempt: u64_of(v, "attempt") as u32,
            max_retries: u64_of(v, "max_retries") as u32,
            delay_ms: u64_of(v, "retry_delay_ms"),
            error_status: status_of(v, "error_status"),
            error: str_of(v, "error"),
        }),
        "permission_denied" => Event::Error(AgentError {
            kind: "permission_denied".into(),
            message: str_of(v, "message"),
            api_status: None,
        }),
        _ => {
            return Incoming::Ignored {
                kind: format!("system/{subtype}"),
            };
        }
    };
    Incoming::Events(vec![event])
}

fn content_blocks(message: &Value) -> Vec<Value> {
    match message.get("content") {
        Some(Value::Array(blocks)) => blocks.clone(),
        Some(Value::String(text)) => vec![json!({"type": "text", "text": text})],
        _ => Vec::new(),
    }
}

fn parse_assistant(v: &Value) -> Incoming {
    let message = v.get("message").unwrap_or(&Value::Null);
    let blocks = content_blocks(message);
    if let Some(error) = opt_str(v, "error") {
        let message = blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n");
        return Incoming::Events(vec![Event::Error(AgentError {
            kind: error,
            message,
            api_status: status_of(v, "api_error_status"),
        })]);
    }
    let message_id = str_of(message, "id");
    let events = blocks
        .iter()
        .filter_map(|block| match block.get("type").and_then(Value::as_str)? {
            "text" => Some(Event::Text {
                message_id: message_id.clone(),
                text: str_of(block, "text"),
            }),
            "thinking" => Some(Event::Thinking {
                text: str_of(block, "thinking"),
            }),
            "tool_use" | "server_tool_use" | "mcp_tool_use" => Some(Event::ToolUse {
                id: str_of(block, "id"),
                name: str_of(block, "name"),
                input: block.get("input").cloned().unwrap_or(Value::Null),
            }),
            _ => None,
        })
        .collect();
    Incoming::Events(events)
}

fn tool_result_text(block: &Value) -> String {
    match block.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn parse_user(v: &Value) -> Incoming {
    // Echoes of the host's own prompts (`--replay-user-messages`).
    if v.get("isReplay").and_then(Value::as_bool) == Some(true) {
        return Incoming::Ignored {
            kind: "user/replay".into(),
        };
    }
    let message = v.get("message").unwrap_or(&Value::Null);
    let mut events = Vec::new();
    for block in content_blocks(message) {
        match block.get("type").and_then(Value::as_str) {
            Some("tool_result") => events.push(Event::ToolResult {
                tool_use_id: str_of(&block, "tool_use_id"),
                content: tool_result_text(&block),
                is_error: block
                    .get("is_error")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }),
            Some("text") => {
                let text = str_of(&block, "text");
                if text.starts_with("[Request interrupted by user") {
                    events.push(Event::Interrupted {
                        during_tool_use: text.contains("for tool use"),
                    });
                }
            }
            _ => {}
        }
    }
    // TodoWrite's result carries the whole new list.
    if let Some(todos) = v
        .get("tool_use_result")
        .and_then(|r| r.get("newTodos"))
        .and_then(|t| serde_json::from_value::<Vec<TodoItem>>(t.clone()).ok())
    {
        events.push(Event::TodoUpdate { items: todos });
    }
    if events.is_empty() {
        return Incoming::Ignored {
            kind: "user".into(),
        };
    }
    Incoming::Events(events)
}

fn parse_result(v: &Value) -> TurnResult {
    TurnResult {
        session_id: str_of(v, "session_id"),
        subtype: str_of(v, "subtype"),
        is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false),
        terminal_reason: opt_str(v, "terminal_reason"),
        result: opt_str(v, "result"),
        errors: v
            .get("errors")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        duration_ms: u64_of(v, "duration_ms"),
        duration_api_ms: u64_of(v, "duration_api_ms"),
        num_turns: u64_of(v, "num_turns") as u32,
        cost_usd: v
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        usage: v
            .get("usage")
            .and_then(|u| serde_json::from_value(u.clone()).ok())
            .unwrap_or_default(),
        permission_denials: v
            .get("permission_denials")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .map(|d| PermissionDenial {
                        tool_name: str_of(d, "tool_name"),
                        tool_use_id: str_of(d, "tool_use_id"),
                        tool_input: d.get("tool_input").cloned().unwrap_or(Value::Null),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        api_error_status: status_of(v, "api_error_status"),
    }
}

fn parse_stream_event(v: &Value) -> Incoming {
    let event = v.get("event").unwrap_or(&Value::Null);
    let delta = event.get("delta").unwrap_or(&Value::Null);
    if str_of(event, "type") == "content_block_delta" && str_of(delta, "type") == "text_delta" {
        return Incoming::Events(vec![Event::TextDelta {
            text: str_of(delta, "text"),
        }]);
    }
    Incoming::Ignored {
        kind: "stream_event".into(),
    }
}

fn parse_control_request(v: &Value) -> Incoming {
    let request_id = str_of(v, "request_id");
    let request = v.get("request").unwrap_or(&Value::Null);
    let subtype = str_of(request, "subtype");
    if subtype != "can_use_tool" {
        return Incoming::UnsupportedControlRequest {
            request_id,
            subtype,
        };
    }
    let tool_name = str_of(request, "tool_name");
    let input = request.get("input").cloned().unwrap_or(Value::Null);
    let kind = match tool_name.as_str() {
        "AskUserQuestion" => PermissionKind::AskUserQuestion {
            questions: input
                .get("questions")
                .and_then(|q| serde_json::from_value::<Vec<Question>>(q.clone()).ok())
                .unwrap_or_default(),
        },
        "ExitPlanMode" => PermissionKind::ExitPlanMode {
            plan: str_of(&input, "plan"),
            plan_file_path: opt_str(&input, "planFilePath"),
        },
        _ => PermissionKind::Tool,
    };
    Incoming::Events(vec![Event::PermissionRequest(PermissionRequest {
        request_id,
        tool_name,
        tool_use_id: str_of(request, "tool_use_id"),
        input,
        description: opt_str(request, "description"),
        blocked_path: opt_str(request, "blocked_path"),
        suggestions: request
            .get("permission_suggestions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        kind,
    })])
}

// ---- stdin lines ------------------------------------------------------------------------

/// The `initialize` control request.
pub fn initialize(request_id: &str) -> Value {
    json!({"type": "control_request", "request_id": request_id,
           "request": {"subtype": "initialize", "hooks": null}})
}

/// The `interrupt` control request.
pub fn interrupt(request_id: &str) -> Value {
    json!({"type": "control_request", "request_id": request_id,
           "request": {"subtype": "interrupt"}})
}

/// The `set_permission_mode` control request.
pub fn set_permission_mode(request_id: &str, mode: PermissionMode) -> Value {
    json!({"type": "control_request", "request_id": request_id,
           "request": {"subtype": "set_permission_mode", "mode": mode.as_str()}})
}

/// A user prompt. The `uuid` turns on `command_lifecycle` lines for it.
pub fn user_message(text: &str, uuid: &str) -> Value {
    json!({"type": "user", "message": {"role": "user", "content": text},
           "parent_tool_use_id": null, "session_id": "", "uuid": uuid})
}

/// The answer to a `can_use_tool` request.
pub fn permission_response(request: &PermissionRequest, answer: &PermissionAnswer) -> Value {
    let input = |updated: &Option<Value>| updated.clone().unwrap_or_else(|| request.input.clone());
    let response = match answer {
        PermissionAnswer::Allow { updated_input } => {
            json!({"behavior": "allow", "updatedInput": input(updated_input)})
        }
        PermissionAnswer::AllowAlways { updated_input } => json!({
            "behavior": "allow",
            "updatedInput": input(updated_input),
            "updatedPermissions": request.suggestions,
        }),
        PermissionAnswer::Deny { message } => json!({"behavior": "deny", "message": message}),
        PermissionAnswer::DenyAndInterrupt { message } => {
            json!({"behavior": "deny", "message": message, "interrupt": true})
        }
        PermissionAnswer::Answers(answers) => {
            let mut updated = match &request.input {
                Value::Object(map) => map.clone(),
                _ => serde_json::Map::new(),
            };
            updated.insert("answers".into(), json!(answers));
            json!({"behavior": "allow", "updatedInput": Value::Object(updated)})
        }
    };
    json!({"type": "control_response",
           "response": {"subtype": "success", "request_id": request.request_id, "response": response}})
}

/// The error answer to a control request the host does not support.
pub fn control_error(request_id: &str, message: &str) -> Value {
    json!({"type": "control_response",
           "response": {"subtype": "error", "request_id": request_id, "error": message}})
}
