//! The typed events a session produces, and the answers to permission requests.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CLI's permission modes (`--permission-mode`, `set_permission_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PermissionMode {
    /// Write and Bash ask through a permission request.
    #[default]
    Default,
    /// File edits run unasked; Bash still asks.
    AcceptEdits,
    /// Read-only planning, ended by an ExitPlanMode request.
    Plan,
    /// Nothing asks. Only for hardened containers.
    BypassPermissions,
    /// Anything that would ask is refused.
    DontAsk,
}

impl PermissionMode {
    /// The CLI's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Plan => "plan",
            PermissionMode::BypassPermissions => "bypassPermissions",
            PermissionMode::DontAsk => "dontAsk",
        }
    }

    /// Parses the CLI's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "default" => PermissionMode::Default,
            "acceptEdits" => PermissionMode::AcceptEdits,
            "plan" => PermissionMode::Plan,
            "bypassPermissions" => PermissionMode::BypassPermissions,
            "dontAsk" => PermissionMode::DontAsk,
            _ => return None,
        })
    }
}

impl fmt::Display for PermissionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the agent did or asks, in the order the CLI reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A turn started (`system/init`, repeated at the start of every turn).
    Init(Init),
    /// A piece of streamed text (only with partial messages on; the complete text still
    /// follows as [`Event::Text`]).
    TextDelta { text: String },
    /// A complete text block of an assistant message.
    Text { message_id: String, text: String },
    /// A complete thinking block.
    Thinking { text: String },
    /// The model called a tool.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// A tool's result as the model receives it.
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
    /// The CLI waits for an answer (see [`crate::agent::AgentHandle::respond`]).
    PermissionRequest(PermissionRequest),
    /// The CLI withdrew a permission request; an answer is no longer expected.
    PermissionCancelled { request_id: String },
    /// The task list changed (the whole list).
    TodoUpdate { items: Vec<TodoItem> },
    /// The permission mode changed (after `set_permission_mode` or an approved plan).
    PermissionModeChanged { mode: String },
    /// `running`, `requires_action` or `idle` (only with session-state reporting on).
    SessionState { state: String },
    /// The turn was interrupted (by `interrupt` or a deny-and-interrupt answer).
    Interrupted { during_tool_use: bool },
    /// The API call failed and is retried.
    Retry(Retry),
    /// The model's API failed for good, or the CLI reported another error. A
    /// [`Event::TurnResult`] with `is_error` follows.
    Error(AgentError),
    /// The turn ended.
    TurnResult(TurnResult),
}

/// `system/init`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Init {
    /// The CLI's session id: what `--resume` takes.
    pub session_id: String,
    pub model: String,
    pub cwd: String,
    pub permission_mode: String,
    pub tools: Vec<String>,
    pub cli_version: String,
}

/// A `can_use_tool` request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PermissionRequest {
    /// Answer with this id.
    pub request_id: String,
    pub tool_name: String,
    pub tool_use_id: String,
    /// The tool's input as the model wrote it.
    pub input: Value,
    /// The CLI's short description, e.g. the file name.
    pub description: Option<String>,
    /// For Bash: the path that made the command need permission.
    pub blocked_path: Option<String>,
    /// Rules the CLI suggests persisting; [`PermissionAnswer::AllowAlways`] sends them back.
    pub suggestions: Vec<Value>,
    pub kind: PermissionKind,
}

/// What a permission request asks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PermissionKind {
    /// May the tool run with this input?
    Tool,
    /// The model asks the user; answer with [`PermissionAnswer::Answers`].
    AskUserQuestion { questions: Vec<Question> },
    /// The model asks to leave plan mode with this plan.
    ExitPlanMode {
        plan: String,
        plan_file_path: Option<String>,
    },
}

/// One question of an AskUserQuestion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Question {
    pub question: String,
    #[serde(default)]
    pub header: String,
    #[serde(default)]
    pub options: Vec<QuestionOption>,
    #[serde(default)]
    pub multi_select: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionOption {
    pub label: String,
    #[serde(default)]
    pub description: String,
}

/// The answer to a [`PermissionRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum PermissionAnswer {
    /// Run the tool, with the original input or an edited one.
    Allow { updated_input: Option<Value> },
    /// Run it and persist the request's suggested rules (`updatedPermissions`), so
    /// similar calls no longer ask.
    AllowAlways { updated_input: Option<Value> },
    /// Refuse; the model gets `message` as an error tool result and the turn goes on.
    Deny { message: String },
    /// Refuse and end the turn.
    DenyAndInterrupt { message: String },
    /// Answers to an AskUserQuestion request: question text → chosen label(s) (several
    /// labels of a multi-select question joined with ", ").
    Answers(BTreeMap<String, String>),
}

/// A task-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TodoItem {
    pub content: String,
    /// `pending`, `in_progress` or `completed`.
    pub status: String,
    #[serde(default)]
    pub active_form: String,
}

/// `system/api_retry`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retry {
    pub attempt: u32,
    pub max_retries: u32,
    pub delay_ms: u64,
    pub error_status: Option<u16>,
    pub error: String,
}

/// An error the CLI reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentError {
    /// E.g. `server_error`, `authentication_failed`, `permission_denied`, `unknown`.
    pub kind: String,
    pub message: String,
    /// The API's HTTP status, for API errors.
    pub api_status: Option<u16>,
}

/// Token counts of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

/// A tool call the user refused during the turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PermissionDenial {
    pub tool_name: String,
    pub tool_use_id: String,
    pub tool_input: Value,
}

/// The `result` line that ends a turn.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TurnResult {
    pub session_id: String,
    /// `success`, `error_during_execution`, `error_max_turns`, …
    pub subtype: String,
    pub is_error: bool,
    /// `completed`, `aborted_streaming`, `aborted_tools`, `max_turns`, `api_error`, …
    pub terminal_reason: Option<String>,
    /// The final text, when the turn completed.
    pub result: Option<String>,
    pub errors: Vec<String>,
    pub duration_ms: u64,
    pub duration_api_ms: u64,
    pub num_turns: u32,
    pub cost_usd: f64,
    pub usage: Usage,
    pub permission_denials: Vec<PermissionDenial>,
    pub api_error_status: Option<u16>,
}
