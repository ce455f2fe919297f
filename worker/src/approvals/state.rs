//! The approvals of one thread, as a sans-IO state machine.
//!
//! The session shell reads approval rows and tells this core what happened: the CLI asked
//! ([`Approvals::asked`]), an outsider wrote ([`Approvals::held`]), someone answered
//! ([`Approvals::answered`]), time passed ([`Approvals::expired`]), requests are no longer
//! needed ([`Approvals::withdrawn`]). The core answers with [`Effect`]s that the shell
//! carries out in order. Two of them need a report before the core goes on:
//! [`Effect::Insert`] → [`Approvals::recorded`] (a request is shown only once its row
//! exists, so every click on a prompt finds what it answers) and
//! [`Effect::Decide`] → [`Approvals::decided`]: the conditional update of the row in
//! PostgreSQL is what makes the first answer win across workers, so the core cannot know
//! the outcome by itself.
//!
//! Invariants: only the session's owner or a configured approver decides, judged by user
//! id (a name can be changed or taken over); a decision reaches
//! the CLI only after it was stored, once; a pending request does not outlive its deadline
//! once [`Approvals::expired`] ran; every input is idempotent (an answer is known by its
//! event id, a request by its request id), so a redelivered input has no further effect,
//! while a decision the shell could not store is asked for again by the same input.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use proto::{ChatEvent, LocalRef, SessionId};
use serde_json::Value;

use super::{Choice, Decision, Kind, body, may_answer, prompt, questions_from_input};
use crate::agent::{PermissionAnswer, PermissionRequest};
use crate::records::ApprovalRow;
use crate::render::{self, Button, Status, Verdict};

/// How long a held message of an outsider stays answerable: it blocks no turn, so it has
/// no timeout of its own, but the row needs a date.
const HELD_FOR_MS: i64 = 30 * 24 * 3600 * 1000;

/// How many answered events and asked requests are remembered to recognise a redelivery.
/// Older redeliveries are caught by the shell's inbound record.
const REMEMBERED: usize = 1024;

/// Who decides the timeouts, in the row and the audit.
const TIMEOUT_USER: &str = "ccfleet";

#[derive(Debug, Clone)]
pub struct Options {
    /// Who may answer besides the session's owner: Mattermost user ids (what
    /// `worker.approvers` is pinned to, `crate::directory`), never names.
    pub approvers: BTreeSet<String>,
    /// How long a request of the CLI waits for an answer.
    pub timeout_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: String,
    pub name: String,
}

/// The running CLI asks the thread.
#[derive(Debug, Clone)]
pub struct Asked {
    pub request: PermissionRequest,
    /// The approval an earlier CLI process asked for the same thing in the same turn (a
    /// resumed session asks again), if the shell found one.
    pub stored: Option<ApprovalRow>,
    /// The id a new approval gets.
    pub approval: String,
    /// The live session's id; without one nothing new is asked.
    pub session_id: Option<String>,
    /// The prompt whose turn asks.
    pub event_id: String,
    /// The CLI process asking.
    pub incarnation: String,
    pub now_ms: i64,
}

/// A message of someone outside the session, held for the owner.
#[derive(Debug, Clone)]
pub struct Held {
    pub approval: String,
    pub session_id: String,
    pub owner_name: String,
    pub event: ChatEvent,
    pub text: String,
    pub now_ms: i64,
}

/// The session's egress gateway refused a host: ask the thread whether to allow it.
#[derive(Debug, Clone)]
pub struct DomainAsked {
    /// The id a new approval gets.
    pub approval: String,
    pub session_id: String,
    /// Lower case, no trailing dot.
    pub host: String,
    pub port: u16,
    /// The prompt whose turn made the request, if a turn runs.
    pub event_id: String,
    pub now_ms: i64,
}

/// A budget is used up and the session's model requests are held: ask the thread.
#[derive(Debug, Clone)]
pub struct BudgetAsked {
    pub approval: String,
    pub session_id: String,
    /// `session`, `user_day` or `channel_day`.
    pub budget: String,
    /// For people: "this session's budget", ….
    pub what: String,
    pub spent: f64,
    pub limit: f64,
    /// What "continue" allows from now on: the budget is raised to what was spent plus
    /// this (so a budget overshot by requests in flight still gets the whole amount).
    pub top_up: f64,
    /// The prompt whose turn is held.
    pub event_id: String,
    pub now_ms: i64,
}

/// A turn changed a repository session's files: offer to push them.
#[derive(Debug, Clone)]
pub struct PushAsked {
    pub approval: String,
    pub session_id: String,
    /// The repository's name and the session's branch.
    pub repo: String,
    pub branch: String,
    /// What changed (shown; the push takes whatever changed by then).
    pub files: Vec<String>,
    /// The request the commit message is made from.
    pub request: String,
    /// Files held back as possible secrets are pushed too (the thread confirms that).
    pub confirm: bool,
    /// A session without a repository: `files` are copied onto the session's branch of
    /// the repository that takes generated files.
    pub generated: bool,
    /// The prompt whose turn changed the files.
    pub event_id: String,
    pub now_ms: i64,
}

/// How someone answered: the button's action id, or the reaction's emoji.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Button(String),
    Reaction(String),
}

/// Someone answered an approval.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The chat event that carried it: a redelivery has the same.
    pub event_id: String,
    pub user: Person,
    pub via: Via,
    /// The question the button was for (a reaction counts for the question shown).
    pub step: Option<usize>,
    /// The approval as stored when the shell read it.
    pub row: ApprovalRow,
    /// The session's owner.
    pub owner: Person,
}

/// Why requests are no longer needed.
#[derive(Debug, Clone)]
pub enum Withdrawal {
    /// The CLI cancelled this request.
    Cancelled { request_id: String },
    /// The turn ended (or the agent died): every pending request goes, and so do the
    /// turn's `open` rows that a resumed CLI never asked again.
    TurnEnded {
        event_id: Option<String>,
        open: Vec<ApprovalRow>,
    },
    /// Someone stopped the turn: pending requests are denied so the CLI stops waiting.
    Interrupted { by: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Not allowed to answer.
    Refused,
    /// Already decided, or answering a question no longer shown.
    Late,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused => "refused",
            Outcome::Late => "late",
        }
    }
}

/// One attempt to answer, for the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub approval: String,
    pub user_id: String,
    pub username: String,
    pub action: String,
    /// `button`, `reaction` or `timeout`.
    pub via: &'static str,
    pub outcome: Outcome,
}

/// The buttons of a prompt post, answering `approval` at question `step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buttons {
    pub approval: String,
    pub step: usize,
    pub buttons: Vec<Button>,
}

/// What the shell does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Show the session's status in its header. `Working` means nothing waits for the
    /// thread any more: the shell shows it only while a turn runs.
    Status(Status),
    /// Create the prompt post. It must get the reference reserved by the [`Effect::Insert`]
    /// just before it (nothing is posted in between); if it cannot be posted, report
    /// [`Approvals::unposted`].
    Post {
        text: String,
        buttons: Buttons,
    },
    /// Replace a prompt post's text; without buttons when `buttons` is `None`.
    Update {
        post: LocalRef,
        text: String,
        buttons: Option<Buttons>,
    },
    /// Store a new approval whose `post_ref` is the reference the next post will get, then
    /// report [`Approvals::recorded`].
    Insert(ApprovalRow),
    /// Point a stored approval at the CLI's new request.
    Rebind {
        approval: String,
        request_id: String,
        incarnation: String,
    },
    /// Store the answers so far of a multi-question request.
    Progress {
        approval: String,
        answers: String,
    },
    /// Decide the approval if it is still pending, then report [`Approvals::decided`].
    Decide {
        approval: String,
        status: &'static str,
        answer: String,
        user_id: String,
        username: String,
        via: &'static str,
    },
    /// Close an approval nobody needs any more.
    Close {
        approval: String,
        status: &'static str,
    },
    Audit(Attempt),
    /// Answer the CLI's request and record the delivery.
    Deliver {
        approval: String,
        request_id: String,
        answer: PermissionAnswer,
    },
    /// Record that a held message was dealt with.
    MarkDelivered {
        approval: String,
    },
    /// Tell one user something only they see.
    Tell {
        user_id: String,
        text: String,
    },
    /// Hand an outsider's held message back to the thread as an admitted event (durable:
    /// it is run as a prompt even if this worker dies first), then record it delivered.
    Admit {
        approval: String,
        event: ChatEvent,
    },
    /// Make the outsider a participant.
    Invite {
        user_id: String,
        username: String,
    },
    /// Let the session reach `host`: for its next request, or for the rest of the session.
    /// A grant for one request is recorded delivered (`approval`) once the session's
    /// egress gateway has it; one that found no live session is given when it starts
    /// ([`Approvals::restore_domains`]).
    Grant {
        approval: String,
        host: String,
        session_wide: bool,
    },
    /// Push the session's changes (commit as `username`, push the branch, open or update
    /// its review), tell the thread how it went, then record the approval delivered.
    Push {
        approval: String,
        user_id: String,
        username: String,
        request: String,
        confirm: bool,
        /// Copy `files` onto the branch of the repository that takes generated files (a
        /// session without a repository).
        generated: bool,
        files: Vec<String>,
    },
    /// Let the session's held model requests go on after recording a top-up of `top_up`
    /// to `budget` (`go_on`), or refuse them so the turn ends (`by` stopped it).
    Release {
        budget: String,
        top_up: f64,
        go_on: bool,
        by: String,
    },
}

/// A request of the running CLI waiting for the thread, bound to its approval.
#[derive(Debug, Clone)]
struct Pending {
    kind: Kind,
    request: PermissionRequest,
    post: LocalRef,
    expires_at_ms: i64,
    /// The question shown (AskUserQuestion asks one at a time) and the answers so far.
    step: usize,
    answers: BTreeMap<String, String>,
}

/// An approval being stored, with the prompt that shows it once it is.
#[derive(Debug, Clone)]
struct Posting {
    row: ApprovalRow,
    /// `None` for a held message.
    request: Option<PermissionRequest>,
    text: String,
    buttons: Buttons,
}

/// A decision the shell is storing.
#[derive(Debug, Clone)]
struct Deciding {
    /// The answer's event; `None` for a timeout.
    event_id: Option<String>,
    /// Asked again when the same input comes back before the report.
    decide: Effect,
    attempt: Attempt,
    then: Then,
}

/// What follows a stored decision.
#[derive(Debug, Clone)]
enum Then {
    /// Someone answered a CLI's request: deliver it if the running CLI asked it (else a
    /// resumed CLI gets it when it asks again) and show the verdict.
    Answer {
        decision: Decision,
        text: String,
        post: LocalRef,
    },
    /// Nobody answered in time: the CLI is denied either way, so it stops waiting; then
    /// the next request due at `now_ms`.
    Timeout {
        decision: Decision,
        text: String,
        now_ms: i64,
    },
    /// The owner let an outsider's message in, invited them, or refused it.
    Guest {
        choice: Choice,
        input: Value,
        text: String,
        post: LocalRef,
    },
    /// A held session was continued or stopped.
    Budget {
        choice: Choice,
        budget: String,
        top_up: f64,
        by: String,
        text: String,
        post: LocalRef,
    },
    /// A host was allowed (once or for the session) or denied.
    Domain {
        choice: Choice,
        host: String,
        text: String,
        post: LocalRef,
    },
    /// Someone said push, or not now.
    Push {
        choice: Choice,
        input: Value,
        by: Person,
        text: String,
        post: LocalRef,
    },
}

/// An approval the thread is asked that no CLI request waits for.
struct Unasked {
    approval: String,
    kind: Kind,
    session_id: String,
    event_id: String,
    /// What the row names in `tool_name`: the host, the budget; empty for a guest.
    subject: String,
    input: Value,
    now_ms: i64,
}

/// A bounded memory of ids, oldest forgotten first.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Recent {
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn remove(&mut self, id: &str) {
        if self.set.remove(id) {
            self.order.retain(|o| o != id);
        }
    }

    fn insert(&mut self, id: &str) {
        if !self.set.insert(id.to_owned()) {
            return;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
    }
}

/// The approvals of one thread: what waits for an answer, and what an answer does.
#[derive(Debug)]
pub struct Approvals {
    thread: String,
    options: Options,
    /// By approval id.
    pending: BTreeMap<String, Pending>,
    posting: BTreeMap<String, Posting>,
    deciding: BTreeMap<String, Deciding>,
    events: Recent,
    requests: Recent,
    /// Hosts the egress gateway refused, by what the thread said of them. A host asked
    /// about (pending), denied or allowed for the session is not asked about again.
    domains: BTreeMap<String, DomainState>,
    /// The budget prompt waiting for an answer, if any: one at a time.
    budget: Option<String>,
    /// The push offer waiting for an answer, if any: one at a time (it pushes whatever
    /// changed by the time it is answered).
    push: Option<String>,
}

/// What the thread said of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DomainState {
    /// Asked (the approval's id); no answer yet.
    Asked(String),
    Denied,
    Allowed,
}

/// Whether a decided `domain` row allowed its host for the whole session.
fn domain_scope(row: &ApprovalRow) -> Option<bool> {
    let answer: Value = serde_json::from_str(row.answer.as_deref()?).ok()?;
    Some(answer.get("scope")?.as_str()? == "session")
}

/// The post a row's prompt is on.
pub fn post_of(row: &ApprovalRow) -> LocalRef {
    LocalRef {
        session: SessionId::new(row.session_id.clone()),
        seq: u32::try_from(row.post_ref).unwrap_or(0),
    }
}

/// The question a row's prompt shows: one past the questions answered so far.
pub fn step_of(row: &ApprovalRow) -> usize {
    progress(row).len()
}

/// The answers so far stored with a row.
fn progress(row: &ApprovalRow) -> BTreeMap<String, String> {
    row.progress
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default()
}

/// Stores `status` and `answer` (JSON) for `row`, decided by `user` via a button or a
/// reaction.
fn decide(
    row: &ApprovalRow,
    user: &Person,
    via: &'static str,
    status: &'static str,
    answer: String,
) -> Effect {
    Effect::Decide {
        approval: row.approval_id.clone(),
        status,
        answer,
        user_id: user.id.clone(),
        username: user.name.clone(),
        via,
    }
}

/// A prompt no CLI request waits for, with its verdict under it.
fn verdict_under(kind: Kind, input: &Value, verdict: &Verdict<'_>) -> String {
    render::with_footer(&body(kind, "", input), &render::verdict(verdict))
}

fn input_of(row: &ApprovalRow) -> Value {
    serde_json::from_str(&row.input).unwrap_or(Value::Null)
}

fn str_field(input: &Value, key: &str) -> String {
    input
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

impl Approvals {
    pub fn new(thread: impl Into<String>, options: Options) -> Self {
        Self {
            thread: thread.into(),
            options,
            pending: BTreeMap::new(),
            posting: BTreeMap::new(),
            deciding: BTreeMap::new(),
            events: Recent::default(),
            requests: Recent::default(),
            domains: BTreeMap::new(),
            budget: None,
            push: None,
        }
    }

    /// Who the configured approvers are now (their pins may change while the session
    /// lives); the shell sets it before each answer.
    pub fn set_approvers(&mut self, approvers: BTreeSet<String>) {
        self.options.approvers = approvers;
    }

    fn timeout_minutes(&self) -> u64 {
        (self.options.timeout_s / 60).max(1)
    }

    /// Whether a request of the running CLI waits for an answer.
    pub fn is_waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The prompts of the pending requests: approval id, post, and the question shown.
    pub fn prompts(&self) -> impl Iterator<Item = (&str, &LocalRef, usize)> {
        self.pending
            .iter()
            .map(|(id, p)| (id.as_str(), &p.post, p.step))
    }

    /// When the earliest pending request times out (milliseconds since the epoch).
    pub fn next_deadline(&self) -> Option<i64> {
        self.pending.values().map(|p| p.expires_at_ms).min()
    }

    /// The CLI asks: post the request, or re-bind the stored approval of an earlier CLI
    /// (and deliver its decision if it was answered meanwhile).
    pub fn asked(&mut self, asked: Asked) -> Vec<Effect> {
        let request_id = asked.request.request_id.clone();
        if self.requests.contains(&request_id) {
            return Vec::new();
        }
        self.requests.insert(&request_id);
        let kind = Kind::of(&asked.request);
        if let Some(row) = asked.stored {
            return self.rebind(row, asked.request, asked.incarnation);
        }
        let Some(session_id) = asked.session_id else {
            return Vec::new();
        };
        let request = asked.request;
        let (text, buttons) = prompt(kind, &request.tool_name, &request.input, 0);
        let timeout_ms =
            i64::try_from(self.options.timeout_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let row = ApprovalRow {
            approval_id: asked.approval.clone(),
            thread_id: self.thread.clone(),
            session_id,
            event_id: asked.event_id,
            request_id: request_id.clone(),
            incarnation: asked.incarnation,
            kind: kind.as_str().into(),
            tool_name: request.tool_name.clone(),
            input: request.input.to_string(),
            fingerprint: super::fingerprint(&request.tool_name, &request.input),
            post_ref: 0,
            status: "pending".into(),
            progress: None,
            answer: None,
            decided_by_name: None,
            delivered: false,
            expires_at_ms: asked.now_ms.saturating_add(timeout_ms),
        };
        self.posting.insert(
            asked.approval.clone(),
            Posting {
                row: row.clone(),
                request: Some(request),
                text,
                buttons: Buttons {
                    approval: asked.approval,
                    step: 0,
                    buttons,
                },
            },
        );
        vec![
            Effect::Status(Status::WaitingForApproval),
            Effect::Insert(row),
        ]
    }

    fn rebind(
        &mut self,
        row: ApprovalRow,
        request: PermissionRequest,
        incarnation: String,
    ) -> Vec<Effect> {
        let approval = row.approval_id.clone();
        let mut effects = vec![Effect::Rebind {
            approval: approval.clone(),
            request_id: request.request_id.clone(),
            incarnation,
        }];
        if row.status != "pending" {
            // Answered while no CLI was waiting: deliver the stored decision now.
            if let Some(decision) = row.answer.as_deref().and_then(Decision::from_json) {
                effects.push(Effect::Deliver {
                    approval,
                    request_id: request.request_id,
                    answer: decision.to_answer(),
                });
            }
            return effects;
        }
        let kind = Kind::of(&request);
        let answers = progress(&row);
        let step = answers.len();
        let (text, buttons) = prompt(kind, &request.tool_name, &request.input, step);
        let post = post_of(&row);
        effects.push(Effect::Status(Status::WaitingForApproval));
        effects.push(Effect::Update {
            post: post.clone(),
            text: render::with_footer(&text, &render::reasked_note()),
            buttons: Some(Buttons {
                approval: approval.clone(),
                step,
                buttons,
            }),
        });
        self.pending.insert(
            approval,
            Pending {
                kind,
                request,
                post,
                expires_at_ms: row.expires_at_ms,
                step,
                answers,
            },
        );
        effects
    }

    /// A message from someone outside the session: ask the owner before running it.
    pub fn held(&mut self, held: Held) -> Vec<Effect> {
        if self.events.contains(&held.event.event_id) {
            return Vec::new();
        }
        self.events.insert(&held.event.event_id);
        let input = serde_json::json!({
            "owner": held.owner_name,
            "username": held.event.user.username,
            "user_id": held.event.user.id.as_str(),
            "text": held.text,
            "event": held.event,
        });
        self.ask_thread(Unasked {
            approval: held.approval,
            kind: Kind::Guest,
            session_id: held.session_id,
            event_id: held.event.event_id.clone(),
            subject: String::new(),
            input,
            now_ms: held.now_ms,
        })
    }

    /// The session's egress gateway refused `host`: ask the thread, unless it was asked
    /// already (and not answered "once"), denied, or allowed for the session.
    pub fn domain(&mut self, asked: DomainAsked) -> Vec<Effect> {
        if self.domains.contains_key(&asked.host) {
            return Vec::new();
        }
        self.domains.insert(
            asked.host.clone(),
            DomainState::Asked(asked.approval.clone()),
        );
        let input = serde_json::json!({"host": asked.host, "port": asked.port});
        self.ask_thread(Unasked {
            approval: asked.approval,
            kind: Kind::Domain,
            session_id: asked.session_id,
            event_id: asked.event_id,
            subject: asked.host,
            input,
            now_ms: asked.now_ms,
        })
    }

    /// A budget is used up: ask whether to continue, unless a budget prompt waits already.
    pub fn budget(&mut self, asked: BudgetAsked) -> Vec<Effect> {
        if self.budget.is_some() {
            return Vec::new();
        }
        self.budget = Some(asked.approval.clone());
        let input = serde_json::json!({
            "budget": asked.budget,
            "what": asked.what,
            "spent": asked.spent,
            "limit": asked.limit,
            "top_up": asked.top_up,
            // What is recorded on "continue": up to what was spent, then the top-up.
            "amount": (asked.spent - asked.limit).max(0.0) + asked.top_up,
        });
        let mut effects = vec![Effect::Status(Status::WaitingForApproval)];
        effects.extend(self.ask_thread(Unasked {
            approval: asked.approval,
            kind: Kind::Budget,
            session_id: asked.session_id,
            event_id: asked.event_id,
            subject: asked.budget,
            input,
            now_ms: asked.now_ms,
        }));
        effects
    }

    /// A turn changed a repository session's files: offer to push them, unless an offer
    /// waits already (answered, it pushes whatever changed by then).
    pub fn push(&mut self, asked: PushAsked) -> Vec<Effect> {
        if self.push.is_some() {
            return Vec::new();
        }
        self.push = Some(asked.approval.clone());
        let input = serde_json::json!({
            "repo": asked.repo,
            "branch": asked.branch,
            "files": asked.files,
            "request": asked.request,
            "confirm": asked.confirm,
            "generated": asked.generated,
        });
        self.ask_thread(Unasked {
            approval: asked.approval,
            kind: Kind::Push,
            session_id: asked.session_id,
            event_id: asked.event_id,
            subject: asked.repo,
            input,
            now_ms: asked.now_ms,
        })
    }

    /// Stores an approval no CLI request waits for (a held message, a host, a budget),
    /// then posts its prompt (see [`Approvals::recorded`]). It stays answerable for
    /// [`HELD_FOR_MS`]: it blocks no request of the CLI, so it has no timeout of its own.
    fn ask_thread(&mut self, asked: Unasked) -> Vec<Effect> {
        let (text, buttons) = prompt(asked.kind, &asked.subject, &asked.input, 0);
        let row = ApprovalRow {
            approval_id: asked.approval.clone(),
            thread_id: self.thread.clone(),
            session_id: asked.session_id,
            event_id: asked.event_id,
            request_id: String::new(),
            incarnation: String::new(),
            kind: asked.kind.as_str().into(),
            tool_name: asked.subject,
            input: asked.input.to_string(),
            fingerprint: String::new(),
            post_ref: 0,
            status: "pending".into(),
            progress: None,
            answer: None,
            decided_by_name: None,
            delivered: false,
            expires_at_ms: asked.now_ms.saturating_add(HELD_FOR_MS),
        };
        self.posting.insert(
            asked.approval.clone(),
            Posting {
                row: row.clone(),
                request: None,
                text,
                buttons: Buttons {
                    approval: asked.approval,
                    step: 0,
                    buttons,
                },
            },
        );
        vec![Effect::Insert(row)]
    }

    /// The session's earlier answers about hosts (its `domain` approvals, from the
    /// record): what was allowed for the session is granted again, what was denied or is
    /// still asked is not asked again, and an "allow once" that no session got yet (it was
    /// answered while none was live) is given now. For a session made live, on any worker.
    pub fn restore_domains(&mut self, rows: &[ApprovalRow]) -> Vec<Effect> {
        let mut effects = Vec::new();
        for row in rows.iter().filter(|r| r.kind == Kind::Domain.as_str()) {
            let host = row.tool_name.clone();
            let state = match row.status.as_str() {
                "pending" => DomainState::Asked(row.approval_id.clone()),
                "denied" => DomainState::Denied,
                "allowed" if domain_scope(row) == Some(true) => {
                    effects.push(Effect::Grant {
                        approval: row.approval_id.clone(),
                        host: host.clone(),
                        session_wide: true,
                    });
                    DomainState::Allowed
                }
                "allowed" if domain_scope(row) == Some(false) && !row.delivered => {
                    effects.push(Effect::Grant {
                        approval: row.approval_id.clone(),
                        host,
                        session_wide: false,
                    });
                    continue;
                }
                _ => continue,
            };
            self.domains.insert(host, state);
        }
        effects
    }

    /// The approval was stored with its prompt's reference `post` (then the prompt is
    /// posted), or could not be (`None`). A CLI's request nobody can answer is denied, so
    /// the CLI stops waiting and the turn shows why; a held message is forgotten, so that
    /// the shell's retry of its event holds it again.
    pub fn recorded(&mut self, approval: &str, post: Option<LocalRef>) -> Vec<Effect> {
        let Some(Posting {
            row,
            request,
            text,
            buttons,
        }) = self.posting.remove(approval)
        else {
            return Vec::new();
        };
        let Some(post) = post else {
            return match request {
                Some(request) => self.unanswerable(approval, request, None),
                None if row.kind == Kind::Domain.as_str() => {
                    // Asked again at the next refusal.
                    self.domains.remove(&row.tool_name);
                    Vec::new()
                }
                None if row.kind == Kind::Push.as_str() => {
                    // Offered again after the next turn that changes files.
                    self.push = None;
                    Vec::new()
                }
                None if row.kind == Kind::Budget.as_str() => {
                    // Nobody can answer: the held requests are refused, so the turn ends
                    // visibly rather than waiting for nothing.
                    self.budget = None;
                    vec![Effect::Release {
                        budget: row.tool_name,
                        top_up: 0.0,
                        go_on: false,
                        by: TIMEOUT_USER.into(),
                    }]
                }
                None => {
                    self.events.remove(&row.event_id);
                    Vec::new()
                }
            };
        };
        if let Some(request) = request {
            self.pending.insert(
                approval.to_owned(),
                Pending {
                    kind: Kind::of(&request),
                    request,
                    post,
                    expires_at_ms: row.expires_at_ms,
                    step: 0,
                    answers: BTreeMap::new(),
                },
            );
        }
        vec![Effect::Post { text, buttons }]
    }

    /// The prompt of a stored approval could not be posted: nobody can answer it. It is
    /// closed; a CLI's request is denied.
    pub fn unposted(&mut self, approval: &str) -> Vec<Effect> {
        match self.pending.remove(approval) {
            Some(pending) => {
                let close = Effect::Close {
                    approval: approval.to_owned(),
                    status: "failed",
                };
                self.unanswerable(approval, pending.request, Some(close))
            }
            None => {
                self.domains
                    .retain(|_, d| *d != DomainState::Asked(approval.to_owned()));
                if self.budget.as_deref() == Some(approval) {
                    self.budget = None;
                }
                if self.push.as_deref() == Some(approval) {
                    self.push = None;
                }
                vec![Effect::Close {
                    approval: approval.to_owned(),
                    status: "failed",
                }]
            }
        }
    }

    fn unanswerable(
        &mut self,
        approval: &str,
        request: PermissionRequest,
        close: Option<Effect>,
    ) -> Vec<Effect> {
        let mut effects: Vec<Effect> = close.into_iter().collect();
        effects.push(Effect::Deliver {
            approval: approval.to_owned(),
            request_id: request.request_id,
            answer: crate::agent::PermissionAnswer::Deny {
                message: render::request_not_shown(),
            },
        });
        if self.pending.is_empty() {
            effects.push(Effect::Status(Status::Working));
        }
        effects
    }

    /// Someone answered by button or reaction.
    pub fn answered(&mut self, answer: Answer) -> Vec<Effect> {
        if self.events.contains(&answer.event_id) {
            return Vec::new();
        }
        if let Some(deciding) = self.deciding.get(&answer.row.approval_id)
            && deciding.event_id.as_deref() == Some(answer.event_id.as_str())
        {
            // The shell could not store the decision and handles the answer again.
            return vec![deciding.decide.clone()];
        }
        let effects = self.answer(&answer);
        if !matches!(effects.last(), Some(Effect::Decide { .. })) {
            self.events.insert(&answer.event_id);
        }
        effects
    }

    fn answer(&mut self, answer: &Answer) -> Vec<Effect> {
        let row = &answer.row;
        let Some(kind) = Kind::parse(&row.kind) else {
            return Vec::new();
        };
        let (via, choice) = match &answer.via {
            Via::Button(action) => ("button", Choice::from_action(kind, action)),
            Via::Reaction(emoji) => ("reaction", Choice::from_reaction(kind, emoji)),
        };
        // Reactions that mean nothing here are just reactions.
        let Some(choice) = choice else {
            return Vec::new();
        };
        let user = &answer.user;
        let attempt = |outcome| Attempt {
            approval: row.approval_id.clone(),
            user_id: user.id.clone(),
            username: user.name.clone(),
            action: choice.label(),
            via,
            outcome,
        };
        if !may_answer(&answer.owner.id, &self.options.approvers, &user.id) {
            return vec![
                Effect::Audit(attempt(Outcome::Refused)),
                Effect::Tell {
                    user_id: user.id.clone(),
                    text: render::not_an_approver(&answer.owner.name),
                },
            ];
        }
        let bound = self.pending.get(&row.approval_id);
        let current_step = bound.map_or_else(|| step_of(row), |p| p.step);
        if row.status != "pending" || answer.step.is_some_and(|s| s != current_step) {
            let mut effects = vec![Effect::Audit(attempt(Outcome::Late))];
            if via == "button" {
                effects.push(Effect::Tell {
                    user_id: user.id.clone(),
                    text: render::already_answered(row.decided_by_name.as_deref()),
                });
            }
            return effects;
        }
        let input = input_of(row);
        let post = post_of(row);
        let by = user.name.as_str();
        if kind == Kind::Budget {
            let input = input_of(row);
            let top_up = input.get("top_up").and_then(Value::as_f64).unwrap_or(0.0);
            let amount = input
                .get("amount")
                .and_then(Value::as_f64)
                .unwrap_or(top_up);
            let shown = render::dollars(top_up);
            let (status, verdict) = match choice {
                Choice::BudgetContinue => {
                    ("allowed", Verdict::BudgetContinued { by, top_up: &shown })
                }
                Choice::BudgetStop => ("denied", Verdict::BudgetStopped { by }),
                _ => return Vec::new(),
            };
            let text = verdict_under(Kind::Budget, &input, &verdict);
            let decide = decide(row, user, via, status, serde_json::json!({ "top_up": if choice == Choice::BudgetContinue { amount } else { 0.0 } }).to_string());
            return self.deciding(
                Some(&answer.event_id),
                decide,
                attempt(Outcome::Accepted),
                Then::Budget {
                    choice,
                    budget: row.tool_name.clone(),
                    top_up: amount,
                    by: user.name.clone(),
                    text,
                    post,
                },
            );
        }
        if kind == Kind::Push {
            let (status, verdict) = match choice {
                Choice::Push => ("allowed", Verdict::Pushing { by }),
                Choice::PushSkip => ("denied", Verdict::PushDeclined { by }),
                _ => return Vec::new(),
            };
            let text = verdict_under(Kind::Push, &input, &verdict);
            let decide = decide(
                row,
                user,
                via,
                status,
                serde_json::json!({ "push": choice == Choice::Push }).to_string(),
            );
            return self.deciding(
                Some(&answer.event_id),
                decide,
                attempt(Outcome::Accepted),
                Then::Push {
                    choice,
                    input,
                    by: user.clone(),
                    text,
                    post,
                },
            );
        }
        if kind == Kind::Domain {
            let (status, scope, verdict) = match choice {
                Choice::DomainOnce => ("allowed", "once", Verdict::DomainOnce { by }),
                Choice::DomainSession => ("allowed", "session", Verdict::DomainSession { by }),
                Choice::DomainDeny => ("denied", "deny", Verdict::DomainDenied { by }),
                _ => return Vec::new(),
            };
            let text = verdict_under(Kind::Domain, &input, &verdict);
            let decide = decide(
                row,
                user,
                via,
                status,
                serde_json::json!({ "scope": scope }).to_string(),
            );
            return self.deciding(
                Some(&answer.event_id),
                decide,
                attempt(Outcome::Accepted),
                Then::Domain {
                    choice,
                    host: row.tool_name.clone(),
                    text,
                    post,
                },
            );
        }
        let (decision, verdict) = match (kind, choice) {
            (Kind::Guest, _) => {
                let guest = str_field(&input, "username");
                let (status, verdict) = match choice {
                    Choice::GuestOnce => ("allowed", Verdict::GuestAllowed { by }),
                    Choice::GuestInvite => ("allowed", Verdict::GuestInvited { by, guest: &guest }),
                    Choice::GuestDeny => ("denied", Verdict::GuestDenied { by }),
                    _ => return Vec::new(),
                };
                let text = verdict_under(Kind::Guest, &input, &verdict);
                let decide = decide(row, user, via, status, "{}".into());
                return self.deciding(
                    Some(&answer.event_id),
                    decide,
                    attempt(Outcome::Accepted),
                    Then::Guest {
                        choice,
                        input,
                        text,
                        post,
                    },
                );
            }
            (Kind::Question, Choice::Option(n)) => {
                let questions = questions_from_input(&input);
                let Some(question) = questions.get(current_step) else {
                    return Vec::new();
                };
                let Some(option) = question.options.get(n) else {
                    return Vec::new();
                };
                let mut answers = bound.map_or_else(|| progress(row), |p| p.answers.clone());
                answers.insert(question.question.clone(), option.label.clone());
                if current_step + 1 < questions.len() {
                    // One question at a time: show the next one on the same post.
                    let next = current_step + 1;
                    let (text, buttons) = prompt(kind, &row.tool_name, &input, next);
                    let effects = vec![
                        Effect::Progress {
                            approval: row.approval_id.clone(),
                            answers: serde_json::to_string(&answers).unwrap_or_default(),
                        },
                        Effect::Audit(attempt(Outcome::Accepted)),
                        Effect::Update {
                            post,
                            text,
                            buttons: Some(Buttons {
                                approval: row.approval_id.clone(),
                                step: next,
                                buttons,
                            }),
                        },
                    ];
                    if let Some(p) = self.pending.get_mut(&row.approval_id) {
                        p.step = next;
                        p.answers = answers;
                    }
                    return effects;
                }
                let chosen: Vec<String> = answers.values().cloned().collect();
                let verdict = render::verdict(&Verdict::Answered {
                    by,
                    answers: &chosen,
                });
                (Decision::Answers { answers }, verdict)
            }
            (Kind::Tool, Choice::Allow) => {
                (Decision::Allow, render::verdict(&Verdict::Allowed { by }))
            }
            (Kind::Tool, Choice::AllowAlways) => (
                Decision::AllowAlways,
                render::verdict(&Verdict::AllowedForSession { by }),
            ),
            (Kind::Tool, Choice::Deny) => (
                Decision::Deny {
                    message: format!("@{by} denied this in the chat."),
                },
                render::verdict(&Verdict::Denied { by }),
            ),
            (Kind::Plan, Choice::Allow) => (
                Decision::Allow,
                render::verdict(&Verdict::PlanApproved { by }),
            ),
            (Kind::Plan, Choice::Deny) => (
                Decision::Deny {
                    message: format!(
                        "@{by} asked for changes to the plan. Stop here and wait for their instructions."
                    ),
                },
                render::verdict(&Verdict::ChangesRequested { by }),
            ),
            _ => return Vec::new(),
        };
        let text = render::with_footer(&body(kind, &row.tool_name, &input), &verdict);
        let decide = Effect::Decide {
            approval: row.approval_id.clone(),
            status: decision.status(),
            answer: decision.to_json(),
            user_id: user.id.clone(),
            username: user.name.clone(),
            via,
        };
        self.deciding(
            Some(&answer.event_id),
            decide,
            attempt(Outcome::Accepted),
            Then::Answer {
                decision,
                text,
                post,
            },
        )
    }

    fn deciding(
        &mut self,
        event_id: Option<&str>,
        decide: Effect,
        attempt: Attempt,
        then: Then,
    ) -> Vec<Effect> {
        self.deciding.insert(
            attempt.approval.clone(),
            Deciding {
                event_id: event_id.map(str::to_owned),
                decide: decide.clone(),
                attempt,
                then,
            },
        );
        vec![decide]
    }

    /// The shell stored the decision of `approval` (`won`), or found it decided already.
    pub fn decided(&mut self, approval: &str, won: bool) -> Vec<Effect> {
        let Some(deciding) = self.deciding.remove(approval) else {
            return Vec::new();
        };
        if let Some(event_id) = &deciding.event_id {
            self.events.insert(event_id);
        }
        let outcome = if won {
            Outcome::Accepted
        } else {
            Outcome::Late
        };
        let mut effects = vec![Effect::Audit(Attempt {
            outcome,
            ..deciding.attempt
        })];
        match deciding.then {
            Then::Answer {
                decision,
                text,
                post,
            } => {
                if !won {
                    return effects;
                }
                // A request not bound to the running CLI (it was asked by one that is
                // gone) is delivered when the resumed CLI asks again.
                if let Some(p) = self.pending.remove(approval) {
                    effects.push(Effect::Deliver {
                        approval: approval.to_owned(),
                        request_id: p.request.request_id,
                        answer: decision.to_answer(),
                    });
                }
                effects.push(Effect::Update {
                    post,
                    text,
                    buttons: None,
                });
                if self.pending.is_empty() {
                    effects.push(Effect::Status(Status::Working));
                }
            }
            Then::Timeout {
                decision,
                text,
                now_ms,
            } => {
                if let Some(p) = self.pending.remove(approval) {
                    effects.push(Effect::Deliver {
                        approval: approval.to_owned(),
                        request_id: p.request.request_id,
                        answer: decision.to_answer(),
                    });
                    effects.push(Effect::Update {
                        post: p.post,
                        text,
                        buttons: None,
                    });
                }
                match self.expire_next(now_ms) {
                    Some(next) => effects.extend(next),
                    None if self.pending.is_empty() => {
                        effects.push(Effect::Status(Status::Working));
                    }
                    None => {}
                }
            }
            Then::Guest {
                choice,
                input,
                text,
                post,
            } => {
                if !won {
                    return effects;
                }
                effects.push(Effect::Update {
                    post,
                    text,
                    buttons: None,
                });
                if choice == Choice::GuestInvite {
                    effects.push(Effect::Invite {
                        user_id: str_field(&input, "user_id"),
                        username: str_field(&input, "username"),
                    });
                }
                let event = input
                    .get("event")
                    .cloned()
                    .and_then(|e| serde_json::from_value::<ChatEvent>(e).ok());
                match event {
                    Some(event) if choice != Choice::GuestDeny => effects.push(Effect::Admit {
                        approval: approval.to_owned(),
                        event,
                    }),
                    _ => effects.push(Effect::MarkDelivered {
                        approval: approval.to_owned(),
                    }),
                }
            }
            Then::Budget {
                choice,
                budget,
                top_up,
                by,
                text,
                post,
            } => {
                if !won {
                    return effects;
                }
                if self.budget.as_deref() == Some(approval) {
                    self.budget = None;
                }
                effects.push(Effect::Update {
                    post,
                    text,
                    buttons: None,
                });
                let go_on = choice == Choice::BudgetContinue;
                effects.push(Effect::Release {
                    budget,
                    top_up: if go_on { top_up } else { 0.0 },
                    go_on,
                    by,
                });
                if self.pending.is_empty() {
                    effects.push(Effect::Status(Status::Working));
                }
            }
            Then::Domain {
                choice,
                host,
                text,
                post,
            } => {
                if !won {
                    return effects;
                }
                effects.push(Effect::Update {
                    post,
                    text,
                    buttons: None,
                });
                let state = match choice {
                    Choice::DomainOnce => {
                        effects.push(Effect::Grant {
                            approval: approval.to_owned(),
                            host: host.clone(),
                            session_wide: false,
                        });
                        None
                    }
                    Choice::DomainSession => {
                        effects.push(Effect::Grant {
                            approval: approval.to_owned(),
                            host: host.clone(),
                            session_wide: true,
                        });
                        Some(DomainState::Allowed)
                    }
                    _ => Some(DomainState::Denied),
                };
                // Allowed once: a later refusal asks again.
                match state {
                    Some(state) => self.domains.insert(host, state),
                    None => self.domains.remove(&host),
                };
            }
            Then::Push {
                choice,
                input,
                by,
                text,
                post,
            } => {
                if self.push.as_deref() == Some(approval) {
                    self.push = None;
                }
                if !won {
                    return effects;
                }
                effects.push(Effect::Update {
                    post,
                    text,
                    buttons: None,
                });
                if choice == Choice::Push {
                    effects.push(Effect::Push {
                        approval: approval.to_owned(),
                        user_id: by.id,
                        username: by.name,
                        request: str_field(&input, "request"),
                        confirm: input
                            .get("confirm")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        generated: input
                            .get("generated")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        files: input
                            .get("files")
                            .cloned()
                            .and_then(|f| serde_json::from_value(f).ok())
                            .unwrap_or_default(),
                    });
                }
            }
        }
        effects
    }

    /// Time is `now_ms`: deny, with a visible note, the requests whose time is up, one at a
    /// time (each decision is reported before the next).
    pub fn expired(&mut self, now_ms: i64) -> Vec<Effect> {
        self.expire_next(now_ms).unwrap_or_default()
    }

    /// The decision of the next request due at `now_ms`; `None` when none is due.
    fn expire_next(&mut self, now_ms: i64) -> Option<Vec<Effect>> {
        let due = self
            .pending
            .iter()
            .filter(|(_, p)| p.expires_at_ms <= now_ms)
            .min_by_key(|(_, p)| p.expires_at_ms)
            .map(|(id, p)| (id.clone(), p.clone()));
        let (approval, p) = due?;
        if let Some(deciding) = self.deciding.get(&approval)
            && matches!(deciding.then, Then::Timeout { .. })
        {
            return Some(vec![deciding.decide.clone()]);
        }
        let minutes = self.timeout_minutes();
        let decision = Decision::Deny {
            message: format!(
                "Nobody in the chat answered within {minutes} minutes, so this was denied."
            ),
        };
        let text = render::with_footer(
            &body(p.kind, &p.request.tool_name, &p.request.input),
            &render::verdict(&Verdict::TimedOut { minutes }),
        );
        let decide = Effect::Decide {
            approval: approval.clone(),
            status: "timed_out",
            answer: decision.to_json(),
            user_id: TIMEOUT_USER.into(),
            username: TIMEOUT_USER.into(),
            via: "timeout",
        };
        let attempt = Attempt {
            approval,
            user_id: TIMEOUT_USER.into(),
            username: TIMEOUT_USER.into(),
            action: Choice::Deny.label(),
            via: "timeout",
            outcome: Outcome::Accepted,
        };
        Some(self.deciding(
            None,
            decide,
            attempt,
            Then::Timeout {
                decision,
                text,
                now_ms,
            },
        ))
    }

    /// Requests are no longer needed.
    pub fn withdrawn(&mut self, withdrawal: Withdrawal) -> Vec<Effect> {
        match withdrawal {
            Withdrawal::Cancelled { request_id } => {
                let Some(approval) = self
                    .pending
                    .iter()
                    .find(|(_, p)| p.request.request_id == request_id)
                    .map(|(id, _)| id.clone())
                else {
                    return Vec::new();
                };
                let Some(p) = self.take(&approval) else {
                    return Vec::new();
                };
                Self::withdraw(
                    approval,
                    p.kind,
                    &p.request.tool_name,
                    &p.request.input,
                    p.post,
                )
            }
            Withdrawal::TurnEnded { event_id, open } => {
                // Nothing is held once the turn is over; its budget prompt goes below.
                self.budget = None;
                let mut effects = Vec::new();
                let mut gone = HashSet::new();
                for (approval, p) in std::mem::take(&mut self.pending) {
                    self.deciding.remove(&approval);
                    gone.insert(approval.clone());
                    effects.extend(Self::withdraw(
                        approval,
                        p.kind,
                        &p.request.tool_name,
                        &p.request.input,
                        p.post,
                    ));
                }
                let Some(event_id) = event_id else {
                    return effects;
                };
                for row in open {
                    if row.event_id != event_id
                        || row.kind == Kind::Guest.as_str()
                        || row.kind == Kind::Domain.as_str()
                        || row.kind == Kind::Push.as_str()
                        || row.status != "pending"
                        || gone.contains(&row.approval_id)
                    {
                        continue;
                    }
                    let kind = Kind::parse(&row.kind).unwrap_or(Kind::Tool);
                    let post = post_of(&row);
                    effects.extend(Self::withdraw(
                        row.approval_id.clone(),
                        kind,
                        &row.tool_name,
                        &input_of(&row),
                        post,
                    ));
                }
                effects
            }
            Withdrawal::Interrupted { by } => {
                let mut effects = Vec::new();
                for (approval, p) in std::mem::take(&mut self.pending) {
                    self.deciding.remove(&approval);
                    let text = render::with_footer(
                        &body(p.kind, &p.request.tool_name, &p.request.input),
                        &render::verdict(&Verdict::Stopped { by: &by }),
                    );
                    effects.push(Effect::Deliver {
                        approval: approval.clone(),
                        request_id: p.request.request_id,
                        answer: PermissionAnswer::DenyAndInterrupt {
                            message: format!("Stopped by {by}."),
                        },
                    });
                    effects.push(Effect::Close {
                        approval,
                        status: "interrupted",
                    });
                    effects.push(Effect::Update {
                        post: p.post,
                        text,
                        buttons: None,
                    });
                }
                effects
            }
        }
    }

    /// Removes a pending request and any decision of it still unreported.
    fn take(&mut self, approval: &str) -> Option<Pending> {
        self.deciding.remove(approval);
        self.pending.remove(approval)
    }

    fn withdraw(
        approval: String,
        kind: Kind,
        tool_name: &str,
        input: &Value,
        post: LocalRef,
    ) -> Vec<Effect> {
        vec![
            Effect::Close {
                approval,
                status: "cancelled",
            },
            Effect::Update {
                post,
                text: render::with_footer(
                    &body(kind, tool_name, input),
                    &render::verdict(&Verdict::Withdrawn),
                ),
                buttons: None,
            },
        ]
    }
}

#[cfg(test)]
mod tests;
