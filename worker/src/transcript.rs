//! What a turn's answer post shows, as a sans-IO core.
//!
//! A [`Transcript`] accumulates one turn's streamed text, complete text blocks, tool lines
//! and tool errors from the agent's events, and builds the texts the shell publishes: the
//! streaming answer ([`Transcript::text`]), the answer with its tail once the turn ended
//! ([`Transcript::final_text`]), or once the CLI died mid-turn ([`Transcript::died_text`]).
//! It does no I/O: [`Transcript::apply`] says what to publish, the shell publishes it.
//!
//! Invariants: a complete text block or a shown tool call replaces the streamed partial
//! text (the block repeats it); blank blocks and tool calls without a line (those shown
//! elsewhere, like the task list) add nothing; the tail says why the turn ended (stopped
//! by someone, an agent error, an error result) before the footer. While the CLI waits to
//! retry a failed model API call, the streamed answer ends with one line saying so (the
//! latest retry replaces the one before; anything the model then says removes it); the
//! final text never shows that line, only how many retries the turn took: after the error
//! that ended it, or as a note when it went on.

use crate::agent::{Event, TurnResult};
use crate::render;

/// What the answer shows while nothing was said yet.
const WORKING: &str = ":hourglass_flowing_sand: Working…";

/// Told when the CLI exits in the middle of a turn.
const DIED: &str = ":warning: Claude Code exited unexpectedly. The session restarts from its last checkpoint on your next message.";

/// One turn's answer as it accumulates.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// Complete text blocks, tool lines and tool errors, in order.
    blocks: Vec<String>,
    /// Streamed text not yet confirmed by its complete block.
    partial: String,
    /// The agent's last reported error, in plain words.
    error: Option<String>,
    /// Why the turn was stopped, as its answer's last line.
    stopped: Option<String>,
    /// The model API call the CLI is waiting to retry, as the streamed answer's last line.
    retrying: Option<String>,
    /// Retries of model API calls in this turn.
    retries: u32,
}

/// What an applied event asks the shell to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing to publish.
    None,
    /// Publish [`Transcript::text`] as a streaming update of the answer post (creating it
    /// on the first one). The text may be unchanged (a blank block, a tool call without a
    /// line); publishing anyway keeps the first such event creating the answer post.
    Answer,
    /// The task list changed: the whole text of the task-list post.
    Todo(String),
}

impl Transcript {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in one agent event. Events that do not change what the thread reads (turn
    /// results included: see [`Transcript::final_text`]) give [`Change::None`].
    pub fn apply(&mut self, event: &Event) -> Change {
        match event {
            Event::TextDelta { text } => {
                self.retrying = None;
                self.partial.push_str(text);
                Change::Answer
            }
            Event::Text { text, .. } => {
                self.retrying = None;
                self.partial.clear();
                if !text.trim().is_empty() {
                    self.blocks.push(text.clone());
                }
                Change::Answer
            }
            Event::ToolUse { name, input, .. } => {
                self.retrying = None;
                let line = render::tool_use(name, input);
                if !line.is_empty() {
                    self.partial.clear();
                    self.blocks.push(line);
                }
                Change::Answer
            }
            // Shown with the next publish: a failed tool is followed by more of the turn.
            Event::ToolResult {
                content,
                is_error: true,
                ..
            } => {
                self.blocks.push(render::tool_error(content));
                Change::None
            }
            Event::TodoUpdate { items } => Change::Todo(render::todo_list(items)),
            Event::Retry(retry) => {
                self.retries += 1;
                self.retrying = Some(render::api_retry(
                    retry.error_status,
                    &retry.error,
                    retry.attempt,
                    retry.max_retries,
                    retry.delay_ms,
                ));
                Change::Answer
            }
            // Shown in the tail; the turn's result follows.
            Event::Error(error) => {
                self.retrying = None;
                self.error = Some(render::agent_error(
                    &error.kind,
                    error.api_status,
                    &error.message,
                ));
                Change::None
            }
            _ => Change::None,
        }
    }

    /// The turn was stopped by `by` (a username); the tail says so instead of any error.
    pub fn interrupted(&mut self, by: &str) {
        self.stopped = Some(render::interrupted(by));
    }

    /// The worker stopped the turn itself (`note` says why).
    pub fn stopped(&mut self, note: String) {
        self.stopped = Some(note);
    }

    /// The answer so far, as streamed: with the retry line while the CLI waits to retry.
    pub fn text(&self) -> String {
        self.body(None, self.retrying.as_deref())
    }

    /// The blocks, then `fallback` (taken as a block), then the partial text, then `last`.
    fn body(&self, fallback: Option<&str>, last: Option<&str>) -> String {
        let mut parts: Vec<&str> = self.blocks.iter().map(String::as_str).collect();
        parts.extend(fallback);
        if !self.partial.is_empty() {
            parts.push(&self.partial);
        }
        parts.extend(last);
        if parts.is_empty() {
            WORKING.to_owned()
        } else {
            parts.join("\n\n")
        }
    }

    /// The answer once the turn ended with `result`: what was said (or the result's own
    /// text, if nothing was and nothing went wrong), why it ended if not plainly, and the
    /// footer.
    pub fn final_text(&self, result: &TurnResult) -> String {
        let mut tail = Vec::new();
        let error = if self.stopped.is_some() {
            None
        } else if let Some(error) = &self.error {
            Some(error.clone())
        } else if result.is_error && self.blocks.is_empty() {
            Some(render::agent_error(
                result.terminal_reason.as_deref().unwrap_or("error"),
                result.api_error_status,
                &result.errors.join("; "),
            ))
        } else {
            None
        };
        if let Some(note) = &self.stopped {
            tail.push(note.clone());
        }
        let failed = error.is_some();
        if let Some(error) = error {
            if self.retries > 0 {
                tail.push(format!("{error} {}", render::api_gave_up(self.retries)));
            } else {
                tail.push(error);
            }
        }
        let fallback = match &result.result {
            Some(text) if self.blocks.is_empty() && tail.is_empty() => Some(text.as_str()),
            _ => None,
        };
        let body = self.body(fallback, None);
        if self.retries > 0 && !failed {
            tail.push(render::api_retried(self.retries));
        }
        tail.push(render::footer(result));
        format!("{body}\n\n{}", tail.join("\n\n"))
    }

    /// The answer when the CLI exited mid-turn: what was said, and that the session
    /// restarts from its last checkpoint.
    pub fn died_text(&self) -> String {
        format!("{}\n\n{DIED}", self.text())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::agent::{AgentError, Retry, TodoItem, Usage};

    /// How a turn ends in a test.
    enum End<'a> {
        Result(&'a TurnResult),
        Died,
    }

    /// What the thread is shown, in order, while `events` are applied and the turn ends
    /// with `end`: each streaming update and task-list post, then the final answer.
    fn shown(transcript: &mut Transcript, events: &[Event], end: End<'_>) -> String {
        let mut out = Vec::new();
        for event in events {
            match transcript.apply(event) {
                Change::None => {}
                Change::Answer => {
                    out.push(format!("--- answer (streaming)\n{}", transcript.text()))
                }
                Change::Todo(text) => out.push(format!("--- task list\n{text}")),
            }
        }
        let last = match end {
            End::Result(result) => transcript.final_text(result),
            End::Died => transcript.died_text(),
        };
        out.push(format!("--- answer (final)\n{last}"));
        out.join("\n")
    }

    fn check(events: &[Event], end: End<'_>) -> String {
        shown(&mut Transcript::new(), events, end)
    }

    fn delta(text: &str) -> Event {
        Event::TextDelta { text: text.into() }
    }

    fn text(text: &str) -> Event {
        Event::Text {
            message_id: "msg_1".into(),
            text: text.into(),
        }
    }

    fn tool(name: &str, input: serde_json::Value) -> Event {
        Event::ToolUse {
            id: "toolu_1".into(),
            name: name.into(),
            input,
        }
    }

    fn success(result: Option<&str>) -> TurnResult {
        TurnResult {
            subtype: "success".into(),
            terminal_reason: Some("completed".into()),
            result: result.map(str::to_owned),
            duration_ms: 4_210,
            cost_usd: 0.0215,
            usage: Usage {
                input_tokens: 1_500,
                output_tokens: 420,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 12_000,
            },
            ..Default::default()
        }
    }

    fn failure(reason: &str, status: Option<u16>, errors: &[&str]) -> TurnResult {
        TurnResult {
            subtype: "error_during_execution".into(),
            is_error: true,
            terminal_reason: Some(reason.into()),
            errors: errors.iter().map(|e| (*e).to_owned()).collect(),
            api_error_status: status,
            ..success(None)
        }
    }

    #[test]
    fn streamed_answer_snapshot() {
        insta::assert_snapshot!(check(
            &[
                delta("Let me look"),
                delta(" at the file."),
                text("Let me look at the file."),
                tool("Read", json!({"file_path": "/workspace/src/main.rs"})),
                delta("It prints"),
                tool("Bash", json!({"command": "cargo run"})),
                text("   "),
                delta("Done: it prints `hi`."),
                text("Done: it prints `hi`."),
            ],
            End::Result(&success(Some("Done: it prints `hi`."))),
        ));
    }

    #[test]
    fn tool_error_snapshot() {
        insta::assert_snapshot!(check(
            &[
                tool("Bash", json!({"command": "cat missing.txt"})),
                Event::ToolResult {
                    tool_use_id: "toolu_1".into(),
                    content: "cat: missing.txt: No such file or directory\nexit status 1".into(),
                    is_error: true,
                },
                Event::ToolResult {
                    tool_use_id: "toolu_2".into(),
                    content: "fine".into(),
                    is_error: false,
                },
                text("The file does not exist."),
            ],
            End::Result(&success(None)),
        ));
    }

    #[test]
    fn todo_update_snapshot() {
        let items = vec![
            TodoItem {
                content: "Read the code".into(),
                status: "completed".into(),
                active_form: "Reading the code".into(),
            },
            TodoItem {
                content: "Fix the bug".into(),
                status: "in_progress".into(),
                active_form: "Fixing the bug".into(),
            },
            TodoItem {
                content: "Run the tests".into(),
                status: "pending".into(),
                active_form: String::new(),
            },
        ];
        insta::assert_snapshot!(check(
            &[
                tool("TodoWrite", json!({"todos": []})),
                Event::TodoUpdate { items },
                delta("Working on it"),
                tool("TodoWrite", json!({"todos": []})),
            ],
            End::Result(&success(None)),
        ));
    }

    #[test]
    fn agent_error_snapshot() {
        insta::assert_snapshot!(check(
            &[
                text("Starting."),
                Event::Error(AgentError {
                    kind: "server_error".into(),
                    message: "Overloaded".into(),
                    api_status: Some(529),
                }),
            ],
            End::Result(&failure("api_error", Some(529), &["Overloaded"])),
        ));
    }

    fn overloaded(attempt: u32, max_retries: u32, delay_ms: u64) -> Event {
        Event::Retry(Retry {
            attempt,
            max_retries,
            delay_ms,
            error_status: Some(529),
            error: "overloaded".into(),
        })
    }

    #[test]
    fn retried_then_answered_snapshot() {
        insta::assert_snapshot!(check(
            &[
                overloaded(1, 10, 503),
                overloaded(2, 10, 1_221),
                delta("Hel"),
                text("Hello."),
                tool("Read", json!({"file_path": "/workspace/a.txt"})),
                overloaded(1, 10, 498),
                text("It says hi."),
            ],
            End::Result(&success(None)),
        ));
    }

    #[test]
    fn retries_exhausted_snapshot() {
        insta::assert_snapshot!(check(
            &[
                overloaded(1, 2, 503),
                overloaded(2, 2, 1_221),
                Event::Error(AgentError {
                    kind: "server_error".into(),
                    message: "API Error: 529 fake 529".into(),
                    api_status: Some(529),
                }),
            ],
            End::Result(&failure("api_error", Some(529), &[])),
        ));
    }

    #[test]
    fn retries_without_an_error_event_are_told_with_the_result_error() {
        let mut transcript = Transcript::new();
        assert_eq!(transcript.apply(&overloaded(1, 1, 500)), Change::Answer);
        assert!(transcript.text().starts_with(":hourglass: "));
        let done = transcript.final_text(&failure("api_error", Some(529), &[]));
        assert!(
            done.contains("It was retried once before the turn gave up."),
            "{done}"
        );
        assert!(!done.contains(":hourglass: "), "{done}");
    }

    #[test]
    fn interrupted_snapshot() {
        let mut transcript = Transcript::new();
        let events = [
            delta("I will rewrite"),
            Event::Error(AgentError {
                kind: "unknown".into(),
                message: "aborted".into(),
                api_status: None,
            }),
        ];
        transcript.interrupted("alice");
        insta::assert_snapshot!(shown(
            &mut transcript,
            &events,
            End::Result(&failure("aborted_streaming", None, &[])),
        ));
    }

    #[test]
    fn error_result_without_blocks_snapshot() {
        insta::assert_snapshot!(check(
            &[],
            End::Result(&failure(
                "max_turns",
                None,
                &["Reached the maximum number of turns", "stopped"],
            )),
        ));
    }

    #[test]
    fn error_result_after_blocks_has_no_error_tail() {
        let done = check(
            &[text("Half of it.")],
            End::Result(&failure("max_turns", None, &["Reached the maximum"])),
        );
        assert!(!done.contains(":warning:"), "{done}");
    }

    #[test]
    fn result_text_fallback_snapshot() {
        insta::assert_snapshot!(check(
            &[tool("TodoWrite", json!({"todos": []})), delta("Hel")],
            End::Result(&success(Some("Hello from the result line."))),
        ));
    }

    #[test]
    fn died_notice_snapshot() {
        insta::assert_snapshot!(check(
            &[
                text("Building the project."),
                tool("Bash", json!({"command": "make"})),
                delta("The build"),
            ],
            End::Died,
        ));
    }

    #[test]
    fn other_events_publish_nothing() {
        let mut transcript = Transcript::new();
        for event in [
            Event::Thinking { text: "hmm".into() },
            Event::SessionState {
                state: "running".into(),
            },
            Event::Interrupted {
                during_tool_use: false,
            },
            Event::TurnResult(success(Some("x"))),
        ] {
            assert_eq!(transcript.apply(&event), Change::None, "{event:?}");
        }
        assert_eq!(transcript.text(), WORKING);
    }

    /// A streamed piece (digits) or a complete block (letters and blanks): the alphabets
    /// differ, and neither occurs in [`WORKING`], so containment means what it says.
    fn text_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            "[0-9]{1,6}".prop_map(|t| delta(&t)),
            "[a-z ]{0,8}".prop_map(|t| text(&t)),
        ]
    }

    proptest! {
        #[test]
        fn a_complete_block_replaces_the_partial(
            events in proptest::collection::vec(text_event(), 0..40),
        ) {
            let mut transcript = Transcript::new();
            let (mut blocks, mut partial) = (Vec::<String>::new(), String::new());
            for event in &events {
                let before = partial.clone();
                prop_assert_eq!(transcript.apply(event), Change::Answer);
                let shown = transcript.text();
                match event {
                    Event::TextDelta { text } => partial.push_str(text),
                    Event::Text { text, .. } => {
                        partial.clear();
                        if !text.trim().is_empty() {
                            blocks.push(text.clone());
                        }
                        prop_assert!(
                            before.is_empty() || !shown.contains(&before),
                            "{shown:?} still holds {before:?}"
                        );
                    }
                    _ => unreachable!("only text events are generated"),
                }
                let mut expected = blocks.clone();
                if !partial.is_empty() {
                    expected.push(partial.clone());
                }
                let expected = if expected.is_empty() {
                    WORKING.to_owned()
                } else {
                    expected.join("\n\n")
                };
                prop_assert_eq!(shown, expected);
            }
        }
    }
}
