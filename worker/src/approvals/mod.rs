//! Approvals: what a permission request, question, plan or outsider's message asks the
//! thread, which buttons and reactions answer it, and the decision stored for it.
//!
//! Sans-IO: this module holds the tables, [`state::Approvals`] the decisions; the session
//! actor (`crate::session`) persists rows (`crate::records`), posts and answers the CLI.
//! A decision is stored before it is delivered, so a CLI that asks again after a worker
//! restart gets it from the record ([`Decision::to_answer`]).

pub mod state;

pub use state::{
    Answer, Approvals, Asked, Attempt, BudgetAsked, Buttons, DomainAsked, Effect, Held, Options,
    Outcome, Person, PushAsked, Via, Withdrawal,
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::agent::{PermissionAnswer, PermissionKind, PermissionRequest, Question};
use crate::render::{self, Button};

/// What an approval asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Question,
    Plan,
    /// A message from someone outside the session, held for the owner.
    Guest,
    /// A host the session's egress gateway refused: allow it once, for the session, or not.
    Domain,
    /// A budget was reached and the session's model requests are held: continue with a
    /// top-up, or stop.
    Budget,
    /// A turn changed the files of a repository session: push them (commit, branch,
    /// merge/pull request), or not now.
    Push,
}

impl Kind {
    pub fn of(request: &PermissionRequest) -> Self {
        match request.kind {
            PermissionKind::Tool => Kind::Tool,
            PermissionKind::AskUserQuestion { .. } => Kind::Question,
            PermissionKind::ExitPlanMode { .. } => Kind::Plan,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Question => "question",
            Kind::Plan => "plan",
            Kind::Guest => "guest",
            Kind::Domain => "domain",
            Kind::Budget => "budget",
            Kind::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tool" => Kind::Tool,
            "question" => Kind::Question,
            "plan" => Kind::Plan,
            "guest" => Kind::Guest,
            "domain" => Kind::Domain,
            "budget" => Kind::Budget,
            "push" => Kind::Push,
            _ => return None,
        })
    }
}

/// Identifies a request across CLI processes: a resumed CLI re-asks with a new request id
/// and tool-use id but the same tool and input.
pub fn fingerprint(tool_name: &str, input: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(tool_name.as_bytes());
    hash.update([0]);
    hash.update(input.to_string().as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What someone chose, by button or reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Allow,
    AllowAlways,
    Deny,
    /// Option `n` (0-based) of the current question.
    Option(usize),
    GuestOnce,
    GuestInvite,
    GuestDeny,
    DomainOnce,
    DomainSession,
    DomainDeny,
    BudgetContinue,
    BudgetStop,
    Push,
    PushSkip,
}

impl Choice {
    /// The button with action id `action`, if it belongs to `kind`.
    pub fn from_action(kind: Kind, action: &str) -> Option<Self> {
        Some(match (kind, action) {
            (Kind::Tool, "allow") | (Kind::Plan, "approve") => Choice::Allow,
            (Kind::Tool, "allowalways") => Choice::AllowAlways,
            (Kind::Tool, "deny") | (Kind::Plan, "changes") => Choice::Deny,
            (Kind::Question, opt) => {
                let n: usize = opt.strip_prefix("opt")?.parse().ok()?;
                Choice::Option(n.checked_sub(1)?)
            }
            (Kind::Guest, "guestonce") => Choice::GuestOnce,
            (Kind::Guest, "guestinvite") => Choice::GuestInvite,
            (Kind::Guest, "guestdeny") => Choice::GuestDeny,
            (Kind::Domain, "domainonce") => Choice::DomainOnce,
            (Kind::Domain, "domainsession") => Choice::DomainSession,
            (Kind::Domain, "domaindeny") => Choice::DomainDeny,
            (Kind::Budget, "budgetcontinue") => Choice::BudgetContinue,
            (Kind::Budget, "budgetstop") => Choice::BudgetStop,
            (Kind::Push, "push") => Choice::Push,
            (Kind::Push, "pushskip") => Choice::PushSkip,
            _ => return None,
        })
    }

    /// The reaction `emoji` (Mattermost's name, without colons), if it answers `kind`.
    pub fn from_reaction(kind: Kind, emoji: &str) -> Option<Self> {
        Some(match (kind, emoji) {
            (Kind::Tool | Kind::Plan, "+1" | "thumbsup") => Choice::Allow,
            (Kind::Tool, "white_check_mark") => Choice::AllowAlways,
            (Kind::Tool | Kind::Plan, "-1" | "thumbsdown") => Choice::Deny,
            (Kind::Question, "one") => Choice::Option(0),
            (Kind::Question, "two") => Choice::Option(1),
            (Kind::Question, "three") => Choice::Option(2),
            (Kind::Question, "four") => Choice::Option(3),
            (Kind::Domain, "+1" | "thumbsup") => Choice::DomainOnce,
            (Kind::Domain, "white_check_mark") => Choice::DomainSession,
            (Kind::Domain, "-1" | "thumbsdown") => Choice::DomainDeny,
            (Kind::Budget, "+1" | "thumbsup") => Choice::BudgetContinue,
            (Kind::Budget, "-1" | "thumbsdown") => Choice::BudgetStop,
            (Kind::Push, "+1" | "thumbsup" | "rocket") => Choice::Push,
            (Kind::Push, "-1" | "thumbsdown") => Choice::PushSkip,
            _ => return None,
        })
    }

    /// For the audit.
    pub fn label(self) -> String {
        match self {
            Choice::Allow => "allow".into(),
            Choice::AllowAlways => "allow_always".into(),
            Choice::Deny => "deny".into(),
            Choice::Option(n) => format!("option:{}", n + 1),
            Choice::GuestOnce => "guest_once".into(),
            Choice::GuestInvite => "guest_invite".into(),
            Choice::GuestDeny => "guest_deny".into(),
            Choice::DomainOnce => "domain_once".into(),
            Choice::DomainSession => "domain_session".into(),
            Choice::DomainDeny => "domain_deny".into(),
            Choice::BudgetContinue => "budget_continue".into(),
            Choice::BudgetStop => "budget_stop".into(),
            Choice::Push => "push".into(),
            Choice::PushSkip => "push_skip".into(),
        }
    }
}

/// A stored decision, delivered to the CLI as a [`PermissionAnswer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow,
    AllowAlways,
    Deny { message: String },
    Answers { answers: BTreeMap<String, String> },
}

impl Decision {
    pub fn to_answer(&self) -> PermissionAnswer {
        match self {
            Decision::Allow => PermissionAnswer::Allow {
                updated_input: None,
            },
            Decision::AllowAlways => PermissionAnswer::AllowAlways {
                updated_input: None,
            },
            Decision::Deny { message } => PermissionAnswer::Deny {
                message: message.clone(),
            },
            Decision::Answers { answers } => PermissionAnswer::Answers(answers.clone()),
        }
    }

    /// The row's status once decided.
    pub fn status(&self) -> &'static str {
        match self {
            Decision::Allow => "allowed",
            Decision::AllowAlways => "allowed_always",
            Decision::Deny { .. } => "denied",
            Decision::Answers { .. } => "answered",
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }
}

/// The questions of an AskUserQuestion request (empty for other kinds).
pub fn questions(request: &PermissionRequest) -> &[Question] {
    match &request.kind {
        PermissionKind::AskUserQuestion { questions } => questions,
        _ => &[],
    }
}

/// Questions from a stored tool input (`{"questions": [...]}`).
pub fn questions_from_input(input: &Value) -> Vec<Question> {
    input
        .get("questions")
        .cloned()
        .and_then(|q| serde_json::from_value(q).ok())
        .unwrap_or_default()
}

/// The post of a pending approval: its text and buttons. `step` is the question shown.
pub fn prompt(kind: Kind, tool_name: &str, input: &Value, step: usize) -> (String, Vec<Button>) {
    match kind {
        Kind::Tool => (
            render::with_footer(
                &render::permission_body(tool_name, input),
                render::PERMISSION_HINT,
            ),
            render::permission_buttons(),
        ),
        Kind::Question => {
            let questions = questions_from_input(input);
            match questions.get(step) {
                Some(q) => (
                    render::with_footer(
                        &render::question_body(q, step, questions.len()),
                        render::QUESTION_HINT,
                    ),
                    render::question_buttons(q),
                ),
                None => ("#### :question: Claude asks".into(), Vec::new()),
            }
        }
        Kind::Plan => {
            let plan = input.get("plan").and_then(Value::as_str).unwrap_or("");
            (
                render::with_footer(&render::plan_body(plan), render::PLAN_HINT),
                render::plan_buttons(),
            )
        }
        Kind::Guest => {
            let owner = input.get("owner").and_then(Value::as_str).unwrap_or("");
            let guest = input.get("username").and_then(Value::as_str).unwrap_or("");
            let text = input.get("text").and_then(Value::as_str).unwrap_or("");
            (
                render::guest_body(owner, guest, text),
                render::guest_buttons(),
            )
        }
        Kind::Domain => (
            render::with_footer(&domain_body(input), render::DOMAIN_HINT),
            render::domain_buttons(),
        ),
        Kind::Budget => (
            render::with_footer(&budget_body(input), render::BUDGET_HINT),
            render::budget_buttons(num(input, "top_up")),
        ),
        Kind::Push => (
            render::with_footer(&push_body(input), render::PUSH_HINT),
            render::push_buttons(),
        ),
    }
}

fn push_body(input: &Value) -> String {
    let text = |key: &str| input.get(key).and_then(Value::as_str).unwrap_or("");
    let files: Vec<String> = input
        .get("files")
        .cloned()
        .and_then(|f| serde_json::from_value(f).ok())
        .unwrap_or_default();
    let flag = |key: &str| input.get(key).and_then(Value::as_bool).unwrap_or(false);
    let title = if flag("generated") {
        crate::repo::plan::GENERATED_TITLE.to_owned()
    } else {
        crate::repo::plan::commit_title(text("request"))
    };
    render::push_body(
        text("repo"),
        text("branch"),
        &files,
        &title,
        flag("confirm"),
    )
}

fn num(input: &Value, key: &str) -> f64 {
    input.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn budget_body(input: &Value) -> String {
    render::budget_body(
        input
            .get("what")
            .and_then(Value::as_str)
            .unwrap_or("a budget"),
        num(input, "spent"),
        num(input, "limit"),
    )
}

fn domain_body(input: &Value) -> String {
    let host = input.get("host").and_then(Value::as_str).unwrap_or("");
    let port = input
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(443);
    render::domain_body(host, port)
}

/// The description kept above a verdict.
pub fn body(kind: Kind, tool_name: &str, input: &Value) -> String {
    match kind {
        Kind::Tool => render::permission_body(tool_name, input),
        Kind::Question => {
            let questions = questions_from_input(input);
            let mut text = String::from("#### :question: Claude asked");
            for q in &questions {
                text.push_str(&format!("\n**{}**", q.question));
            }
            text
        }
        Kind::Plan => render::plan_body(input.get("plan").and_then(Value::as_str).unwrap_or("")),
        Kind::Guest => {
            let owner = input.get("owner").and_then(Value::as_str).unwrap_or("");
            let guest = input.get("username").and_then(Value::as_str).unwrap_or("");
            let text = input.get("text").and_then(Value::as_str).unwrap_or("");
            render::guest_body(owner, guest, text)
        }
        Kind::Domain => domain_body(input),
        Kind::Budget => budget_body(input),
        Kind::Push => push_body(input),
    }
}

/// Whether `user_id` may answer approvals of a session started by `owner_id`: the owner
/// or an approver, by user id only.
pub fn may_answer(
    owner_id: &str,
    approvers: &std::collections::BTreeSet<String>,
    user_id: &str,
) -> bool {
    !user_id.is_empty() && (owner_id == user_id || approvers.contains(user_id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::agent::QuestionOption;

    #[test]
    fn buttons_and_reactions_map_to_choices() {
        assert_eq!(
            Choice::from_action(Kind::Tool, "allow"),
            Some(Choice::Allow)
        );
        assert_eq!(Choice::from_action(Kind::Tool, "approve"), None);
        assert_eq!(
            Choice::from_action(Kind::Plan, "changes"),
            Some(Choice::Deny)
        );
        assert_eq!(
            Choice::from_action(Kind::Question, "opt2"),
            Some(Choice::Option(1))
        );
        assert_eq!(Choice::from_action(Kind::Question, "opt0"), None);
        assert_eq!(
            Choice::from_reaction(Kind::Tool, "white_check_mark"),
            Some(Choice::AllowAlways)
        );
        assert_eq!(Choice::from_reaction(Kind::Plan, "white_check_mark"), None);
        assert_eq!(
            Choice::from_reaction(Kind::Question, "three"),
            Some(Choice::Option(2))
        );
    }

    #[test]
    fn decisions_round_trip_through_the_record() {
        for d in [
            Decision::Allow,
            Decision::AllowAlways,
            Decision::Deny {
                message: "no".into(),
            },
            Decision::Answers {
                answers: BTreeMap::from([("q".into(), "Red".into())]),
            },
        ] {
            assert_eq!(Decision::from_json(&d.to_json()), Some(d));
        }
    }

    #[test]
    fn the_same_request_has_the_same_fingerprint() {
        let a = fingerprint("Bash", &json!({"command": "ls", "description": "x"}));
        let b = fingerprint("Bash", &json!({"description": "x", "command": "ls"}));
        assert_eq!(a, b);
        assert_ne!(a, fingerprint("Bash", &json!({"command": "ls -l"})));
    }

    #[test]
    fn owner_and_approvers_may_answer() {
        let approvers = std::collections::BTreeSet::from(["u3".to_owned()]);
        assert!(may_answer("u1", &approvers, "u1"));
        assert!(may_answer("u1", &approvers, "u3"));
        assert!(!may_answer("u1", &approvers, "u2"));
        assert!(!may_answer("", &approvers, ""));
    }

    #[test]
    fn questions_are_read_back_from_the_stored_input() {
        let q = Question {
            question: "Which?".into(),
            header: "H".into(),
            options: vec![QuestionOption {
                label: "Red".into(),
                description: "warm".into(),
            }],
            multi_select: false,
        };
        let input = json!({"questions": [q.clone()]});
        assert_eq!(questions_from_input(&input), vec![q]);
    }
}
