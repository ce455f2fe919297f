use std::collections::BTreeMap;

use proptest::prelude::*;
use proto::v1::{ChannelType, EventBody, MessagePosted, Source, User};
use proto::{ChannelId, PostId, ThreadId, UserId};
use serde_json::json;

use super::*;
use crate::agent::{PermissionKind, Question, QuestionOption};

const THREAD: &str = "t1";
const SESSION: &str = "s1";
const TIMEOUT_S: u64 = 600;

fn options() -> Options {
    Options {
        // carol's id: an approver is known by id, whatever name she has now.
        approvers: ["u1".to_owned()].into(),
        timeout_s: TIMEOUT_S,
    }
}

fn alice() -> Person {
    Person {
        id: "u0".into(),
        name: "alice".into(),
    }
}

fn carol() -> Person {
    Person {
        id: "u1".into(),
        name: "carol".into(),
    }
}

fn bob() -> Person {
    Person {
        id: "u2".into(),
        name: "bob".into(),
    }
}

fn dave() -> Person {
    Person {
        id: "u3".into(),
        name: "dave".into(),
    }
}

fn questions() -> Vec<Question> {
    let q = |text: &str, labels: [&str; 2]| Question {
        question: text.into(),
        header: String::new(),
        options: labels
            .iter()
            .map(|l| QuestionOption {
                label: (*l).into(),
                description: String::new(),
            })
            .collect(),
        multi_select: false,
    };
    vec![q("Colour?", ["Red", "Blue"]), q("Sure?", ["Yes", "No"])]
}

/// Request `n` of kind `kind` (0 tool, 1 question, 2 plan), distinct by `n`.
fn request(request_id: &str, kind: u8, n: usize) -> PermissionRequest {
    let (tool_name, input, kind) = match kind {
        0 => (
            "Bash",
            json!({"command": format!("ls {n}")}),
            PermissionKind::Tool,
        ),
        1 => (
            "AskUserQuestion",
            json!({"questions": questions(), "n": n}),
            PermissionKind::AskUserQuestion {
                questions: questions(),
            },
        ),
        _ => (
            "ExitPlanMode",
            json!({"plan": format!("Plan {n}")}),
            PermissionKind::ExitPlanMode {
                plan: format!("Plan {n}"),
                plan_file_path: None,
            },
        ),
    };
    PermissionRequest {
        request_id: request_id.into(),
        tool_name: tool_name.into(),
        tool_use_id: format!("tu{n}"),
        input,
        description: None,
        blocked_path: None,
        suggestions: Vec::new(),
        kind,
    }
}

fn message(event_id: &str, user: &Person, text: &str) -> ChatEvent {
    ChatEvent {
        event_id: event_id.into(),
        thread: ThreadId::new(THREAD),
        channel: ChannelId::new("c1"),
        user: User {
            id: UserId::new(user.id.clone()),
            username: user.name.clone(),
        },
        received_at_ms: 0,
        body: EventBody::Message(MessagePosted {
            post_id: PostId::new(event_id),
            root_id: None,
            text: text.into(),
            file_ids: Vec::new(),
            mentions_bot: false,
            channel_type: ChannelType::Open,
            source: Source::WebSocket,
            create_at_ms: 0,
        }),
    }
}

fn post(seq: u32) -> LocalRef {
    LocalRef {
        session: SessionId::new(SESSION),
        seq,
    }
}

/// The shell, with PostgreSQL, the replies and the CLI as in-memory models.
struct World {
    core: Approvals,
    now_ms: i64,
    /// PostgreSQL's approvals, by id (ids grow, so this is creation order).
    rows: BTreeMap<String, ApprovalRow>,
    /// Who decided each row (user id).
    decided_by: BTreeMap<String, String>,
    next_id: usize,
    next_seq: u32,
    incarnation: usize,
    turn: usize,
    /// The running CLI's requests still waiting: request id → (kind, n).
    cli: BTreeMap<String, (u8, usize)>,
    /// Requests of a CLI whose worker died, to be asked again when it resumes.
    asleep: BTreeMap<String, (u8, usize)>,
    /// What each CLI request received.
    delivered: BTreeMap<String, Vec<PermissionAnswer>>,
    audits: Vec<Attempt>,
    tells: Vec<(String, String)>,
    queued: Vec<ChatEvent>,
    invited: Vec<String>,
    posts: BTreeMap<u32, (String, Option<Buttons>)>,
    statuses: Vec<Status>,
    /// Hosts opened to the session's egress gateway: (host, for the whole session).
    grants: Vec<(String, bool)>,
    /// Budget holds released: whether to go on.
    releases: Vec<bool>,
    /// Whether the session is live: a grant for one request reaches it (and is recorded
    /// delivered) only then.
    live: bool,
    /// (who, request, confirmed) of each push carried out.
    pushes: Vec<(String, String, bool)>,
}

impl World {
    fn new() -> Self {
        Self {
            core: Approvals::new(THREAD, options()),
            now_ms: 1_000_000,
            rows: BTreeMap::new(),
            decided_by: BTreeMap::new(),
            next_id: 0,
            next_seq: 1,
            incarnation: 0,
            turn: 0,
            cli: BTreeMap::new(),
            asleep: BTreeMap::new(),
            delivered: BTreeMap::new(),
            audits: Vec::new(),
            tells: Vec::new(),
            queued: Vec::new(),
            invited: Vec::new(),
            posts: BTreeMap::new(),
            statuses: Vec::new(),
            grants: Vec::new(),
            releases: Vec::new(),
            pushes: Vec::new(),
            live: true,
        }
    }

    /// The egress gateway refused `host`.
    fn refused(&mut self, host: &str) -> Vec<Effect> {
        let approval = self.id("a");
        let effects = self.core.domain(DomainAsked {
            approval,
            session_id: SESSION.into(),
            host: host.into(),
            port: 443,
            event_id: self.turn_event(),
            now_ms: self.now_ms,
        });
        self.run(effects)
    }

    fn domain_row(&self, host: &str) -> Vec<ApprovalRow> {
        self.rows
            .values()
            .filter(|r| r.kind == "domain" && r.tool_name == host)
            .cloned()
            .collect()
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:05}", self.next_id)
    }

    fn turn_event(&self) -> String {
        format!("turn{}", self.turn)
    }

    /// Carries out `effects` the way the session shell does; returns all effects, the
    /// follow-ups of `recorded` and `decided` included.
    fn run(&mut self, effects: Vec<Effect>) -> Vec<Effect> {
        let mut all = Vec::new();
        for effect in effects {
            all.push(effect.clone());
            match effect {
                Effect::Status(status) => self.statuses.push(status),
                Effect::Post { text, buttons } => {
                    // The shell posts the prompt with the reference its row reserved.
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let row_post = self.rows.get(&buttons.approval).map(|r| r.post_ref);
                    assert_eq!(
                        row_post,
                        Some(seq as i32),
                        "a prompt is posted only after its row, on its reserved post"
                    );
                    self.posts.insert(seq, (text, Some(buttons)));
                }
                Effect::Update {
                    post,
                    text,
                    buttons,
                } => {
                    self.posts.insert(post.seq, (text, buttons));
                }
                Effect::Insert(mut row) => {
                    row.post_ref = self.next_seq as i32;
                    let approval = row.approval_id.clone();
                    self.rows.entry(approval.clone()).or_insert(row);
                    let more = self.core.recorded(&approval, Some(post(self.next_seq)));
                    all.extend(self.run(more));
                }
                Effect::Rebind {
                    approval,
                    request_id,
                    incarnation,
                } => {
                    if let Some(row) = self.rows.get_mut(&approval) {
                        row.request_id = request_id;
                        row.incarnation = incarnation;
                    }
                }
                Effect::Progress { approval, answers } => {
                    if let Some(row) = self.rows.get_mut(&approval)
                        && row.status == "pending"
                    {
                        row.progress = Some(answers);
                    }
                }
                Effect::Decide {
                    approval,
                    status,
                    answer,
                    user_id,
                    username,
                    via: _,
                } => {
                    let won = match self.rows.get_mut(&approval) {
                        Some(row) if row.status == "pending" => {
                            row.status = status.into();
                            row.answer = Some(answer);
                            row.decided_by_name = Some(username);
                            self.decided_by.insert(approval.clone(), user_id);
                            true
                        }
                        _ => false,
                    };
                    let more = self.core.decided(&approval, won);
                    all.extend(self.run(more));
                }
                Effect::Close { approval, status } => {
                    if let Some(row) = self.rows.get_mut(&approval) {
                        if row.status == "pending" {
                            row.status = status.into();
                        }
                        row.delivered = true;
                    }
                }
                Effect::Audit(attempt) => self.audits.push(attempt),
                Effect::Deliver {
                    approval,
                    request_id,
                    answer,
                } => {
                    self.cli.remove(&request_id);
                    self.delivered.entry(request_id).or_default().push(answer);
                    if let Some(row) = self.rows.get_mut(&approval) {
                        row.delivered = true;
                    }
                }
                Effect::MarkDelivered { approval } => {
                    if let Some(row) = self.rows.get_mut(&approval) {
                        row.delivered = true;
                    }
                }
                Effect::Tell { user_id, text } => self.tells.push((user_id, text)),
                Effect::Admit { approval, event } => {
                    self.queued.push(event);
                    if let Some(row) = self.rows.get_mut(&approval) {
                        row.delivered = true;
                    }
                }
                Effect::Invite { username, .. } => self.invited.push(username),
                Effect::Grant {
                    approval,
                    host,
                    session_wide,
                } => {
                    if self.live {
                        self.grants.push((host, session_wide));
                        if !session_wide && let Some(row) = self.rows.get_mut(&approval) {
                            row.delivered = true;
                        }
                    }
                }
                Effect::Release { go_on, .. } => self.releases.push(go_on),
                Effect::Push {
                    approval,
                    username,
                    request,
                    confirm,
                    ..
                } => {
                    self.pushes.push((username, request, confirm));
                    if let Some(row) = self.rows.get_mut(&approval) {
                        row.delivered = true;
                    }
                }
            }
        }
        all
    }

    fn incarnation(&self) -> String {
        format!("cli{}", self.incarnation)
    }

    /// The shell's look-up of an earlier CLI's approval for a re-asked request.
    fn reasked(&self, request: &PermissionRequest) -> Option<ApprovalRow> {
        let fingerprint = super::super::fingerprint(&request.tool_name, &request.input);
        let turn = self.turn_event();
        let incarnation = self.incarnation();
        self.rows
            .values()
            .find(|r| {
                r.event_id == turn
                    && r.fingerprint == fingerprint
                    && r.incarnation != incarnation
                    && !r.delivered
                    && [
                        "pending",
                        "allowed",
                        "allowed_always",
                        "denied",
                        "answered",
                        "timed_out",
                    ]
                    .contains(&r.status.as_str())
            })
            .cloned()
    }

    fn ask(&mut self, kind: u8, n: usize) -> (String, Vec<Effect>) {
        let request_id = self.id("r");
        self.cli.insert(request_id.clone(), (kind, n));
        let effects = self.ask_as(&request_id, kind, n);
        (request_id, effects)
    }

    /// The CLI asks request `request_id`.
    fn ask_as(&mut self, request_id: &str, kind: u8, n: usize) -> Vec<Effect> {
        let request = request(request_id, kind, n);
        let stored = self.reasked(&request);
        let approval = self.id("a");
        let effects = self.core.asked(Asked {
            request,
            stored,
            approval,
            session_id: Some(SESSION.into()),
            event_id: self.turn_event(),
            incarnation: self.incarnation(),
            now_ms: self.now_ms,
        });
        self.run(effects)
    }

    fn answer(
        &mut self,
        event_id: &str,
        approval: &str,
        user: Person,
        via: Via,
        step: Option<usize>,
    ) -> Vec<Effect> {
        let Some(row) = self.rows.get(approval).cloned() else {
            return Vec::new();
        };
        let effects = self.core.answered(Answer {
            event_id: event_id.into(),
            user,
            via,
            step,
            row,
            owner: alice(),
        });
        self.run(effects)
    }

    /// The question a row shows now, as the shell finds it for a reaction.
    fn current_step(&self, approval: &str) -> usize {
        self.core
            .prompts()
            .find(|(id, _, _)| *id == approval)
            .map(|(_, _, step)| step)
            .unwrap_or_else(|| {
                self.rows
                    .get(approval)
                    .map(|r| progress(r).len())
                    .unwrap_or(0)
            })
    }

    fn expire(&mut self) -> Vec<Effect> {
        match self.core.next_deadline() {
            Some(at) if at <= self.now_ms => {
                let effects = self.core.expired(self.now_ms);
                self.run(effects)
            }
            _ => Vec::new(),
        }
    }

    fn end_turn(&mut self) -> Vec<Effect> {
        let open: Vec<ApprovalRow> = self
            .rows
            .values()
            .filter(|r| r.status == "pending")
            .cloned()
            .collect();
        let effects = self.core.withdrawn(Withdrawal::TurnEnded {
            event_id: Some(self.turn_event()),
            open,
        });
        self.cli.clear();
        self.run(effects)
    }
}

// ---- Concrete scenarios.

#[test]
fn a_refused_host_is_asked_once_and_allowed_for_the_session() {
    let mut w = World::new();
    let effects = w.refused("api.example.com");
    assert!(
        matches!(effects.as_slice(), [Effect::Insert(_), Effect::Post { .. }]),
        "{effects:?}"
    );
    let (text, buttons) = w.posts.values().next().unwrap().clone();
    assert!(
        text.contains("Claude wants to reach `api.example.com`"),
        "{text}"
    );
    let ids: Vec<_> = buttons
        .unwrap()
        .buttons
        .iter()
        .map(|b| b.id.clone())
        .collect();
    assert_eq!(ids, ["domainonce", "domainsession", "domaindeny"]);
    // Refused again while it waits: not asked twice.
    assert!(w.refused("api.example.com").is_empty());
    // The end of the turn does not withdraw it: the answer matters to the next try.
    w.end_turn();
    let row = w.domain_row("api.example.com").remove(0);
    assert_eq!(row.status, "pending");

    // Bob may not answer; alice may.
    let refused = w.answer(
        "e1",
        &row.approval_id,
        bob(),
        Via::Button("domainsession".into()),
        Some(0),
    );
    assert!(matches!(
        refused[0],
        Effect::Audit(Attempt {
            outcome: Outcome::Refused,
            ..
        })
    ));
    assert!(w.grants.is_empty());
    w.answer(
        "e2",
        &row.approval_id,
        alice(),
        Via::Button("domainsession".into()),
        Some(0),
    );
    assert_eq!(w.grants, [("api.example.com".to_owned(), true)]);
    let row = w.domain_row("api.example.com").remove(0);
    assert_eq!(row.status, "allowed");
    let (text, buttons) = w.posts.get(&(row.post_ref as u32)).unwrap().clone();
    assert!(
        text.contains("**Allowed for this session** by @alice"),
        "{text}"
    );
    assert!(buttons.is_none());
    // Allowed for the session: never asked again (a refusal then is a race, not a question).
    assert!(w.refused("api.example.com").is_empty());
}

fn held_at_budget(w: &mut World, spent: f64) -> Vec<Effect> {
    let approval = w.id("a");
    let effects = w.core.budget(BudgetAsked {
        approval,
        session_id: SESSION.into(),
        budget: "user_day".into(),
        what: "@alice's daily budget".into(),
        spent,
        limit: 1.0,
        top_up: 1.0,
        event_id: w.turn_event(),
        now_ms: w.now_ms,
    });
    w.run(effects)
}

#[test]
fn a_used_up_budget_is_asked_once_and_continue_raises_it_from_what_was_spent() {
    let mut w = World::new();
    let effects = held_at_budget(&mut w, 1.25);
    assert!(
        matches!(
            effects.as_slice(),
            [
                Effect::Status(Status::WaitingForApproval),
                Effect::Insert(_),
                Effect::Post { .. }
            ]
        ),
        "{effects:?}"
    );
    let (text, buttons) = w.posts.values().next().unwrap().clone();
    assert!(text.contains("@alice's daily budget is used up"), "{text}");
    assert!(text.contains("$1.25 spent of $1.00"), "{text}");
    let ids: Vec<_> = buttons
        .unwrap()
        .buttons
        .iter()
        .map(|b| b.id.clone())
        .collect();
    assert_eq!(ids, ["budgetcontinue", "budgetstop"]);
    // More held requests while it waits: one prompt.
    assert!(held_at_budget(&mut w, 1.5).is_empty());
    let row = w
        .rows
        .values()
        .find(|r| r.kind == "budget")
        .unwrap()
        .clone();
    let refused = w.answer(
        "e1",
        &row.approval_id,
        bob(),
        Via::Button("budgetcontinue".into()),
        Some(0),
    );
    assert!(matches!(
        refused[0],
        Effect::Audit(Attempt {
            outcome: Outcome::Refused,
            ..
        })
    ));
    assert!(w.releases.is_empty());
    let effects = w.answer(
        "e2",
        &row.approval_id,
        carol(),
        Via::Reaction("+1".into()),
        Some(0),
    );
    let released: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Release {
                top_up, go_on, by, ..
            } => Some((*top_up, *go_on, by.clone())),
            _ => None,
        })
        .collect();
    // Overshot by 0.25 when asked: continuing allows a whole top-up from there.
    assert_eq!(released, [(1.25, true, "carol".to_owned())]);
    assert!(
        w.posts
            .get(&(row.post_ref as u32))
            .unwrap()
            .0
            .contains("**Continued** by @carol")
    );

    // Used up again: asked again; stopped this time.
    held_at_budget(&mut w, 2.5);
    let row = w
        .rows
        .values()
        .rfind(|r| r.kind == "budget")
        .unwrap()
        .clone();
    w.answer(
        "e3",
        &row.approval_id,
        alice(),
        Via::Button("budgetstop".into()),
        Some(0),
    );
    assert_eq!(w.releases, [true, false]);
    assert_eq!(w.rows[&row.approval_id].status, "denied");
}

fn offered_push(w: &mut World, files: &[&str]) -> Vec<Effect> {
    let approval = w.id("a");
    let effects = w.core.push(PushAsked {
        approval,
        session_id: SESSION.into(),
        repo: "web".into(),
        branch: "ccfleet/t1".into(),
        files: files.iter().map(|f| (*f).to_owned()).collect(),
        request: "Add a page".into(),
        confirm: false,
        generated: false,
        event_id: w.turn_event(),
        now_ms: w.now_ms,
    });
    w.run(effects)
}

#[test]
fn a_push_is_offered_once_and_only_the_owner_or_an_approver_pushes() {
    let mut w = World::new();
    let effects = offered_push(&mut w, &["src/page.html"]);
    assert!(
        matches!(effects.as_slice(), [Effect::Insert(_), Effect::Post { .. }]),
        "{effects:?}"
    );
    let (text, buttons) = w.posts.values().next().unwrap().clone();
    assert!(text.contains("Push the changes to `web`?"), "{text}");
    assert!(text.contains("`src/page.html`"), "{text}");
    let ids: Vec<_> = buttons
        .unwrap()
        .buttons
        .iter()
        .map(|b| b.id.clone())
        .collect();
    assert_eq!(ids, ["push", "pushskip"]);
    // Another turn changes files while the offer waits: still one offer, and the end of
    // a turn does not withdraw it (it pushes whatever changed by then).
    assert!(offered_push(&mut w, &["src/more.html"]).is_empty());
    w.end_turn();
    let row = w.rows.values().find(|r| r.kind == "push").unwrap().clone();
    assert_eq!(w.rows[&row.approval_id].status, "pending");

    let refused = w.answer(
        "e1",
        &row.approval_id,
        bob(),
        Via::Button("push".into()),
        Some(0),
    );
    assert!(matches!(
        refused[0],
        Effect::Audit(Attempt {
            outcome: Outcome::Refused,
            ..
        })
    ));
    assert!(w.pushes.is_empty());
    w.answer(
        "e2",
        &row.approval_id,
        carol(),
        Via::Reaction("+1".into()),
        Some(0),
    );
    assert_eq!(
        w.pushes,
        [("carol".to_owned(), "Add a page".to_owned(), false)]
    );
    assert_eq!(w.rows[&row.approval_id].status, "allowed");
    assert!(
        w.posts
            .get(&(row.post_ref as u32))
            .unwrap()
            .0
            .contains("**Push** asked by @carol")
    );
    // The same click again (a redelivery, or a second person): nothing pushes twice.
    w.answer(
        "e3",
        &row.approval_id,
        alice(),
        Via::Button("push".into()),
        Some(0),
    );
    assert_eq!(w.pushes.len(), 1);

    // Answered: the next change is offered again; "not now" pushes nothing.
    assert_eq!(offered_push(&mut w, &["src/third.html"]).len(), 2);
    let row = w.rows.values().rfind(|r| r.kind == "push").unwrap().clone();
    w.answer(
        "e4",
        &row.approval_id,
        alice(),
        Via::Button("pushskip".into()),
        Some(0),
    );
    assert_eq!(w.rows[&row.approval_id].status, "denied");
    assert_eq!(w.pushes.len(), 1);
}

#[test]
fn the_end_of_a_turn_withdraws_its_budget_prompt() {
    let mut w = World::new();
    held_at_budget(&mut w, 1.0);
    w.end_turn();
    let row = w
        .rows
        .values()
        .find(|r| r.kind == "budget")
        .unwrap()
        .clone();
    assert_eq!(row.status, "cancelled");
    assert_eq!(
        held_at_budget(&mut w, 1.0).len(),
        3,
        "the next turn's hold asks again"
    );
}

#[test]
fn allowed_once_asks_again_next_time_and_denied_never_does() {
    let mut w = World::new();
    w.refused("once.test");
    let row = w.domain_row("once.test").remove(0);
    w.answer(
        "e1",
        &row.approval_id,
        carol(),
        Via::Reaction("+1".into()),
        Some(0),
    );
    assert_eq!(w.grants, [("once.test".to_owned(), false)]);
    assert_eq!(
        w.refused("once.test").len(),
        2,
        "asked again after a one-time allowance"
    );

    w.refused("no.test");
    let row = w.domain_row("no.test").remove(0);
    w.answer(
        "e2",
        &row.approval_id,
        alice(),
        Via::Reaction("-1".into()),
        Some(0),
    );
    assert_eq!(w.domain_row("no.test")[0].status, "denied");
    assert!(w.refused("no.test").is_empty());
    assert_eq!(w.grants.len(), 1, "a denial grants nothing");
}

#[test]
fn a_session_made_live_again_gets_its_answers_back() {
    let mut w = World::new();
    w.refused("kept.test");
    let kept = w.domain_row("kept.test").remove(0);
    w.answer(
        "e1",
        &kept.approval_id,
        alice(),
        Via::Button("domainsession".into()),
        Some(0),
    );
    w.refused("once.test");
    let once = w.domain_row("once.test").remove(0);
    w.answer(
        "e2",
        &once.approval_id,
        alice(),
        Via::Button("domainonce".into()),
        Some(0),
    );
    w.refused("no.test");
    let no = w.domain_row("no.test").remove(0);
    w.answer(
        "e3",
        &no.approval_id,
        alice(),
        Via::Button("domaindeny".into()),
        Some(0),
    );
    w.refused("open.test");

    // Another worker (a new core) reads the rows.
    let rows: Vec<ApprovalRow> = w.rows.values().cloned().collect();
    let mut core = Approvals::new(THREAD, options());
    let effects = core.restore_domains(&rows);
    let kept = w.domain_row("kept.test").remove(0);
    assert_eq!(
        effects,
        [Effect::Grant {
            approval: kept.approval_id,
            host: "kept.test".into(),
            session_wide: true
        }]
    );
    w.core = core;
    assert!(w.refused("kept.test").is_empty());
    assert!(w.refused("no.test").is_empty());
    assert!(w.refused("open.test").is_empty(), "its prompt is still up");
    assert_eq!(w.refused("once.test").len(), 2);
}

#[test]
fn allowed_once_while_no_session_is_live_is_given_at_the_next_start_once() {
    let mut w = World::new();
    w.refused("later.test");
    let row = w.domain_row("later.test").remove(0);
    // The session went to sleep before anyone answered; the answer comes now.
    w.live = false;
    w.answer(
        "e1",
        &row.approval_id,
        alice(),
        Via::Button("domainonce".into()),
        Some(0),
    );
    assert!(w.grants.is_empty(), "nothing to give it to");
    assert!(!w.rows[&row.approval_id].delivered);
    // The session starts again (on any worker): the grant is given then, and only once.
    let rows: Vec<ApprovalRow> = w.rows.values().cloned().collect();
    let mut core = Approvals::new(THREAD, options());
    w.live = true;
    let effects = core.restore_domains(&rows);
    w.core = core;
    w.run(effects);
    assert_eq!(w.grants, [("later.test".to_owned(), false)]);
    assert!(w.rows[&row.approval_id].delivered);
    let rows: Vec<ApprovalRow> = w.rows.values().cloned().collect();
    let mut core = Approvals::new(THREAD, options());
    assert!(core.restore_domains(&rows).is_empty(), "given once");
}

#[test]
fn a_tool_request_is_posted_stored_and_allowed_by_button() {
    let mut w = World::new();
    let (request_id, effects) = w.ask(0, 1);
    let (text, buttons) = prompt(Kind::Tool, "Bash", &json!({"command": "ls 1"}), 0);
    assert_eq!(effects[0], Effect::Status(Status::WaitingForApproval));
    // Stored first, then shown: a click always finds what it answers.
    assert!(
        matches!(&effects[1], Effect::Insert(row) if row.request_id == request_id && row.expires_at_ms == 1_000_000 + 600_000)
    );
    assert_eq!(
        effects[2],
        Effect::Post {
            text,
            buttons: Buttons {
                approval: "a00002".into(),
                step: 0,
                buttons,
            },
        }
    );
    assert_eq!(
        w.rows["a00002"].post_ref, 1,
        "the row names the prompt's post"
    );

    let effects = w.answer(
        "ev1",
        "a00002",
        alice(),
        Via::Button("allow".into()),
        Some(0),
    );
    let verdict = render::with_footer(
        &body(Kind::Tool, "Bash", &json!({"command": "ls 1"})),
        &render::verdict(&Verdict::Allowed { by: "alice" }),
    );
    assert_eq!(
        effects,
        vec![
            Effect::Decide {
                approval: "a00002".into(),
                status: "allowed",
                answer: Decision::Allow.to_json(),
                user_id: "u0".into(),
                username: "alice".into(),
                via: "button",
            },
            Effect::Audit(Attempt {
                approval: "a00002".into(),
                user_id: "u0".into(),
                username: "alice".into(),
                action: "allow".into(),
                via: "button",
                outcome: Outcome::Accepted,
            }),
            Effect::Deliver {
                approval: "a00002".into(),
                request_id: request_id.clone(),
                answer: PermissionAnswer::Allow {
                    updated_input: None
                },
            },
            Effect::Update {
                post: post(1),
                text: verdict,
                buttons: None,
            },
            Effect::Status(Status::Working),
        ]
    );
    assert!(!w.core.is_waiting());
}

#[test]
fn someone_who_may_not_answer_is_refused_and_told() {
    let mut w = World::new();
    let _ = w.ask(0, 1);
    let effects = w.answer("ev1", "a00002", bob(), Via::Reaction("+1".into()), Some(0));
    assert_eq!(
        effects,
        vec![
            Effect::Audit(Attempt {
                approval: "a00002".into(),
                user_id: "u2".into(),
                username: "bob".into(),
                action: "allow".into(),
                via: "reaction",
                outcome: Outcome::Refused,
            }),
            Effect::Tell {
                user_id: "u2".into(),
                text: render::not_an_approver("alice"),
            },
        ]
    );
    assert!(w.core.is_waiting());
    assert_eq!(w.rows["a00002"].status, "pending");
}

#[test]
fn a_late_click_is_told_who_answered_but_a_late_reaction_is_not() {
    let mut w = World::new();
    let _ = w.ask(2, 1);
    let _ = w.answer(
        "ev1",
        "a00002",
        carol(),
        Via::Button("approve".into()),
        Some(0),
    );
    assert_eq!(w.rows["a00002"].status, "allowed");
    let effects = w.answer(
        "ev2",
        "a00002",
        alice(),
        Via::Button("changes".into()),
        Some(0),
    );
    assert_eq!(effects.len(), 2);
    assert!(
        matches!(&effects[0], Effect::Audit(a) if a.outcome == Outcome::Late && a.action == "deny")
    );
    assert_eq!(
        effects[1],
        Effect::Tell {
            user_id: "u0".into(),
            text: render::already_answered(Some("carol")),
        }
    );
    let effects = w.answer("ev3", "a00002", alice(), Via::Reaction("-1".into()), None);
    assert!(matches!(&effects[..], [Effect::Audit(a)] if a.outcome == Outcome::Late));
    // A reaction that means nothing here is just a reaction.
    assert!(
        w.answer(
            "ev4",
            "a00002",
            alice(),
            Via::Reaction("heart".into()),
            None
        )
        .is_empty()
    );
}

#[test]
fn questions_are_asked_one_at_a_time_on_the_same_post() {
    let mut w = World::new();
    let (request_id, _) = w.ask(1, 1);
    let input = w.rows["a00002"].input.clone();
    let input: Value = serde_json::from_str(&input).unwrap();
    let effects = w.answer(
        "ev1",
        "a00002",
        alice(),
        Via::Button("opt1".into()),
        Some(0),
    );
    let (text, buttons) = prompt(Kind::Question, "AskUserQuestion", &input, 1);
    assert_eq!(
        effects,
        vec![
            Effect::Progress {
                approval: "a00002".into(),
                answers: r#"{"Colour?":"Red"}"#.into(),
            },
            Effect::Audit(Attempt {
                approval: "a00002".into(),
                user_id: "u0".into(),
                username: "alice".into(),
                action: "option:1".into(),
                via: "button",
                outcome: Outcome::Accepted,
            }),
            Effect::Update {
                post: post(1),
                text,
                buttons: Some(Buttons {
                    approval: "a00002".into(),
                    step: 1,
                    buttons,
                }),
            },
        ]
    );
    // A click on the first question's buttons comes too late now.
    let effects = w.answer(
        "ev2",
        "a00002",
        alice(),
        Via::Button("opt2".into()),
        Some(0),
    );
    assert!(matches!(&effects[0], Effect::Audit(a) if a.outcome == Outcome::Late));
    let effects = w.answer(
        "ev3",
        "a00002",
        carol(),
        Via::Reaction("two".into()),
        Some(1),
    );
    let answers = BTreeMap::from([
        ("Colour?".to_owned(), "Red".to_owned()),
        ("Sure?".to_owned(), "No".to_owned()),
    ]);
    assert_eq!(
        w.delivered[&request_id],
        vec![PermissionAnswer::Answers(answers)]
    );
    let chosen = ["Red".to_owned(), "No".to_owned()];
    let expected = render::with_footer(
        &body(Kind::Question, "AskUserQuestion", &input),
        &render::verdict(&Verdict::Answered {
            by: "carol",
            answers: &chosen,
        }),
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Update { text, buttons: None, .. } if *text == expected))
    );
}

#[test]
fn a_decision_the_shell_could_not_store_is_asked_for_again_then_never_twice() {
    let mut w = World::new();
    let _ = w.ask(0, 1);
    let row = w.rows["a00002"].clone();
    let answer = Answer {
        event_id: "ev1".into(),
        user: alice(),
        via: Via::Button("deny".into()),
        step: Some(0),
        row,
        owner: alice(),
    };
    let first = w.core.answered(answer.clone());
    assert!(matches!(
        &first[..],
        [Effect::Decide {
            status: "denied",
            ..
        }]
    ));
    // The database failed: the event is redelivered and handled again.
    assert_eq!(w.core.answered(answer.clone()), first);
    let rest = w.run(first);
    assert!(rest.iter().any(|e| matches!(e, Effect::Deliver { answer: PermissionAnswer::Deny { message }, .. } if message == "@alice denied this in the chat.")));
    assert!(w.core.answered(answer).is_empty());
}

#[test]
fn a_lost_decision_is_audited_as_late_and_nothing_else() {
    let mut w = World::new();
    let _ = w.ask(0, 1);
    let effects = w.core.answered(Answer {
        event_id: "ev1".into(),
        user: alice(),
        via: Via::Button("allow".into()),
        step: None,
        row: w.rows["a00002"].clone(),
        owner: alice(),
    });
    assert_eq!(effects.len(), 1);
    let effects = w.core.decided("a00002", false);
    assert!(matches!(&effects[..], [Effect::Audit(a)] if a.outcome == Outcome::Late));
    assert!(w.core.decided("a00002", true).is_empty());
}

#[test]
fn requests_time_out_one_after_the_other_then_the_session_works_on() {
    let mut w = World::new();
    let (first, _) = w.ask(0, 1);
    w.now_ms += 1000;
    let (second, _) = w.ask(2, 2);
    w.now_ms += 599_999;
    let effects = w.expire();
    assert_eq!(effects.len(), 4, "only the first is due: {effects:?}");
    assert!(w.core.is_waiting());
    w.now_ms += 1;
    let effects = w.expire();
    let denial = PermissionAnswer::Deny {
        message: "Nobody in the chat answered within 10 minutes, so this was denied.".into(),
    };
    assert_eq!(w.delivered[&first], vec![denial.clone()]);
    assert_eq!(w.delivered[&second], vec![denial]);
    assert_eq!(w.rows["a00004"].status, "timed_out");
    assert_eq!(effects.last(), Some(&Effect::Status(Status::Working)));
    let text = render::with_footer(
        &body(Kind::Plan, "ExitPlanMode", &json!({"plan": "Plan 2"})),
        &render::verdict(&Verdict::TimedOut { minutes: 10 }),
    );
    assert_eq!(w.posts[&2], (text, None));
    assert!(
        w.audits
            .iter()
            .all(|a| a.via == "timeout" && a.user_id == "ccfleet" && a.action == "deny")
    );
    assert_eq!(w.core.next_deadline(), None);
}

#[test]
fn a_request_asked_again_after_a_restart_gets_its_stored_decision_or_its_post_back() {
    let mut w = World::new();
    let _ = w.ask(0, 1);
    let _ = w.ask(1, 2);
    // The worker dies; meanwhile the tool request is allowed via its stored row.
    w.core = Approvals::new(THREAD, options());
    let effects = w.answer(
        "ev1",
        "a00002",
        alice(),
        Via::Button("allowalways".into()),
        Some(0),
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Deliver { .. })));
    let _ = w.answer(
        "ev2",
        "a00004",
        alice(),
        Via::Button("opt2".into()),
        Some(0),
    );
    w.incarnation += 1;
    let (tool, effects) = w.ask(0, 1);
    assert_eq!(
        effects,
        vec![
            Effect::Rebind {
                approval: "a00002".into(),
                request_id: tool.clone(),
                incarnation: "cli1".into(),
            },
            Effect::Deliver {
                approval: "a00002".into(),
                request_id: tool.clone(),
                answer: PermissionAnswer::AllowAlways {
                    updated_input: None
                },
            },
        ]
    );
    let (question, effects) = w.ask(1, 2);
    let input: Value = serde_json::from_str(&w.rows["a00004"].input).unwrap();
    let (text, buttons) = prompt(Kind::Question, "AskUserQuestion", &input, 1);
    assert_eq!(
        effects[1..],
        [
            Effect::Status(Status::WaitingForApproval),
            Effect::Update {
                post: post(2),
                text: render::with_footer(&text, &render::reasked_note()),
                buttons: Some(Buttons {
                    approval: "a00004".into(),
                    step: 1,
                    buttons,
                }),
            },
        ]
    );
    let _ = w.answer("ev3", "a00004", alice(), Via::Reaction("one".into()), None);
    assert!(
        matches!(&w.delivered[&question][..], [PermissionAnswer::Answers(a)] if a["Colour?"] == "Blue" && a["Sure?"] == "Yes")
    );
}

#[test]
fn an_invited_guest_joins_and_their_message_runs() {
    let mut w = World::new();
    let event = message("m1", &dave(), "hello");
    let effects = w.core.held(Held {
        approval: "g1".into(),
        session_id: SESSION.into(),
        owner_name: "alice".into(),
        event: event.clone(),
        text: "hello".into(),
        now_ms: w.now_ms,
    });
    let effects = w.run(effects);
    assert!(
        matches!(&effects[..], [Effect::Insert(row), Effect::Post { .. }] if row.kind == "guest" && row.expires_at_ms == 1_000_000 + HELD_FOR_MS)
    );
    assert!(!w.core.is_waiting(), "a held message blocks no turn");
    // The guest may not let themself in.
    let effects = w.answer(
        "ev1",
        "g1",
        dave(),
        Via::Button("guestinvite".into()),
        Some(0),
    );
    assert!(matches!(&effects[0], Effect::Audit(a) if a.outcome == Outcome::Refused));
    let effects = w.answer(
        "ev2",
        "g1",
        alice(),
        Via::Button("guestinvite".into()),
        Some(0),
    );
    let input: Value = serde_json::from_str(&w.rows["g1"].input).unwrap();
    let text = render::with_footer(
        &body(Kind::Guest, "", &input),
        &render::verdict(&Verdict::GuestInvited {
            by: "alice",
            guest: "dave",
        }),
    );
    assert_eq!(
        effects[2..],
        [
            Effect::Update {
                post: post(1),
                text,
                buttons: None,
            },
            Effect::Invite {
                user_id: "u3".into(),
                username: "dave".into(),
            },
            Effect::Admit {
                approval: "g1".into(),
                event,
            },
        ]
    );
}

#[test]
fn a_denied_guest_message_does_not_run() {
    let mut w = World::new();
    let effects = w.core.held(Held {
        approval: "g1".into(),
        session_id: SESSION.into(),
        owner_name: "alice".into(),
        event: message("m1", &dave(), "hello"),
        text: "hello".into(),
        now_ms: w.now_ms,
    });
    let _ = w.run(effects);
    let effects = w.answer(
        "ev1",
        "g1",
        carol(),
        Via::Button("guestdeny".into()),
        Some(0),
    );
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::Decide {
            status: "denied",
            ..
        }
    )));
    assert!(w.queued.is_empty() && w.invited.is_empty());
}

#[test]
fn stopping_the_turn_denies_what_waits_and_closes_it() {
    let mut w = World::new();
    let (request_id, _) = w.ask(0, 1);
    let effects = w
        .core
        .withdrawn(Withdrawal::Interrupted { by: "carol".into() });
    let text = render::with_footer(
        &body(Kind::Tool, "Bash", &json!({"command": "ls 1"})),
        &render::verdict(&Verdict::Stopped { by: "carol" }),
    );
    assert_eq!(
        effects,
        vec![
            Effect::Deliver {
                approval: "a00002".into(),
                request_id,
                answer: PermissionAnswer::DenyAndInterrupt {
                    message: "Stopped by carol.".into()
                },
            },
            Effect::Close {
                approval: "a00002".into(),
                status: "interrupted",
            },
            Effect::Update {
                post: post(1),
                text,
                buttons: None,
            },
        ]
    );
    assert!(!w.core.is_waiting());
}

#[test]
fn the_end_of_a_turn_withdraws_its_requests_but_not_held_messages_or_other_turns() {
    let mut w = World::new();
    let _ = w.ask(0, 1);
    // Asked by a CLI that is gone, never asked again.
    w.core = Approvals::new(THREAD, options());
    let _ = w.ask(2, 2);
    w.turn += 1;
    let _ = w.ask(0, 3);
    let effects = w.core.held(Held {
        approval: "g1".into(),
        session_id: SESSION.into(),
        owner_name: "alice".into(),
        event: message("m1", &dave(), "hi"),
        text: "hi".into(),
        now_ms: w.now_ms,
    });
    let _ = w.run(effects);
    let effects = w.end_turn();
    let closed: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Close {
                approval,
                status: "cancelled",
            } => Some(approval.as_str()),
            _ => None,
        })
        .collect();
    // Both requests of the running CLI go; a00002, asked in another turn by a CLI that is
    // gone, stays for that turn's end.
    assert_eq!(closed, vec!["a00004", "a00006"]);
    assert_eq!(w.rows["a00002"].status, "pending");
    assert_eq!(w.rows["g1"].status, "pending");
    let withdrawn = render::verdict(&Verdict::Withdrawn);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Update { text, .. } if text.ends_with(&withdrawn)))
    );
}

#[test]
fn a_cancelled_request_is_withdrawn_once() {
    let mut w = World::new();
    let (request_id, _) = w.ask(0, 1);
    let effects = w.core.withdrawn(Withdrawal::Cancelled {
        request_id: request_id.clone(),
    });
    assert!(matches!(
        &effects[..],
        [
            Effect::Close {
                status: "cancelled",
                ..
            },
            Effect::Update { buttons: None, .. }
        ]
    ));
    assert!(
        w.core
            .withdrawn(Withdrawal::Cancelled { request_id })
            .is_empty()
    );
}

#[test]
fn a_request_that_could_not_be_stored_or_shown_is_denied_so_the_cli_stops_waiting() {
    let mut w = World::new();
    let effects = w.core.asked(Asked {
        request: request("r1", 0, 1),
        stored: None,
        approval: "a1".into(),
        session_id: Some(SESSION.into()),
        event_id: w.turn_event(),
        incarnation: w.incarnation(),
        now_ms: w.now_ms,
    });
    assert!(matches!(
        &effects[..],
        [Effect::Status(_), Effect::Insert(_)]
    ));
    // The row could not be written: nothing is shown, the CLI is denied.
    let effects = w.core.recorded("a1", None);
    assert!(
        matches!(&effects[..], [Effect::Deliver { request_id, answer: crate::agent::PermissionAnswer::Deny { .. }, .. }, Effect::Status(Status::Working)] if request_id == "r1"),
        "{effects:?}"
    );
    assert!(!w.core.is_waiting());
    // Stored, but its prompt could not be posted: closed and denied.
    let effects = w.core.asked(Asked {
        request: request("r3", 0, 3),
        stored: None,
        approval: "a3".into(),
        session_id: Some(SESSION.into()),
        event_id: w.turn_event(),
        incarnation: w.incarnation(),
        now_ms: w.now_ms,
    });
    assert_eq!(effects.len(), 2);
    assert!(matches!(
        &w.core.recorded("a3", Some(post(7)))[..],
        [Effect::Post { .. }]
    ));
    assert!(w.core.is_waiting());
    let effects = w.core.unposted("a3");
    assert!(
        matches!(&effects[..], [Effect::Close { status: "failed", .. }, Effect::Deliver { request_id, .. }, Effect::Status(Status::Working)] if request_id == "r3"),
        "{effects:?}"
    );
    assert!(!w.core.is_waiting());
    // Without a live session nothing new is asked.
    let effects = w.core.asked(Asked {
        request: request("r2", 0, 2),
        stored: None,
        approval: "a2".into(),
        session_id: None,
        event_id: w.turn_event(),
        incarnation: w.incarnation(),
        now_ms: w.now_ms,
    });
    assert!(effects.is_empty());
}

// ---- Property tests over event sequences.

#[derive(Debug, Clone)]
enum Step {
    /// The CLI asks (0 tool, 1 question, 2 plan).
    Ask(u8),
    /// Someone answers row `target`: `user` 0 owner, 1 approver, 2 stranger, 3 the guest,
    /// 4 the approver after a rename, 5 a stranger who took the approver's old name.
    Answer {
        target: usize,
        user: u8,
        button: bool,
        pick: usize,
        /// 0: no step, 1: the current question, 2: another one.
        step: u8,
        /// Another answer is stored between the shell's reading of the row and its decision.
        race: bool,
    },
    Guest,
    Tick(i64),
    Cancel(usize),
    EndTurn,
    Interrupt,
    /// The worker dies; the CLI waits to be resumed.
    Restart,
    /// The resumed CLI asks its waiting requests again.
    Resume,
}

const ACTIONS: [&str; 12] = [
    "allow",
    "allowalways",
    "deny",
    "approve",
    "changes",
    "opt1",
    "opt2",
    "opt3",
    "guestonce",
    "guestinvite",
    "guestdeny",
    "bogus",
];
const EMOJIS: [&str; 8] = [
    "+1",
    "-1",
    "white_check_mark",
    "one",
    "two",
    "three",
    "heart",
    "thumbsup",
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3).prop_map(Step::Ask),
        8 => (0usize..8, 0u8..6, any::<bool>(), 0usize..12, 0u8..3).prop_map(
            |(target, user, button, pick, step)| Step::Answer { target, user, button, pick, step, race: false }
        ),
        1 => (0usize..8, 0u8..2, 0usize..12).prop_map(|(target, user, pick)| Step::Answer {
            target, user, button: true, pick, step: 0, race: true,
        }),
        1 => Just(Step::Guest),
        2 => (1i64..400_000).prop_map(Step::Tick),
        1 => (0usize..4).prop_map(Step::Cancel),
        1 => Just(Step::EndTurn),
        1 => Just(Step::Interrupt),
        1 => Just(Step::Restart),
        1 => Just(Step::Resume),
    ]
}

/// What the answer is, independently of the core: whether it should decide (or advance)
/// the approval.
fn is_valid(
    row: &ApprovalRow,
    user: &Person,
    via: &Via,
    step: Option<usize>,
    current: usize,
) -> bool {
    let Some(kind) = Kind::parse(&row.kind) else {
        return false;
    };
    let choice = match via {
        Via::Button(a) => Choice::from_action(kind, a),
        Via::Reaction(e) => Choice::from_reaction(kind, e),
    };
    let Some(choice) = choice else { return false };
    let allowed = user.id == "u0" || user.id == "u1";
    let fits = match (kind, choice) {
        (Kind::Question, Choice::Option(n)) => questions()
            .get(current)
            .is_some_and(|q| n < q.options.len()),
        (Kind::Tool, Choice::Allow | Choice::AllowAlways | Choice::Deny)
        | (Kind::Plan, Choice::Allow | Choice::Deny)
        | (Kind::Guest, Choice::GuestOnce | Choice::GuestInvite | Choice::GuestDeny) => true,
        _ => false,
    };
    allowed && fits && row.status == "pending" && step.is_none_or(|s| s == current)
}

/// An input as the shell hands it to the core, kept to hand it over again.
#[derive(Debug, Clone)]
enum Input {
    Asked(u8, usize, String),
    Answered {
        event_id: String,
        approval: String,
        user: Person,
        via: Via,
        step: Option<usize>,
    },
    Held(ChatEvent),
    Expired,
    Cancelled(String),
    TurnEnded(String),
    Interrupted,
}

/// Hands `input` to the core the way the shell does (reading the rows anew) and carries
/// out the effects.
fn handle(w: &mut World, input: &Input) -> Vec<Effect> {
    match input {
        Input::Asked(kind, n, request_id) => w.ask_as(request_id, *kind, *n),
        Input::Answered {
            event_id,
            approval,
            user,
            via,
            step,
        } => w.answer(event_id, approval, user.clone(), via.clone(), *step),
        Input::Held(event) => {
            let approval = w.id("g");
            let effects = w.core.held(Held {
                approval,
                session_id: SESSION.into(),
                owner_name: "alice".into(),
                event: event.clone(),
                text: "hello".into(),
                now_ms: w.now_ms,
            });
            w.run(effects)
        }
        Input::Expired => w.expire(),
        Input::Cancelled(request_id) => {
            let effects = w.core.withdrawn(Withdrawal::Cancelled {
                request_id: request_id.clone(),
            });
            w.run(effects)
        }
        Input::TurnEnded(event_id) => {
            let open: Vec<ApprovalRow> = w
                .rows
                .values()
                .filter(|r| r.status == "pending")
                .cloned()
                .collect();
            let effects = w.core.withdrawn(Withdrawal::TurnEnded {
                event_id: Some(event_id.clone()),
                open,
            });
            w.run(effects)
        }
        Input::Interrupted => {
            let effects = w
                .core
                .withdrawn(Withdrawal::Interrupted { by: "alice".into() });
            w.run(effects)
        }
    }
}

/// Applies one step, checking what only this step can tell; returns its input, if any.
fn apply(w: &mut World, s: &Step, n: usize) -> Result<Option<Input>, TestCaseError> {
    Ok(match s {
        Step::Ask(kind) => {
            let request_id = w.id("r");
            w.cli.insert(request_id.clone(), (*kind, n));
            let input = Input::Asked(*kind, n, request_id.clone());
            let _ = handle(w, &input);
            Some(input)
        }
        Step::Answer {
            target,
            user,
            button,
            pick,
            step,
            race,
        } => {
            let ids: Vec<String> = w.rows.keys().cloned().collect();
            if ids.is_empty() {
                return Ok(None);
            }
            let approval = ids[target % ids.len()].clone();
            let user = match user {
                0 => alice(),
                1 => carol(),
                2 => bob(),
                3 => dave(),
                4 => Person {
                    name: "carol2".into(),
                    ..carol()
                },
                _ => Person {
                    id: "u9".into(),
                    name: "carol".into(),
                },
            };
            let via = if *button {
                Via::Button(ACTIONS[pick % ACTIONS.len()].into())
            } else {
                Via::Reaction(EMOJIS[pick % EMOJIS.len()].into())
            };
            let current = w.current_step(&approval);
            let step = match (button, step) {
                (false, _) => Some(current),
                (true, 0) => None,
                (true, 1) => Some(current),
                (true, _) => Some(current + 1),
            };
            let before = w.rows[&approval].clone();
            let bound = w.core.prompts().any(|(id, _, _)| id == approval);
            let valid = is_valid(&before, &user, &via, step, current);
            let answered_via = via.clone();
            let input = Input::Answered {
                event_id: format!("ev{n}"),
                approval: approval.clone(),
                user: user.clone(),
                via,
                step,
            };
            if *race && before.status == "pending" {
                let delivered = w.delivered.len();
                let effects = w.core.answered(Answer {
                    event_id: format!("ev{n}"),
                    user: user.clone(),
                    via: answered_via,
                    step,
                    row: before.clone(),
                    owner: alice(),
                });
                let row = w.rows.get_mut(&approval).unwrap();
                row.status = "allowed".into();
                row.answer = Some(Decision::Allow.to_json());
                row.decided_by_name = Some("carol".into());
                w.decided_by.insert(approval.clone(), "u1".into());
                let _ = w.run(effects);
                // The answer stored first wins; the one that lost the race does nothing.
                prop_assert_eq!(w.decided_by.get(&approval), Some(&"u1".to_owned()));
                prop_assert_eq!(w.delivered.len(), delivered);
                return Ok(Some(input));
            }
            let _ = handle(w, &input);
            let after = w.rows[&approval].clone();
            let questions_left = before.kind == "question" && current + 1 < questions().len();
            if !valid {
                prop_assert_eq!(
                    &after.status,
                    &before.status,
                    "an invalid answer changed the row"
                );
                prop_assert_eq!(&after.progress, &before.progress);
            } else if questions_left {
                prop_assert_eq!(progress(&after).len(), current + 1);
                prop_assert_eq!(w.current_step(&approval), current + 1);
            } else {
                // The first valid answer wins.
                prop_assert_ne!(&after.status, "pending");
                prop_assert_eq!(w.decided_by.get(&approval), Some(&user.id));
                if bound {
                    let stored = Decision::from_json(after.answer.as_deref().unwrap()).unwrap();
                    prop_assert_eq!(
                        w.delivered.get(&before.request_id),
                        Some(&vec![stored.to_answer()])
                    );
                }
            }
            Some(input)
        }
        Step::Guest => {
            let input = Input::Held(message(&format!("m{n}"), &dave(), "hello"));
            let _ = handle(w, &input);
            Some(input)
        }
        Step::Tick(ms) => {
            w.now_ms += ms;
            let _ = handle(w, &Input::Expired);
            // Nothing outlives its deadline.
            prop_assert!(w.core.next_deadline().is_none_or(|at| at > w.now_ms));
            for (approval, _, _) in w.core.prompts() {
                prop_assert!(w.rows[approval].expires_at_ms > w.now_ms);
            }
            for request_id in w.cli.keys() {
                let row = w.rows.values().find(|r| &r.request_id == request_id);
                prop_assert!(
                    row.is_none_or(|r| r.expires_at_ms > w.now_ms),
                    "{request_id} waits past its deadline"
                );
            }
            Some(Input::Expired)
        }
        Step::Cancel(i) => {
            let ids: Vec<String> = w.cli.keys().cloned().collect();
            if ids.is_empty() {
                return Ok(None);
            }
            let request_id = ids[i % ids.len()].clone();
            w.cli.remove(&request_id);
            let input = Input::Cancelled(request_id);
            let _ = handle(w, &input);
            Some(input)
        }
        Step::EndTurn => {
            let input = Input::TurnEnded(w.turn_event());
            let _ = handle(w, &input);
            w.cli.clear();
            w.turn += 1;
            Some(input)
        }
        Step::Interrupt => {
            let _ = handle(w, &Input::Interrupted);
            Some(Input::Interrupted)
        }
        Step::Restart => {
            w.core = Approvals::new(THREAD, options());
            w.incarnation += 1;
            w.asleep.append(&mut w.cli);
            None
        }
        Step::Resume => {
            for (_, (kind, n)) in std::mem::take(&mut w.asleep) {
                let request_id = w.id("r");
                let stored = w.reasked(&request(&request_id, kind, n));
                w.cli.insert(request_id.clone(), (kind, n));
                let _ = w.ask_as(&request_id, kind, n);
                // A re-asked request gets its stored decision, or waits on its old post.
                match stored {
                    Some(row) if row.status == "pending" => {
                        prop_assert!(w.core.prompts().any(|(id, _, _)| id == row.approval_id));
                        prop_assert!(!w.delivered.contains_key(&request_id));
                    }
                    Some(row) => {
                        let stored = Decision::from_json(row.answer.as_deref().unwrap()).unwrap();
                        prop_assert_eq!(
                            w.delivered.get(&request_id),
                            Some(&vec![stored.to_answer()])
                        );
                    }
                    None => {}
                }
            }
            None
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn answers_decide_once_by_who_may_and_nothing_outlives_its_deadline(
        steps in proptest::collection::vec((step(), any::<bool>()), 1..80),
    ) {
        let mut w = World::new();
        for (n, (s, twice)) in steps.iter().enumerate() {
            let input = apply(&mut w, s, n)?;
            if *twice && let Some(input) = input {
                // A redelivery: the same input again has no further effect.
                let again = handle(&mut w, &input);
                prop_assert!(again.is_empty(), "{input:?} applied twice had effects again: {again:?}");
            }
            // Whoever may not answer never decides.
            for by in w.decided_by.values() {
                prop_assert!(by == "u0" || by == "u1" || by == "ccfleet");
            }
            // A request is answered at most once.
            for got in w.delivered.values() {
                prop_assert_eq!(got.len(), 1);
            }
        }
        prop_assert!(w
            .audits
            .iter()
            .filter(|a| a.user_id == "u2" || a.user_id == "u3")
            .all(|a| a.outcome == Outcome::Refused));
    }
}

#[test]
fn a_held_message_that_could_not_be_stored_is_held_again_on_its_redelivery() {
    let mut w = World::new();
    let event = message("m1", &dave(), "hello");
    let held = || Held {
        approval: "g1".into(),
        session_id: SESSION.into(),
        owner_name: "alice".into(),
        event: event.clone(),
        text: "hello".into(),
        now_ms: 1_000_000,
    };
    assert!(matches!(&w.core.held(held())[..], [Effect::Insert(_)]));
    assert!(w.core.recorded("g1", None).is_empty());
    assert!(
        matches!(&w.core.held(held())[..], [Effect::Insert(_)]),
        "the event is not taken as handled"
    );
}
