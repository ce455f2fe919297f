//! The prompt-marker language and the reply it scripts (no I/O).
//!
//! The fake model is stateless: each request carries the whole conversation, so the next
//! reply is derived from it. The last user prompt's markers are expanded into steps; the
//! fake's own tool-use ids encode the step and phase they answered
//! (`toolu_fake_<step>_<phase>_<random>`), so the last such id after the prompt says where
//! the script stands, whatever the CLI did in between (denials, retries, resumes).

use serde_json::{Value, json};

/// One marker of a prompt, in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// `[[write:PATH]]`: write a small file (an `.html` path gets an HTML page).
    Write(String),
    /// `[[bash:CMD]]`: run CMD with the Bash tool.
    Bash(String),
    /// `[[ask]]`: AskUserQuestion with options Red/Blue.
    Ask,
    /// `[[plan]]`: write a plan file (in plan mode), then ExitPlanMode.
    Plan,
    /// `[[todo]]`: a task list with TodoWrite.
    Todo,
    /// `[[slow:MS]]`: stream the next text over MS milliseconds.
    Slow(u64),
    /// `[[long:N]]`: the next text has N characters.
    Long(usize),
    /// `[[error:STATUS]]`: answer with that HTTP status.
    Error(u16),
    /// `[[flaky:STATUS:N]]`: answer the first N requests for this prompt with that HTTP
    /// status, then as if the marker were not there. The script itself is stateless; the
    /// server counts (see [`Conversation::flaky`]).
    Flaky { status: u16, times: u32 },
    /// `[[say:TEXT]]`: the final answer starts with TEXT (a run tells its answers apart).
    Say(String),
}

/// The markers in `prompt`, in order. Unknown or malformed markers are ignored.
pub fn parse_markers(prompt: &str) -> Vec<Marker> {
    let mut markers = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("[[") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("]]") else { break };
        let body = &after[..end];
        let (name, arg) = match body.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (body, None),
        };
        let marker = match (name, arg) {
            ("write", Some(path)) if !path.trim().is_empty() => {
                Some(Marker::Write(path.trim().to_owned()))
            }
            ("bash", Some(cmd)) if !cmd.trim().is_empty() => Some(Marker::Bash(cmd.to_owned())),
            ("say", Some(text)) if !text.trim().is_empty() => Some(Marker::Say(text.to_owned())),
            ("ask", None) => Some(Marker::Ask),
            ("plan", None) => Some(Marker::Plan),
            ("todo", None) => Some(Marker::Todo),
            ("slow", Some(ms)) => ms.trim().parse().ok().map(Marker::Slow),
            ("long", Some(n)) => n.trim().parse().ok().map(Marker::Long),
            ("error", Some(status)) => status
                .trim()
                .parse()
                .ok()
                .filter(|s| (400..=599).contains(s))
                .map(Marker::Error),
            ("flaky", Some(arg)) => arg.split_once(':').and_then(|(status, times)| {
                let status = status.trim().parse().ok()?;
                let times = times.trim().parse().ok()?;
                (400..=599)
                    .contains(&status)
                    .then_some(Marker::Flaky { status, times })
            }),
            _ => None,
        };
        if let Some(marker) = marker {
            markers.push(marker);
            rest = &after[end + 2..];
        } else {
            // Not a marker: look again from just after the `[[`, so `[[[ask]]` still works.
            rest = after;
        }
    }
    markers
}

/// A tool call the fake makes.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub input: Value,
}

/// What the fake answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A streamed message: optional text, then optionally one tool call.
    Message {
        text: String,
        /// Total time over which the text is streamed.
        text_duration_ms: u64,
        tool: Option<ToolCall>,
    },
    /// An HTTP error with the API's JSON error body.
    Error { status: u16 },
}

/// The parts of a request the script looks at.
#[derive(Debug, Default)]
pub struct Conversation {
    /// The text of the last user prompt.
    pub prompt: String,
    /// `(step, phase)` of the last fake tool call made after that prompt.
    pub last_step: Option<(usize, usize)>,
    /// The last tool result after the prompt: its text and whether it is an error.
    pub last_tool_result: Option<(String, bool)>,
    /// The CLI's working directory, from the environment block.
    pub cwd: Option<String>,
    /// Where plan mode asks the plan to be written, when it is on.
    pub plan_file: Option<String>,
    /// The number of entries in `messages`, and a one-line summary of their roles and
    /// block types (e.g. `user[text,text] system[text] …`).
    pub message_count: usize,
    pub summary: String,
}

impl Conversation {
    /// Reads a Messages API request body.
    pub fn from_request(body: &Value) -> Self {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut conv = Conversation {
            message_count: messages.len(),
            ..Default::default()
        };
        let mut summary = Vec::new();
        let mut prompt_at = None;
        for (i, message) in messages.iter().enumerate() {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("?");
            let blocks = blocks_of(message);
            summary.push(format!(
                "{role}[{}]",
                blocks
                    .iter()
                    .map(|b| b.get("type").and_then(Value::as_str).unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            for block in &blocks {
                if let Some(text) = block.get("text").and_then(Value::as_str) {
                    if conv.cwd.is_none() {
                        conv.cwd = find_after(text, "Primary working directory: ");
                    }
                    if let Some(plan) = find_plan_file(text) {
                        conv.plan_file = Some(plan);
                    }
                }
            }
            if role == "user" {
                let prompt: Vec<&str> = blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .filter(|t| is_prompt_text(t))
                    .collect();
                // The CLI merges prompts sent in a row (e.g. after a failed turn) into one
                // message: the newest text block is the prompt being answered.
                if let Some(last) = prompt.last() {
                    conv.prompt = (*last).to_owned();
                    prompt_at = Some(i);
                }
            }
        }
        if let Some(system) = body.get("system") {
            let texts: Vec<String> = match system {
                Value::String(s) => vec![s.clone()],
                Value::Array(blocks) => blocks
                    .iter()
                    .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            };
            for text in texts {
                if conv.cwd.is_none() {
                    conv.cwd = find_after(&text, "Primary working directory: ");
                }
            }
        }
        conv.summary = summary.join(" ");
        let Some(prompt_at) = prompt_at else {
            return conv;
        };
        for message in &messages[prompt_at + 1..] {
            for block in blocks_of(message) {
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        if let Some(step) = block
                            .get("id")
                            .and_then(Value::as_str)
                            .and_then(parse_tool_id)
                        {
                            conv.last_step = Some(step);
                        }
                    }
                    Some("tool_result") => {
                        let is_error = block
                            .get("is_error")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        conv.last_tool_result = Some((content_text(&block), is_error));
                    }
                    _ => {}
                }
            }
        }
        conv
    }

    /// The reply to this request. `random` makes tool-use ids unique.
    pub fn reply(&self, random: &str) -> Reply {
        let markers = parse_markers(&self.prompt);
        let (mut step, mut phase) = match self.last_step {
            None => (0, 0),
            Some((step, phase)) => {
                if markers.get(step) == Some(&Marker::Plan) && phase == 0 {
                    (step, 1)
                } else {
                    (step + 1, 0)
                }
            }
        };
        let mut text_len: Option<usize> = None;
        let mut duration_ms = 0;
        while let Some(marker) = markers.get(step) {
            let id = format!("toolu_fake_{step}_{phase}_{random}");
            let tool = |name: &str, input: Value| ToolCall {
                id: id.clone(),
                name: name.to_owned(),
                input,
            };
            let (preface, call) = match marker {
                Marker::Slow(ms) => {
                    duration_ms = *ms;
                    step += 1;
                    continue;
                }
                Marker::Long(n) => {
                    text_len = Some(*n);
                    step += 1;
                    continue;
                }
                Marker::Error(status) => return Reply::Error { status: *status },
                // Counted by the server before it asks for the reply; said at the end.
                Marker::Flaky { .. } | Marker::Say(_) => {
                    step += 1;
                    continue;
                }
                Marker::Write(path) => {
                    let path = self.absolute(path);
                    (
                        format!("I'll create {path}."),
                        tool(
                            "Write",
                            json!({"file_path": path, "content": file_content(&path)}),
                        ),
                    )
                }
                Marker::Bash(command) => (
                    format!("I'll run `{command}`."),
                    tool(
                        "Bash",
                        json!({"command": command, "description": "Run the requested command"}),
                    ),
                ),
                Marker::Ask => (
                    String::new(),
                    tool(
                        "AskUserQuestion",
                        json!({"questions": [{
                            "question": "Which color do you prefer?",
                            "header": "Color",
                            "multiSelect": false,
                            "options": [
                                {"label": "Red", "description": "warm"},
                                {"label": "Blue", "description": "cool"}
                            ]
                        }]}),
                    ),
                ),
                Marker::Plan if phase == 0 => match &self.plan_file {
                    Some(plan_file) => (
                        String::new(),
                        tool("Write", json!({"file_path": plan_file, "content": PLAN})),
                    ),
                    None => {
                        phase = 1;
                        continue;
                    }
                },
                Marker::Plan => (
                    String::new(),
                    tool(
                        "ExitPlanMode",
                        json!({"plan": PLAN, "planFilePath": self.plan_file}),
                    ),
                ),
                Marker::Todo => (
                    String::new(),
                    tool(
                        "TodoWrite",
                        json!({"todos": [
                            {"content": "Write hello.txt", "status": "in_progress", "activeForm": "Writing hello.txt"},
                            {"content": "Say done", "status": "pending", "activeForm": "Saying done"}
                        ]}),
                    ),
                ),
            };
            let text = match text_len {
                Some(n) => long_text(n),
                None => preface,
            };
            return Reply::Message {
                text,
                text_duration_ms: duration_ms,
                tool: Some(call),
            };
        }
        let text = match text_len {
            Some(n) => long_text(n),
            None if markers.is_empty() => format!(
                "Hello from the fake model. I was sent {} messages: {}",
                self.message_count, self.summary
            ),
            None => match &self.last_tool_result {
                Some((result, true)) => format!("The tool was refused: {}", first_line(result)),
                Some((result, false)) => format!("Done: {}", first_line(result)),
                None => "Done.".to_owned(),
            },
        };
        let said: Vec<&str> = markers
            .iter()
            .filter_map(|m| match m {
                Marker::Say(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let text = if said.is_empty() {
            text
        } else {
            format!("{} {text}", said.join(" "))
        };
        Reply::Message {
            text,
            text_duration_ms: duration_ms,
            tool: None,
        }
    }

    /// The prompt's `[[flaky:STATUS:N]]` marker, if any: (status, N). The server answers
    /// that status to the first N requests it gets for this prompt.
    pub fn flaky(&self) -> Option<(u16, u32)> {
        parse_markers(&self.prompt)
            .into_iter()
            .find_map(|m| match m {
                Marker::Flaky { status, times } => Some((status, times)),
                _ => None,
            })
    }

    fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            return path.to_owned();
        }
        match &self.cwd {
            Some(cwd) => format!("{}/{path}", cwd.trim_end_matches('/')),
            None => path.to_owned(),
        }
    }
}

const PLAN: &str = "# Plan\n1. Write hello.txt\n2. Report back\n";

fn blocks_of(message: &Value) -> Vec<Value> {
    match message.get("content") {
        Some(Value::String(text)) => vec![json!({"type": "text", "text": text})],
        Some(Value::Array(blocks)) => blocks.clone(),
        _ => Vec::new(),
    }
}

/// User text that is the person's prompt, not something the CLI added.
fn is_prompt_text(text: &str) -> bool {
    let text = text.trim_start();
    !(text.starts_with("<system-reminder>")
        || text.starts_with("[Request interrupted")
        || text.starts_with("<command-")
        || text.starts_with("<local-command"))
}

fn content_text(block: &Value) -> String {
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

fn parse_tool_id(id: &str) -> Option<(usize, usize)> {
    let mut parts = id.strip_prefix("toolu_fake_")?.split('_');
    let step = parts.next()?.parse().ok()?;
    let phase = parts.next()?.parse().ok()?;
    Some((step, phase))
}

fn find_after(text: &str, label: &str) -> Option<String> {
    let start = text.find(label)? + label.len();
    let value = text[start..].lines().next()?.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// A `…/plans/<name>.md` path in plan mode's reminder.
fn find_plan_file(text: &str) -> Option<String> {
    let at = text.find("/plans/")?;
    let is_path = |c: char| !(c.is_whitespace() || "\"'`()<>,".contains(c));
    let start = text[..at]
        .rfind(|c: char| !is_path(c))
        .map(|i| i + 1)
        .unwrap_or(0);
    let end = text[at..]
        .find(|c: char| !is_path(c))
        .map(|i| at + i)
        .unwrap_or(text.len());
    let path = text[start..end].trim_end_matches('.');
    (path.starts_with('/') && path.ends_with(".md")).then(|| path.to_owned())
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    line.chars().take(200).collect()
}

fn file_content(path: &str) -> String {
    if path.ends_with(".html") || path.ends_with(".htm") {
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Hello</title></head>\n<body><h1>Hello from the fake model</h1></body>\n</html>\n".to_owned()
    } else {
        "hello from fake model\n".to_owned()
    }
}

/// `n` characters of readable text.
pub fn long_text(n: usize) -> String {
    const WORDS: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua ";
    WORDS.chars().cycle().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_in_order() {
        assert_eq!(
            parse_markers(
                "a [[write:x.txt]] b [[bash:echo hi > out.txt]] [[ask]][[slow:5]] [[nope]] [[long:3]] [[error:529]] [[plan]] [[todo]] [[flaky:529:2]]"
            ),
            vec![
                Marker::Write("x.txt".into()),
                Marker::Bash("echo hi > out.txt".into()),
                Marker::Ask,
                Marker::Slow(5),
                Marker::Long(3),
                Marker::Error(529),
                Marker::Plan,
                Marker::Todo,
                Marker::Flaky {
                    status: 529,
                    times: 2
                },
            ]
        );
        assert_eq!(parse_markers("no markers [[ here"), vec![]);
        assert_eq!(parse_markers("[[error:200]]"), vec![]);
        assert_eq!(parse_markers("[[flaky:200:1]] [[flaky:529]]"), vec![]);
    }

    fn request(messages: Value) -> Value {
        json!({"model": "m", "messages": messages, "stream": true})
    }

    #[test]
    fn write_then_done() {
        let first = Conversation::from_request(&request(json!([
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>x</system-reminder>"},
                {"type": "text", "text": "go [[write:hello.txt]]"}]},
            {"role": "system", "content": "# Environment\n - Primary working directory: /w\n - Shell: bash"}
        ])));
        let Reply::Message {
            tool: Some(tool), ..
        } = first.reply("r")
        else {
            panic!("expected a tool call")
        };
        assert_eq!(tool.name, "Write");
        assert_eq!(tool.input["file_path"], "/w/hello.txt");
        let second = Conversation::from_request(&request(json!([
            {"role": "user", "content": "go [[write:hello.txt]]"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": tool.id, "name": "Write", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "nope", "is_error": true}]}
        ])));
        assert_eq!(
            second.reply("r"),
            Reply::Message {
                text: "The tool was refused: nope".into(),
                text_duration_ms: 0,
                tool: None
            }
        );
    }

    #[test]
    fn a_flaky_prompt_names_its_failures_and_answers_normally() {
        let conv = Conversation::from_request(&request(json!([
            {"role": "user", "content": "hi [[flaky:529:3]]"}
        ])));
        assert_eq!(conv.flaky(), Some((529, 3)));
        assert_eq!(
            conv.reply("r"),
            Reply::Message {
                text: "Done.".into(),
                text_duration_ms: 0,
                tool: None
            }
        );
        let plain = Conversation::from_request(&request(json!([
            {"role": "user", "content": "hi"}
        ])));
        assert_eq!(plain.flaky(), None);
    }

    #[test]
    fn a_said_text_starts_the_final_answer_after_the_tools() {
        let conv = Conversation::from_request(&request(json!([
            {"role": "user", "content": "hi [[say:m-7-2]] [[slow:10]]"}
        ])));
        assert_eq!(
            conv.reply("r"),
            Reply::Message {
                text: "m-7-2 Done.".into(),
                text_duration_ms: 10,
                tool: None
            }
        );
    }

    #[test]
    fn plan_file_is_found() {
        assert_eq!(
            find_plan_file("create it at /home/agent/.claude/plans/a-b.md using Write."),
            Some("/home/agent/.claude/plans/a-b.md".into())
        );
    }
}
