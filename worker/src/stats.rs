//! What the worker's parts count for `/metrics` (see [`crate::metrics`], which registers
//! it): shared atomics, cheap to clone, held in `Ctx`. Names and label sets are a contract
//! with the dashboards and alert rules under `deploy/observability`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Claude Code's own tools, kept as labels; MCP tools are `mcp`, anything else `other`,
/// so the label set stays bounded whatever the model calls.
const KNOWN_TOOLS: &[&str] = &[
    "Agent",
    "AskUserQuestion",
    "Bash",
    "BashOutput",
    "Edit",
    "ExitPlanMode",
    "Glob",
    "Grep",
    "KillShell",
    "LS",
    "MultiEdit",
    "NotebookEdit",
    "NotebookRead",
    "Read",
    "Skill",
    "SlashCommand",
    "Task",
    "TodoWrite",
    "WebFetch",
    "WebSearch",
    "Write",
];

/// The `tool` label of a tool call.
pub fn tool_label(name: &str) -> &'static str {
    if let Some(known) = KNOWN_TOOLS.iter().find(|t| **t == name) {
        return known;
    }
    if name.starts_with("mcp__") {
        "mcp"
    } else {
        "other"
    }
}

/// The `kind` label of an approval wait, from the tool that asked.
pub fn approval_kind(tool: &str) -> &'static str {
    match tool {
        "AskUserQuestion" => "question",
        "ExitPlanMode" => "plan",
        _ => "tool",
    }
}

/// How a turn ended, for `turns_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    Completed,
    Failed,
    Stopped,
}

impl TurnOutcome {
    pub fn label(self) -> &'static str {
        match self {
            TurnOutcome::Completed => "completed",
            TurnOutcome::Failed => "failed",
            TurnOutcome::Stopped => "stopped",
        }
    }

    /// From the CLI's result: stopped when the worker asked it to stop or the CLI says it
    /// was aborted; failed when it reports an error; completed otherwise.
    pub fn of(is_error: bool, terminal_reason: Option<&str>, stop_asked: bool) -> Self {
        if stop_asked || terminal_reason.is_some_and(|r| r.starts_with("aborted")) {
            TurnOutcome::Stopped
        } else if is_error {
            TurnOutcome::Failed
        } else {
            TurnOutcome::Completed
        }
    }
}

/// What a claimed thread's session was before this worker attached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No session yet: the thread's first message.
    New,
    /// Released by its last owner (idle, drained, evicted).
    Resume,
    /// Its owner did not release it: it died or lost its lease.
    Takeover,
}

impl Claim {
    pub fn label(self) -> &'static str {
        match self {
            Claim::New => "new",
            Claim::Resume => "resume",
            Claim::Takeover => "takeover",
        }
    }
}

/// What the worker's parts count. Cloning shares the counters.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Sessions in a turn right now (the rest of the owned ones are idle).
    pub active: Gauge,
    pub claims: Family<Labels, Counter>,
    pub queue_wait: Histogram,
    pub turns: Family<Labels, Counter>,
    pub turn_duration: Histogram,
    pub first_output: Histogram,
    pub tool_calls: Family<Labels, Counter>,
    pub approval_wait: HistogramFamily,
    pub tokens: Family<Labels, Counter>,
    pub cost: Family<Labels, Counter<f64, AtomicU64>>,
    pub errors: Family<Labels, Counter>,
    pub checkpoint_bytes: Histogram,
    pub checkpoint_duration: Histogram,
}

fn seconds_buckets() -> Histogram {
    // 10 ms … ~5.8 min.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            active: Gauge::default(),
            claims: Family::default(),
            queue_wait: seconds_buckets(),
            turns: Family::default(),
            // 100 ms … ~55 min.
            turn_duration: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            first_output: seconds_buckets(),
            tool_calls: Family::default(),
            approval_wait: Family::new_with_constructor(|| {
                // 100 ms … ~55 min: people answer.
                Histogram::new(exponential_buckets(0.1, 2.0, 16))
            }),
            tokens: Family::default(),
            cost: Family::default(),
            errors: Family::default(),
            // 1 KiB … 32 GiB.
            checkpoint_bytes: Histogram::new(exponential_buckets(1024.0, 2.0, 26)),
            checkpoint_duration: seconds_buckets(),
        }
    }
}

/// Handler errors' kinds with their retryability, created at 0 so a rate has data
/// before the first failure.
const ERROR_KINDS: &[(&str, bool)] = &[
    ("undecodable", false),
    ("records", true),
    ("records", false),
    ("replies", true),
    ("replies", false),
    ("runtime", true),
    ("checkpoint", true),
    ("checkpoint_store", true),
    ("checkpoint_file", true),
    ("consumer", true),
    ("posts", true),
    ("not_attached", false),
];

impl Stats {
    /// Creates the bounded label combinations at 0 (`model`: the configured one).
    pub fn with_model(model: &str) -> Self {
        let stats = Self::default();
        for kind in [Claim::New, Claim::Resume, Claim::Takeover] {
            let _ = stats
                .claims
                .get_or_create(&vec![("kind", kind.label().into())]);
        }
        for outcome in [
            TurnOutcome::Completed,
            TurnOutcome::Failed,
            TurnOutcome::Stopped,
        ] {
            let _ = stats.turns.get_or_create(&outcome_labels(outcome));
        }
        for (kind, retryable) in ERROR_KINDS {
            let _ = stats.errors.get_or_create(&error_labels(kind, *retryable));
        }
        for kind in ["tool", "question", "plan"] {
            let _ = stats
                .approval_wait
                .get_or_create(&vec![("kind", kind.into())]);
        }
        if !model.is_empty() {
            stats.model_labels(model);
        }
        stats
    }

    fn model_labels(&self, model: &str) {
        for kind in TOKEN_KINDS {
            let _ = self
                .tokens
                .get_or_create(&vec![("model", model.into()), ("kind", kind.into())]);
        }
        let _ = self.cost.get_or_create(&vec![("model", model.into())]);
    }

    pub fn claimed(&self, kind: Claim) {
        self.claims
            .get_or_create(&vec![("kind", kind.label().into())])
            .inc();
    }

    pub fn turn_ended(&self, outcome: TurnOutcome, took: Duration) {
        self.turns.get_or_create(&outcome_labels(outcome)).inc();
        self.turn_duration.observe(took.as_secs_f64());
    }

    pub fn tool_called(&self, name: &str) {
        self.tool_calls
            .get_or_create(&vec![("tool", tool_label(name).into())])
            .inc();
    }

    pub fn approval_answered(&self, tool: &str, waited: Duration) {
        self.approval_wait
            .get_or_create(&vec![("kind", approval_kind(tool).into())])
            .observe(waited.as_secs_f64());
    }

    /// A turn's usage as the CLI reported it: `tokens` in the order of [`TOKEN_KINDS`].
    pub fn usage(&self, model: &str, tokens: [u64; 4], cost_usd: f64) {
        for (kind, n) in TOKEN_KINDS.iter().zip(tokens) {
            self.tokens
                .get_or_create(&vec![("model", model.into()), ("kind", (*kind).into())])
                .inc_by(n);
        }
        if cost_usd.is_finite() && cost_usd > 0.0 {
            self.cost
                .get_or_create(&vec![("model", model.into())])
                .inc_by(cost_usd);
        }
    }

    pub fn error(&self, kind: &'static str, retryable: bool) {
        self.errors
            .get_or_create(&error_labels(kind, retryable))
            .inc();
    }

    pub fn checkpointed(&self, bytes: u64, took: Duration) {
        self.checkpoint_bytes.observe(bytes as f64);
        self.checkpoint_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "claims",
            "Sessions attached by this worker: new, resumed after a release, or taken over from an owner that did not release",
            self.claims.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Thread queued until a worker claimed it",
            self.queue_wait.clone(),
        );
        registry.register("turns", "Turns ended, by outcome", self.turns.clone());
        registry.register(
            "turn_duration_seconds",
            "Turn started until it ended",
            self.turn_duration.clone(),
        );
        registry.register(
            "turn_first_output_seconds",
            "Turn started until the thread first showed its answer",
            self.first_output.clone(),
        );
        registry.register(
            "tool_calls",
            "Tool calls by the agent, by tool",
            self.tool_calls.clone(),
        );
        registry.register(
            "approval_wait_seconds",
            "Approval asked in the thread until answered",
            self.approval_wait.clone(),
        );
        registry.register(
            "model_tokens",
            "Model tokens reported by turns, by model and kind",
            self.tokens.clone(),
        );
        registry.register(
            "model_cost_dollars",
            "Model cost in US dollars reported by turns, by model",
            self.cost.clone(),
        );
        registry.register(
            "errors",
            "Errors handling a thread's events, by kind and retryability",
            self.errors.clone(),
        );
        registry.register(
            "checkpoint_bytes",
            "Size of stored checkpoints",
            self.checkpoint_bytes.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Checkpoint taken and stored",
            self.checkpoint_duration.clone(),
        );
    }
}

/// Counts a session as active while it lives: held by a turn, dropped when the turn
/// ends however it ends.
#[derive(Debug)]
pub struct Active(Gauge);

impl Active {
    pub fn new(active: &Gauge) -> Self {
        active.inc();
        Self(active.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `model_tokens_total{kind}`, in the order [`Stats::usage`] takes them.
pub const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_write"];

fn outcome_labels(outcome: TurnOutcome) -> Labels {
    vec![("outcome", outcome.label().into())]
}

fn error_labels(kind: &str, retryable: bool) -> Labels {
    vec![("kind", kind.into()), ("retryable", retryable.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use proptest::prelude::*;

    #[test]
    fn tool_labels_are_bounded() {
        assert_eq!(tool_label("Bash"), "Bash");
        assert_eq!(tool_label("mcp__github__create_issue"), "mcp");
        assert_eq!(tool_label("bash"), "other");
    }

    proptest! {
        #[test]
        fn any_tool_name_maps_to_a_known_label(name in ".{0,40}") {
            let label = tool_label(&name);
            prop_assert!(KNOWN_TOOLS.contains(&label) || label == "mcp" || label == "other");
        }
    }

    #[test]
    fn turn_outcomes() {
        assert_eq!(
            TurnOutcome::of(false, Some("completed"), false),
            TurnOutcome::Completed
        );
        assert_eq!(
            TurnOutcome::of(true, Some("api_error"), false),
            TurnOutcome::Failed
        );
        assert_eq!(
            TurnOutcome::of(true, Some("aborted_tools"), false),
            TurnOutcome::Stopped
        );
        assert_eq!(TurnOutcome::of(false, None, true), TurnOutcome::Stopped);
    }

    #[test]
    fn label_sets_exist_at_zero_and_cost_counts_dollars() {
        let stats = Stats::with_model("claude-sonnet-4-5");
        let mut registry = Registry::with_prefix("ccfleet_worker");
        stats.register(&mut registry);
        stats.usage("claude-sonnet-4-5", [10, 20, 3, 4], 0.25);
        stats.error("records", true);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"ccfleet_worker_claims_total{kind="takeover"} 0"#),
            "{out}"
        );
        assert!(
            out.contains(r#"ccfleet_worker_turns_total{outcome="failed"} 0"#),
            "{out}"
        );
        assert!(
            out.contains(r#"ccfleet_worker_errors_total{kind="records",retryable="true"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"ccfleet_worker_model_tokens_total{model="claude-sonnet-4-5",kind="output"} 20"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"ccfleet_worker_model_cost_dollars_total{model="claude-sonnet-4-5"} 0.25"#
            ),
            "{out}"
        );
        assert!(
            out.contains("ccfleet_worker_approval_wait_seconds_bucket{"),
            "{out}"
        );
    }
}
