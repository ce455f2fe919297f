//! What the thread shows, as Mattermost markdown: the session header, the streaming
//! answer with compact tool lines, the per-turn footer, the artifact block, notices and
//! errors in plain words. Pure functions; snapshot-tested.

use serde_json::{Value, json};

use crate::agent::{Question, TodoItem, TurnResult};

/// The session header's facts.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    pub started_by: &'a str,
    pub participants: &'a [String],
    pub permission_mode: &'a str,
    pub worker: &'a str,
    pub status: Status,
    /// The repository the session works on, and its branch.
    pub repo: Option<(&'a str, &'a str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Starting,
    Working,
    WaitingForApproval,
    Idle,
    Stopped,
    Queued(u64),
}

impl Status {
    fn text(self) -> String {
        match self {
            Status::Starting => ":hourglass_flowing_sand: starting".into(),
            Status::Working => ":large_green_circle: working".into(),
            Status::WaitingForApproval => ":raised_hand: waiting for approval".into(),
            Status::Idle => ":zzz: idle — reply in this thread to continue".into(),
            Status::Stopped => {
                ":black_square_for_stop: stopped — reply in this thread to resume".into()
            }
            Status::Queued(n) => format!(":hourglass: queued (position {n})"),
        }
    }
}

pub fn header(h: &Header<'_>) -> String {
    let participants = if h.participants.is_empty() {
        format!("@{}", h.started_by)
    } else {
        h.participants
            .iter()
            .map(|p| format!("@{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let repo = h.repo.map_or_else(String::new, |(name, branch)| {
        format!("| Repository | `{name}` on branch `{branch}` |\n")
    });
    format!(
        "#### :robot_face: Claude Code session\n\
         | | |\n|---|---|\n\
         | Started by | @{} |\n\
         | Participants | {} |\n\
         {repo}\
         | Permission mode | `{}` |\n\
         | Worker | `{}` |\n\
         | Status | {} |",
        h.started_by,
        participants,
        h.permission_mode,
        h.worker,
        h.status.text()
    )
}

/// The session starts from a repository: what was checked out.
pub fn repo_started(repo: &str, branch: &str, from: &str, files: usize) -> String {
    format!(
        ":package: Started from `{repo}`: branch `{branch}` (from `{from}`), {files} file{} in the workspace. After a turn that changes files, **Push** commits them to the branch and opens a review.",
        if files == 1 { "" } else { "s" }
    )
}

/// The session's repository could not be checked out (the turn still runs, in an empty
/// workspace, unless the words say otherwise).
pub fn repo_unusable(words: &str) -> String {
    format!(":warning: {words}")
}

/// A turn changed a repository session's files: offer to push them.
pub fn push_body(repo: &str, branch: &str, files: &[String], title: &str, confirm: bool) -> String {
    const SHOWN: usize = 10;
    let mut list: Vec<String> = files.iter().take(SHOWN).map(|f| format!("`{f}`")).collect();
    if files.len() > SHOWN {
        list.push(format!("and {} more", files.len() - SHOWN));
    }
    let what = if confirm {
        "Push the files held back as possible secrets too".to_owned()
    } else {
        "Push the changes".to_owned()
    };
    format!(
        "#### :arrow_up: {what} to `{repo}`?\nBranch `{branch}`; changed: {}.\nCommit message: **{title}** (to change it before pushing, reply `commit message: …`)",
        if list.is_empty() {
            "nothing listed".to_owned()
        } else {
            list.join(", ")
        }
    )
}

pub const PUSH_HINT: &str =
    "Push with the button (owner or approvers), or react :+1: push · :-1: not now.";

pub fn push_buttons() -> Vec<Button> {
    vec![
        Button::new("push", "Push", "primary"),
        Button::new("pushskip", "Not now", "default"),
    ]
}

/// A push failed, in plain words.
pub fn push_failed(words: &str) -> String {
    format!(":x: **Not pushed.** {words}")
}

fn str_field<'a>(input: &'a Value, key: &str) -> &'a str {
    input.get(key).and_then(Value::as_str).unwrap_or("")
}

fn fence(text: &str) -> String {
    // A fence longer than any backtick run inside keeps the block closed.
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

fn preview(text: &str, lines: usize) -> (String, usize) {
    let total = text.lines().count();
    let shown: Vec<&str> = text.lines().take(lines).collect();
    (shown.join("\n"), total.saturating_sub(lines))
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// A compact line (or small block) for one tool call.
pub fn tool_use(name: &str, input: &Value) -> String {
    match name {
        "Bash" => {
            let command = str_field(input, "command");
            let f = fence(command);
            format!(
                ":computer: **Bash**\n{f}bash\n$ {}\n{f}",
                truncate(command, 2000)
            )
        }
        "Read" => format!(":book: **Read** `{}`", str_field(input, "file_path")),
        "Write" => {
            let path = str_field(input, "file_path");
            let content = str_field(input, "content");
            let (shown, more) = preview(content, 10);
            let f = fence(&shown);
            let more = if more > 0 {
                format!("\n_… {more} more lines_")
            } else {
                String::new()
            };
            format!(
                ":memo: **Write** `{path}` ({} lines)\n{f}\n{shown}\n{f}{more}",
                content.lines().count()
            )
        }
        "Edit" | "MultiEdit" => {
            let path = str_field(input, "file_path");
            let mut diff = String::new();
            let edits: Vec<(&str, &str)> = match input.get("edits").and_then(Value::as_array) {
                Some(edits) => edits
                    .iter()
                    .map(|e| (str_field(e, "old_string"), str_field(e, "new_string")))
                    .collect(),
                None => vec![(
                    str_field(input, "old_string"),
                    str_field(input, "new_string"),
                )],
            };
            for (old, new) in edits {
                for line in old.lines() {
                    diff.push_str(&format!("-{line}\n"));
                }
                for line in new.lines() {
                    diff.push_str(&format!("+{line}\n"));
                }
            }
            let (shown, more) = preview(diff.trim_end(), 30);
            let f = fence(&shown);
            let more = if more > 0 {
                format!("\n_… {more} more lines_")
            } else {
                String::new()
            };
            format!(":pencil2: **Edit** `{path}`\n{f}diff\n{shown}\n{f}{more}")
        }
        "Glob" | "Grep" => format!(":mag: **{name}** `{}`", str_field(input, "pattern")),
        "WebFetch" => format!(
            ":globe_with_meridians: **WebFetch** {}",
            str_field(input, "url")
        ),
        "WebSearch" => format!(
            ":globe_with_meridians: **WebSearch** {}",
            str_field(input, "query")
        ),
        "TodoWrite" | "AskUserQuestion" | "ExitPlanMode" => String::new(),
        mcp if mcp.starts_with("mcp__") => {
            let mut parts = mcp.splitn(3, "__").skip(1);
            let server = parts.next().unwrap_or("");
            let tool = parts.next().unwrap_or("");
            format!(":electric_plug: **MCP** `{tool}` on `{server}`")
        }
        other => format!(":wrench: **{other}**"),
    }
}

/// The line under a failed tool call.
pub fn tool_error(content: &str) -> String {
    format!(
        "> :warning: {}",
        truncate(content.lines().next().unwrap_or(""), 300)
    )
}

/// The per-turn footer.
pub fn footer(result: &TurnResult) -> String {
    let usage = &result.usage;
    let tokens_in =
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens;
    format!(
        "_:stopwatch: {:.1} s · {} in / {} out tokens · ${:.4}_",
        result.duration_ms as f64 / 1000.0,
        thousands(tokens_in),
        thousands(usage.output_tokens),
        result.cost_usd
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One file in the artifact block.
#[derive(Debug, Clone)]
pub struct ArtifactLink {
    pub path: String,
    pub url: String,
    pub size: u64,
}

/// The block of links to the files a turn created or changed.
pub fn artifacts(files: &[ArtifactLink], browse_url: &str, zip_url: &str) -> String {
    let mut out = String::from("#### :paperclip: Files from this turn\n");
    for file in files {
        let page = if file.path.ends_with(".html") || file.path.ends_with(".htm") {
            format!(" · [open page]({})", file.url)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "- [`{}`]({}) ({}){page}\n",
            file.path,
            file.url,
            size(file.size)
        ));
    }
    out.push_str(&format!(
        "\n[Browse all files]({browse_url}) · [Download zip]({zip_url})"
    ));
    out
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{:.1} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

/// Files of the turn too large to upload (`worker.max_artifact_bytes`): (path, size).
pub fn artifacts_not_uploaded(files: &[(String, u64)], limit: u64) -> String {
    let mut out = format!(
        "Not uploaded, larger than the {} a file may have:\n",
        size(limit)
    );
    for (path, bytes) in files {
        out.push_str(&format!("- `{path}` ({})\n", size(*bytes)));
    }
    out
}

/// The session's files exceed `worker.max_workspace_bytes`: turn `turn` is not saved.
/// `saved` is the turn whose checkpoint a takeover would continue from.
pub fn workspace_over_limit(turn: i32, bytes: u64, limit: u64, saved: Option<i32>) -> String {
    let fallback = match saved {
        Some(saved) => {
            format!("from the checkpoint of turn {saved}, without the changes made since")
        }
        None => "from an empty workspace".to_owned(),
    };
    format!(
        ":warning: This session's files take {}, over this session's {} limit, so turn {turn} \
         was not saved. The session goes on on this worker; if it stops or moves to another \
         worker, it continues {fallback}. Delete files you no longer need (ask Claude to) and \
         the next turn is saved again.",
        size(bytes),
        size(limit)
    )
}

/// A message whose turn was cut off `cut` times (its worker stopped each time) is not
/// run again.
pub fn cut_turn_given_up(cut: i32) -> String {
    format!(
        ":x: This message was not run: each of the {cut} attempts at it was cut off when its \
         worker stopped (it may be what stopped them, e.g. by using too much memory). Nothing \
         of those attempts was saved. Send a smaller request, or ask for it in steps."
    )
}

/// The live task list.
pub fn todo_list(items: &[TodoItem]) -> String {
    let mut out = String::from("#### :clipboard: Task list\n");
    for item in items {
        let mark = match item.status.as_str() {
            "completed" => ":white_check_mark:",
            "in_progress" => ":arrows_counterclockwise:",
            _ => ":white_large_square:",
        };
        let text = if item.status == "in_progress" && !item.active_form.is_empty() {
            &item.active_form
        } else {
            &item.content
        };
        out.push_str(&format!("{mark} {text}\n"));
    }
    out.trim_end().to_owned()
}

/// Errors in plain words.
pub fn agent_error(kind: &str, status: Option<u16>, message: &str) -> String {
    let plain = match (kind, status) {
        (_, Some(429)) | (_, Some(529)) | ("rate_limit", _) | ("overloaded", _) => {
            "The model API is overloaded or rate-limited right now. Try again in a minute."
                .to_owned()
        }
        ("authentication_failed", _) | (_, Some(401)) | (_, Some(403)) => {
            "The model API refused the fleet's credentials. An operator needs to check the API key."
                .to_owned()
        }
        (_, Some(status)) if status >= 500 => {
            format!(
                "The model API had an internal error ({status}). Try again; if it persists, tell an operator."
            )
        }
        (_, Some(status)) => format!(
            "The model API rejected the request ({status}): {}",
            truncate(message, 300)
        ),
        _ => format!(
            "Claude Code stopped with an error: {}",
            truncate(message, 300)
        ),
    };
    format!(":warning: {plain}")
}

/// The line a turn's answer shows while the CLI waits to retry a failed model API call
/// (`system/api_retry`): which error, which retry of how many, and when.
pub fn api_retry(
    status: Option<u16>,
    error: &str,
    attempt: u32,
    max_retries: u32,
    delay_ms: u64,
) -> String {
    let what = match (error, status) {
        ("overloaded", _) | (_, Some(529)) => "is overloaded".to_owned(),
        ("rate_limit", _) | (_, Some(429)) => "is rate-limiting the fleet".to_owned(),
        ("authentication_failed", _) | (_, Some(401)) | (_, Some(403)) => {
            "refused the fleet's credentials".to_owned()
        }
        (_, Some(status)) if status >= 500 => "had an internal error".to_owned(),
        ("", _) => "failed".to_owned(),
        (error, _) => format!("failed ({})", truncate(error, 80)),
    };
    let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
    let delay = if delay_ms < 10_000 {
        format!("{:.1} s", delay_ms as f64 / 1000.0)
    } else {
        format!("{} s", delay_ms.div_ceil(1000))
    };
    format!(
        ":hourglass: The model API {what}{status}; retry {attempt} of {max_retries} in {delay}…"
    )
}

/// Said after a turn's answer when the model API answered only after `retries` retries.
pub fn api_retried(retries: u32) -> String {
    let plural = if retries == 1 { "retry" } else { "retries" };
    format!("_(after {retries} {plural} of the model API)_")
}

/// Added to the error that ended a turn when the model API call had been retried.
pub fn api_gave_up(retries: u32) -> String {
    let times = if retries == 1 {
        "once".to_owned()
    } else {
        format!("{retries} times")
    };
    format!("It was retried {times} before the turn gave up.")
}

pub fn queued(position: u64) -> String {
    format!(
        ":hourglass: All workers are busy. You are number **{position}** in the queue; this thread starts as soon as a slot frees up."
    )
}

pub fn takeover(previous: &str, now: &str) -> String {
    format!(
        ":arrows_counterclockwise: Worker `{previous}` stopped unexpectedly. This session continues on worker `{now}` from its last checkpoint."
    )
}

/// Told to whoever answers a prompt that has no stored request.
pub fn unknown_request() -> String {
    ":grey_question: This request is not known any more, so nothing was decided. If Claude still needs an answer, it asks again.".to_owned()
}

/// What the CLI is told when its request could not be shown in the thread.
pub fn request_not_shown() -> String {
    "This request could not be recorded or shown in the thread, so nobody could answer it; it was denied. Try again in a moment.".to_owned()
}

/// A turn's checkpoint could not be stored: what a takeover would lose.
pub fn checkpoint_not_saved(turn: i32, saved: Option<i32>, reason: &str) -> String {
    let fallback = match saved {
        Some(saved) => {
            format!("from the checkpoint of turn {saved}, without the changes made since")
        }
        None => "from an empty workspace".to_owned(),
    };
    format!(
        ":warning: The files and conversation of turn {turn} could not be saved ({reason}). \
         The session goes on on this worker, which tries again before it lets the session go; \
         if this worker stops first, the session continues {fallback}."
    )
}

pub fn unsaved_saved(turn: i32) -> String {
    format!(":white_check_mark: The changes of turn {turn} are saved now.")
}

/// The unsaved turn could still not be stored when the session had to stop.
pub fn unsaved_lost(turn: i32, reason: &str) -> String {
    format!(
        ":warning: This session stopped before the changes of turn {turn} could be saved ({reason}). \
         They are lost: the next message continues from the last saved checkpoint."
    )
}

pub fn turn_timed_out(limit_s: u64) -> String {
    format!(
        ":hourglass: Stopped: this turn ran longer than {} (the fleet's limit per turn). The session is kept: reply in this thread to continue.",
        duration_words(limit_s)
    )
}

pub fn turn_stalled(limit_s: u64) -> String {
    format!(
        ":hourglass: Stopped: Claude Code showed nothing for {} and looked stuck. The session is kept: reply in this thread to continue.",
        duration_words(limit_s)
    )
}

fn duration_words(seconds: u64) -> String {
    match seconds {
        s if s % 3600 == 0 && s >= 3600 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// A checkpoint that could not be restored when the session started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostCheckpoint {
    pub turn: i32,
    pub reason: String,
}

/// Checkpoints (latest first) that could not be restored: the session continued from the
/// checkpoint of turn `restored`, or (`None`) started over without one.
pub fn checkpoints_lost(lost: &[LostCheckpoint], restored: Option<i32>) -> String {
    let mut text = String::from(":warning: ");
    match lost {
        [one] => text.push_str(&format!(
            "The checkpoint of turn {} could not be restored ({}). ",
            one.turn,
            truncate(&one.reason, 300)
        )),
        _ => {
            text.push_str("These checkpoints could not be restored:\n");
            for one in lost {
                text.push_str(&format!(
                    "- turn {}: {}\n",
                    one.turn,
                    truncate(&one.reason, 300)
                ));
            }
            text.push('\n');
        }
    }
    match restored {
        Some(turn) => text.push_str(&format!(
            "This session continued from the checkpoint of turn {turn}: what later turns changed in the workspace, and Claude's memory of them, is lost."
        )),
        None => text.push_str(
            "No earlier checkpoint could be restored either, so this session starts over: an empty workspace, and Claude does not remember the conversation so far.",
        ),
    }
    text
}

pub fn retrying_cut_turn() -> String {
    ":repeat: The previous attempt at this message was cut off when its worker stopped; running it again.".to_owned()
}

pub fn interrupted(by: &str) -> String {
    format!(
        ":octagonal_sign: Stopped by @{by}. The session is kept: reply in this thread to continue."
    )
}

/// The thread's messages could not be read (its consumer could not be opened); a retry
/// follows.
pub fn unreadable(retry_s: u64) -> String {
    format!(
        ":warning: Claude could not pick up this thread just now (the message queue refused it). Trying again in {retry_s} seconds; nothing you wrote is lost."
    )
}

/// An event the session could not handle: after every retry (`gave_up`), or at once.
pub fn event_failed(reason: &str, gave_up: bool) -> String {
    if gave_up {
        format!(
            ":warning: Claude could not handle this after several tries ({reason}). Please send it again in a moment."
        )
    } else {
        format!(":warning: Claude could not handle this ({reason}).")
    }
}

pub fn evicted() -> String {
    ":zzz: This session was put to sleep to make room for a queued thread. Reply in this thread to wake it up where it left off.".to_owned()
}

/// An operator stopped the session through the admin API.
pub fn admin_stopped(by: &str, turn: bool, dropped: usize) -> String {
    let what = if turn {
        "its turn was ended and its container stopped"
    } else {
        "its container was stopped"
    };
    let dropped = match dropped {
        0 => String::new(),
        1 => " One message waiting for its turn was dropped.".to_owned(),
        n => format!(" {n} messages waiting for their turn were dropped."),
    };
    format!(
        ":octagonal_sign: An administrator (`{by}`) stopped this session: {what}.{dropped} The session is kept: reply in this thread to continue where it left off."
    )
}

/// What an answer post shows when an operator stopped its turn.
pub fn admin_interrupted(by: &str) -> String {
    format!(":octagonal_sign: Stopped by an administrator (`{by}`).")
}

pub fn idle_stopped(minutes: u64) -> String {
    format!(
        ":zzz: This session was idle for {minutes} minutes and has been put to sleep. Reply in this thread to wake it up where it left off."
    )
}

/// A button under a post (a Mattermost attachment action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Button {
    /// The action id; the signed context repeats it.
    pub id: String,
    pub name: String,
    /// `primary`, `danger`, `good` or `default`.
    pub style: &'static str,
}

impl Button {
    pub fn new(id: impl Into<String>, name: impl Into<String>, style: &'static str) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            style,
        }
    }
}

/// Post props with `buttons`, each POSTing to `url` with its signed `token` as context.
pub fn button_props(buttons: &[(Button, String)], url: &str, fallback: &str) -> Value {
    let actions: Vec<Value> = buttons
        .iter()
        .map(|(b, token)| {
            json!({
                "id": b.id,
                "name": b.name,
                "type": "button",
                "style": b.style,
                "integration": {"url": url, "context": {"token": token}},
            })
        })
        .collect();
    json!({"attachments": [{"fallback": fallback, "actions": actions}]})
}

/// Props that remove every button (an update replaces the post's props).
pub fn no_buttons() -> Value {
    json!({})
}

/// The description of a tool-use request, above its buttons or verdict.
pub fn permission_body(tool_name: &str, input: &Value) -> String {
    let line = tool_use(tool_name, input);
    let line = if line.is_empty() {
        format!("**{tool_name}**")
    } else {
        line
    };
    format!(
        "#### :closed_lock_with_key: Permission needed\nClaude wants to use **{tool_name}**:\n{line}"
    )
}

pub const PERMISSION_HINT: &str = "Click a button, or react with :+1: to allow once, :white_check_mark: to allow for the rest of this session, or :-1: to deny.";

/// The buttons of a tool-use request.
pub fn permission_buttons() -> Vec<Button> {
    vec![
        Button::new("allow", "Allow", "primary"),
        Button::new("allowalways", "Allow all for this session", "good"),
        Button::new("deny", "Deny", "danger"),
    ]
}

const NUMBERS: [&str; 4] = ["one", "two", "three", "four"];

/// One question of an AskUserQuestion request (`index` of `total`).
pub fn question_body(question: &Question, index: usize, total: usize) -> String {
    let mut text = String::from("#### :question: Claude asks");
    if total > 1 {
        text.push_str(&format!(" ({} of {total})", index + 1));
    }
    text.push('\n');
    text.push_str(&format!("**{}**\n", question.question));
    for (i, option) in question.options.iter().take(4).enumerate() {
        text.push_str(&format!(":{}: **{}**", NUMBERS[i], option.label));
        if !option.description.is_empty() {
            text.push_str(&format!(" — {}", option.description));
        }
        text.push('\n');
    }
    text.trim_end().to_owned()
}

pub const QUESTION_HINT: &str = "Click your answer, or react with its number.";

/// The buttons of a question: one per option (at most four).
pub fn question_buttons(question: &Question) -> Vec<Button> {
    question
        .options
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, o)| Button::new(format!("opt{}", i + 1), o.label.clone(), "default"))
        .collect()
}

pub fn plan_body(plan: &str) -> String {
    format!("#### :clipboard: Plan for approval\n{}", plan.trim_end())
}

pub const PLAN_HINT: &str =
    "Click a button, or react with :+1: to approve and start, or :-1: to ask for changes.";

pub fn plan_buttons() -> Vec<Button> {
    vec![
        Button::new("approve", "Approve", "primary"),
        Button::new("changes", "Request changes", "default"),
    ]
}

/// A message from someone outside the session, held for the owner.
pub fn guest_body(owner: &str, guest: &str, text: &str) -> String {
    format!(
        "#### :wave: @{guest} is not in this session\n@{owner}, should Claude act on this message?\n> {}",
        truncate(&text.replace('\n', " "), 500)
    )
}

pub fn guest_buttons() -> Vec<Button> {
    vec![
        Button::new("guestonce", "Allow once", "primary"),
        Button::new("guestinvite", "Invite to session", "good"),
        Button::new("guestdeny", "Deny", "danger"),
    ]
}

/// Claude's request to a host its session may not reach.
pub fn domain_body(host: &str, port: u16) -> String {
    let shown = if matches!(port, 80 | 443) {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    format!(
        "#### :globe_with_meridians: Claude wants to reach `{shown}`
It is not on this session's allow-list, so the request was refused. Allowed, Claude's next try gets through."
    )
}

pub const DOMAIN_HINT: &str = "Answer with the buttons, or react :+1: allow once · :white_check_mark: allow for this session · :-1: deny.";

pub fn domain_buttons() -> Vec<Button> {
    vec![
        Button::new("domainonce", "Allow once", "primary"),
        Button::new("domainsession", "Allow for this session", "good"),
        Button::new("domaindeny", "Deny", "danger"),
    ]
}

/// Every model credential is rate-limited: the session's model requests wait until about
/// `resume_at_ms` (Unix milliseconds; `now_ms` is now).
pub fn credentials_cooling(resume_at_ms: u64, now_ms: u64) -> String {
    let in_s = resume_at_ms.saturating_sub(now_ms).div_ceil(1000);
    let at_s = resume_at_ms.div_ceil(1000) % 86_400;
    format!(
        ":hourglass: Every model credential is rate-limited right now. Claude continues by itself in about **{}** (around {:02}:{:02} UTC); nothing is lost meanwhile.",
        seconds(in_s),
        at_s / 3600,
        at_s % 3600 / 60
    )
}

fn seconds(s: u64) -> String {
    match s {
        0..=1 => "a second".to_owned(),
        2..=119 => format!("{s} s"),
        _ => format!("{} min", s.div_ceil(60)),
    }
}

/// A budget is used up: the session's model requests wait.
pub fn budget_body(what: &str, spent: f64, limit: f64) -> String {
    format!(
        "#### :money_with_wings: {} is used up\n{} spent of {}. Claude's model requests are held until the session's owner or an approver answers: nothing is lost meanwhile.",
        capitalize(what),
        dollars(spent),
        dollars(limit)
    )
}

/// Dollars with cents, or with more digits for amounts under a cent.
pub fn dollars(amount: f64) -> String {
    if amount == 0.0 || amount >= 0.01 {
        format!("${amount:.2}")
    } else {
        format!("${amount:.6}")
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub const BUDGET_HINT: &str =
    "Answer with the buttons, or react :+1: continue · :-1: stop this turn.";

pub fn budget_buttons(top_up: f64) -> Vec<Button> {
    vec![
        Button::new(
            "budgetcontinue",
            format!("Continue (+{})", dollars(top_up)),
            "primary",
        ),
        Button::new("budgetstop", "Stop", "danger"),
    ]
}

/// A request or question, with its instructions (while it waits) or its verdict.
pub fn with_footer(body: &str, footer: &str) -> String {
    format!("{body}\n\n{footer}")
}

/// What became of a request, under its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    Allowed { by: &'a str },
    AllowedForSession { by: &'a str },
    Denied { by: &'a str },
    Answered { by: &'a str, answers: &'a [String] },
    PlanApproved { by: &'a str },
    ChangesRequested { by: &'a str },
    TimedOut { minutes: u64 },
    Stopped { by: &'a str },
    Withdrawn,
    GuestAllowed { by: &'a str },
    GuestInvited { by: &'a str, guest: &'a str },
    GuestDenied { by: &'a str },
    DomainOnce { by: &'a str },
    DomainSession { by: &'a str },
    DomainDenied { by: &'a str },
    BudgetContinued { by: &'a str, top_up: &'a str },
    BudgetStopped { by: &'a str },
    Pushing { by: &'a str },
    PushDeclined { by: &'a str },
}

pub fn verdict(v: &Verdict<'_>) -> String {
    match v {
        Verdict::Allowed { by } => format!(":white_check_mark: **Allowed** by @{by}"),
        Verdict::AllowedForSession { by } => {
            format!(":white_check_mark: **Allowed for this session** by @{by}")
        }
        Verdict::Denied { by } => format!(":no_entry: **Denied** by @{by}"),
        Verdict::Answered { by, answers } => format!(
            ":speech_balloon: @{by} answered **{}**",
            answers.join("**, **")
        ),
        Verdict::PlanApproved { by } => {
            format!(":white_check_mark: **Plan approved** by @{by}; Claude is implementing it.")
        }
        Verdict::ChangesRequested { by } => {
            format!(":pencil: @{by} **asked for changes** to the plan.")
        }
        Verdict::TimedOut { minutes } => format!(
            ":hourglass: **Denied automatically**: nobody answered within {minutes} minute{}.",
            if *minutes == 1 { "" } else { "s" }
        ),
        Verdict::Stopped { by } => format!(":octagonal_sign: **Stopped** by @{by}"),
        Verdict::Withdrawn => ":heavy_minus_sign: No longer needed.".to_owned(),
        Verdict::GuestAllowed { by } => format!(":white_check_mark: **Allowed once** by @{by}"),
        Verdict::GuestInvited { by, guest } => {
            format!(":handshake: @{by} **invited** @{guest} to the session")
        }
        Verdict::GuestDenied { by } => format!(":no_entry: **Not run**: declined by @{by}"),
        Verdict::DomainOnce { by } => {
            format!(
                ":white_check_mark: **Allowed once** by @{by}: Claude's next request to it gets through."
            )
        }
        Verdict::DomainSession { by } => {
            format!(":white_check_mark: **Allowed for this session** by @{by}")
        }
        Verdict::DomainDenied { by } => {
            format!(":no_entry: **Denied** by @{by}: requests to it stay refused.")
        }
        Verdict::BudgetContinued { by, top_up } => {
            format!(":arrow_forward: **Continued** by @{by} with a top-up of {top_up}")
        }
        Verdict::BudgetStopped { by } => {
            format!(":octagonal_sign: **Stopped** by @{by}: the turn ends here.")
        }
        Verdict::Pushing { by } => format!(":arrow_up: **Push** asked by @{by}"),
        Verdict::PushDeclined { by } => {
            format!(":heavy_minus_sign: **Not pushed** (@{by}); a later change offers it again.")
        }
    }
}

/// Told to someone who may not answer a request (ephemeral).
pub fn not_an_approver(owner: &str) -> String {
    format!(
        ":lock: Only @{owner} (who started this session) or a configured approver can answer this."
    )
}

pub fn already_answered(by: Option<&str>) -> String {
    match by {
        Some(by) => format!(":information_source: This was already answered by @{by}."),
        None => ":information_source: This was already answered.".to_owned(),
    }
}

/// Shown under a request asked again after the session moved to another worker.
pub fn reasked_note() -> String {
    "_:arrows_counterclockwise: Asked again after the session moved to another worker; still waiting for an answer._".to_owned()
}

pub fn not_allowed_user(user: &str) -> String {
    format!(
        ":wave: Sorry @{user}, you are not on the list of people who can use Claude here. Ask an administrator if you need access."
    )
}

pub fn not_allowed_channel() -> String {
    ":wave: Sorry, Claude is not enabled in this channel. Ask an administrator if you need it here."
        .to_owned()
}

pub fn too_many_sessions(user: &str, max: usize) -> String {
    format!(
        ":no_entry_sign: @{user}, you already have {max} live Claude session{} (the limit per person). Stop one with `/claude stop` in its thread, or wait until one goes idle, then try again.",
        if max == 1 { "" } else { "s" }
    )
}

pub fn invited(by: &str, user: &str) -> String {
    format!(":handshake: @{by} invited @{user} to this session.")
}

pub fn kicked(by: &str, user: &str) -> String {
    format!(":wave: @{by} removed @{user} from this session.")
}

pub fn owner_only(owner: &str, what: &str) -> String {
    format!(":lock: Only @{owner}, who started this session, can {what}.")
}

pub fn mode_changed(by: &str, from: &str, to: &str) -> String {
    format!(
        ":closed_lock_with_key: @{by} switched this session from `{from}` to `{to}`: tool use now asks for approval in the thread."
    )
}

pub fn mode_refused(current: &str, wanted: &str) -> String {
    format!(
        ":no_entry_sign: Permissions can only be tightened from chat. This session is in `{current}`; `/claude permissions interactive` makes it ask for approval. `{wanted}` is not available here."
    )
}

pub fn mode_unchanged(current: &str) -> String {
    format!(":information_source: This session already asks for approval (mode `{current}`).")
}

/// The status line linking each recent turn (newest first) to its trace; `None` without
/// a `telemetry.trace_url` or a turn with a trace.
pub fn turn_traces(turns: &[crate::records::TurnTrace], trace_url: &str) -> Option<String> {
    let links: Vec<String> = turns
        .iter()
        .filter_map(|turn| {
            let link = common::telemetry::trace_link(trace_url, turn.trace_id.as_deref()?)?;
            Some(match turn.duration_ms {
                Some(ms) => format!("[turn {}]({link}) ({:.1} s)", turn.turn, ms as f64 / 1000.0),
                None => format!("[turn {}]({link}) (running)", turn.turn),
            })
        })
        .collect();
    (!links.is_empty()).then(|| format!("Traces: {}", links.join(" · ")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::agent::Usage;

    #[test]
    fn credentials_cooling_says_when_claude_continues() {
        // 2026-12-03 17:00:00 UTC.
        let now = 1_796_317_200_000;
        assert_eq!(
            credentials_cooling(now + 42_300, now),
            ":hourglass: Every model credential is rate-limited right now. Claude continues by itself in about **43 s** (around 17:00 UTC); nothing is lost meanwhile."
        );
        assert!(
            credentials_cooling(now + 600_000, now).contains("about **10 min** (around 17:10 UTC)")
        );
        assert!(credentials_cooling(now, now).contains("about **a second**"));
    }

    #[test]
    fn header_snapshot() {
        let participants = vec!["alice".to_owned(), "bob".to_owned()];
        insta::assert_snapshot!(header(&Header {
            started_by: "alice",
            participants: &participants,
            permission_mode: "default",
            worker: "worker-1",
            status: Status::Working,
            repo: None,
        }));
    }

    #[test]
    fn a_repository_session_shows_its_repository_and_branch() {
        let text = header(&Header {
            started_by: "alice",
            participants: &[],
            permission_mode: "default",
            worker: "worker-1",
            status: Status::Idle,
            repo: Some(("web", "ccfleet/k5xq1a9wjb")),
        });
        assert!(
            text.contains("| Participants | @alice |\n| Repository | `web` on branch `ccfleet/k5xq1a9wjb` |\n| Permission mode |"),
            "{text}"
        );
        let offer = push_body(
            "web",
            "ccfleet/x",
            &(0..12).map(|i| format!("f{i}")).collect::<Vec<_>>(),
            "Add a page",
            false,
        );
        assert!(offer.contains("`f9`, and 2 more"), "{offer}");
        assert!(offer.contains("Commit message: **Add a page**"), "{offer}");
        assert!(push_body("web", "b", &[], "t", true).contains("held back as possible secrets"));
    }

    #[test]
    fn tool_lines_snapshot() {
        let lines = [
            tool_use("Bash", &json!({"command": "echo hi > out.txt"})),
            tool_use("Read", &json!({"file_path": "/workspace/src/main.rs"})),
            tool_use(
                "Edit",
                &json!({"file_path": "/workspace/a.txt", "old_string": "one\ntwo", "new_string": "one\n2"}),
            ),
            tool_use(
                "Write",
                &json!({"file_path": "/workspace/index.html", "content": "<!doctype html>\n<title>x</title>\n<p>```</p>"}),
            ),
            tool_use("mcp__github__create_issue", &json!({"title": "x"})),
            tool_use("NotebookEdit", &json!({})),
        ];
        insta::assert_snapshot!(lines.join("\n\n"));
    }

    #[test]
    fn admin_stop_snapshot() {
        insta::assert_snapshot!(
            [
                admin_interrupted("ops"),
                admin_stopped("ops", true, 0),
                admin_stopped("ops", false, 0),
                admin_stopped("ops", true, 1),
                admin_stopped("ops", true, 3),
            ]
            .join("\n\n")
        );
    }

    #[test]
    fn footer_snapshot() {
        insta::assert_snapshot!(footer(&TurnResult {
            duration_ms: 3_240,
            cost_usd: 0.01234,
            usage: Usage {
                input_tokens: 1200,
                output_tokens: 345,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 10_000,
            },
            ..Default::default()
        }));
    }

    #[test]
    fn artifacts_snapshot() {
        insta::assert_snapshot!(artifacts(
            &[
                ArtifactLink {
                    path: "index.html".into(),
                    url: "https://gw/a/T/index.html".into(),
                    size: 321
                },
                ArtifactLink {
                    path: "src/app.js".into(),
                    url: "https://gw/a/T/src/app.js".into(),
                    size: 20_480
                },
            ],
            "https://gw/a/T/",
            "https://gw/z/T",
        ));
    }

    #[test]
    fn limits_snapshot() {
        insta::assert_snapshot!(
            [
                artifacts_not_uploaded(
                    &[
                        ("big.bin".into(), 3_000_000_000),
                        ("data.csv".into(), 200 << 20)
                    ],
                    100 << 20
                ),
                workspace_over_limit(3, 3_000_000_000, 2 << 30, Some(2)),
                workspace_over_limit(1, 3_000_000_000, 2 << 30, None),
                cut_turn_given_up(3),
            ]
            .join("\n---\n")
        );
    }

    #[test]
    fn todo_and_errors_snapshot() {
        let items = vec![
            TodoItem {
                content: "Write tests".into(),
                status: "completed".into(),
                active_form: "Writing tests".into(),
            },
            TodoItem {
                content: "Fix bug".into(),
                status: "in_progress".into(),
                active_form: "Fixing the bug".into(),
            },
            TodoItem {
                content: "Ship".into(),
                status: "pending".into(),
                active_form: String::new(),
            },
        ];
        insta::assert_snapshot!(
            [
                todo_list(&items),
                agent_error("server_error", Some(529), "overloaded"),
                agent_error("server_error", Some(500), "boom"),
                agent_error("authentication_failed", None, "Not logged in"),
                api_retry(Some(529), "overloaded", 1, 2, 503),
                api_retry(Some(500), "server_error", 3, 10, 16_384),
                api_retry(Some(429), "rate_limit", 2, 10, 1_221),
                api_retry(None, "connection reset", 1, 10, 500),
                api_retried(1),
                api_retried(2),
                api_gave_up(1),
                api_gave_up(2),
                queued(3),
                takeover("w1", "w2"),
                checkpoints_lost(
                    &[LostCheckpoint {
                        turn: 3,
                        reason: "archive entry \"workspace/x\" is not allowed: appears twice"
                            .into(),
                    }],
                    Some(2),
                ),
                checkpoints_lost(
                    &[
                        LostCheckpoint {
                            turn: 2,
                            reason: "the archive cannot be read: invalid gzip header".into(),
                        },
                        LostCheckpoint {
                            turn: 1,
                            reason: "its file is missing from the object store".into(),
                        },
                    ],
                    None,
                ),
            ]
            .join("\n\n")
        );
    }

    fn signed(buttons: Vec<Button>) -> Vec<(Button, String)> {
        buttons
            .into_iter()
            .enumerate()
            .map(|(i, b)| (b, format!("TOKEN{i}")))
            .collect()
    }

    #[test]
    fn permission_prompt_snapshot() {
        let body = permission_body("Bash", &json!({"command": "rm -rf build"}));
        insta::assert_snapshot!(with_footer(&body, PERMISSION_HINT));
        insta::assert_json_snapshot!(
            "permission_buttons",
            button_props(
                &signed(permission_buttons()),
                "https://gw/hooks/action",
                "Answer in Mattermost"
            )
        );
    }

    #[test]
    fn question_and_plan_prompts_snapshot() {
        let question = Question {
            question: "Which color do you prefer?".into(),
            header: "Color".into(),
            options: vec![
                crate::agent::QuestionOption {
                    label: "Red".into(),
                    description: "warm".into(),
                },
                crate::agent::QuestionOption {
                    label: "Blue".into(),
                    description: "cool".into(),
                },
            ],
            multi_select: false,
        };
        insta::assert_snapshot!(
            [
                with_footer(&question_body(&question, 0, 2), QUESTION_HINT),
                with_footer(&plan_body("# Plan\n1. Write hello.txt\n"), PLAN_HINT),
                guest_body("alice", "bob", "please delete\neverything"),
            ]
            .join("\n\n---\n\n")
        );
        insta::assert_json_snapshot!(
            "question_buttons",
            button_props(
                &signed(question_buttons(&question)),
                "https://gw/hooks/action",
                "Answer in Mattermost"
            )
        );
    }

    #[test]
    fn verdicts_snapshot() {
        let answers = vec!["Red".to_owned()];
        let verdicts = [
            Verdict::Allowed { by: "alice" },
            Verdict::AllowedForSession { by: "alice" },
            Verdict::Denied { by: "carol" },
            Verdict::Answered {
                by: "alice",
                answers: &answers,
            },
            Verdict::PlanApproved { by: "alice" },
            Verdict::ChangesRequested { by: "alice" },
            Verdict::TimedOut { minutes: 60 },
            Verdict::Stopped { by: "alice" },
            Verdict::Withdrawn,
            Verdict::GuestAllowed { by: "alice" },
            Verdict::GuestInvited {
                by: "alice",
                guest: "bob",
            },
            Verdict::GuestDenied { by: "alice" },
        ];
        let body = permission_body("Bash", &json!({"command": "ls"}));
        let mut out = vec![with_footer(&body, &verdict(&verdicts[0]))];
        out.extend(verdicts.iter().skip(1).map(verdict));
        out.extend([
            not_an_approver("alice"),
            already_answered(Some("alice")),
            reasked_note(),
            not_allowed_user("mallory"),
            not_allowed_channel(),
            too_many_sessions("alice", 2),
            invited("alice", "bob"),
            kicked("alice", "bob"),
            mode_changed("alice", "acceptEdits", "default"),
            mode_refused("default", "bypassPermissions"),
        ]);
        insta::assert_snapshot!(out.join("\n\n"));
    }

    #[test]
    fn a_fence_outlasts_backticks_inside() {
        assert_eq!(fence("a ``` b"), "````");
        assert_eq!(fence("plain"), "```");
    }

    #[test]
    fn recent_turns_link_to_their_traces_when_a_trace_url_is_set() {
        use crate::records::TurnTrace;
        let turns = [
            TurnTrace {
                turn: 2,
                trace_id: Some("ab".repeat(16)),
                duration_ms: None,
            },
            TurnTrace {
                turn: 1,
                trace_id: Some("cd".repeat(16)),
                duration_ms: Some(1500),
            },
            TurnTrace {
                turn: 0,
                trace_id: None,
                duration_ms: Some(10),
            },
        ];
        assert_eq!(turn_traces(&turns, ""), None);
        assert_eq!(
            turn_traces(&turns, "http://jaeger:16686/trace/{trace_id}").unwrap(),
            format!(
                "Traces: [turn 2](http://jaeger:16686/trace/{}) (running) · [turn 1](http://jaeger:16686/trace/{}) (1.5 s)",
                "ab".repeat(16),
                "cd".repeat(16)
            )
        );
    }
}
