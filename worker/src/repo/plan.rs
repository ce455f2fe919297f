//! The decisions of working on a repository, without I/O: the session's branch, which
//! changed files may be pushed (secret patterns, size cap), the commit message with its
//! trailers, the commit's author, and what a git or API failure means in plain words.

use proto::ThreadId;

/// The branch prefix of every session's branch.
pub const BRANCH_PREFIX: &str = "ccfleet/";

/// How many characters of the thread id name its branch. Mattermost ids are 26
/// characters of `[a-z0-9]`; 10 keep collisions within one repository out of reach.
pub const SHORT_ID_LEN: usize = 10;

/// Claude's co-author trailer, as Claude Code itself writes it.
pub const CO_AUTHOR: &str = "Co-authored-by: Claude <noreply@anthropic.com>";

/// The longest first line of a commit message (git's convention).
pub const TITLE_MAX: usize = 72;

/// `ccfleet/<short thread id>`: lower-case letters and digits of the thread id.
pub fn branch_for(thread: &ThreadId) -> String {
    let short: String = thread
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(SHORT_ID_LEN)
        .collect();
    let short = if short.is_empty() {
        "thread".to_owned()
    } else {
        short
    };
    format!("{BRANCH_PREFIX}{short}")
}

/// Whether `name` is a branch name git accepts (`git check-ref-format --branch`), and one
/// that cannot be read as an option.
pub fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('-')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.ends_with(".lock")
        && name != "@"
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name.contains("/.")
        && !name.starts_with('.')
        && !name
            .chars()
            .any(|c| c.is_ascii_control() || " ~^:?*[\\\x7f".contains(c))
        && name.split('/').all(|part| !part.ends_with(".lock"))
}

/// Which repository (and branch) a new session starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The repository's `name`.
    pub name: String,
    /// A branch the message names (`branch:NAME`), else the session's own.
    pub branch: Option<String>,
    /// Chosen by the channel's default, not by the message.
    pub by_default: bool,
}

/// Why a message's repository cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// `repo:NAME` names no configured repository.
    Unknown { name: String, known: Vec<String> },
    /// `branch:NAME` is not a name git accepts.
    BadBranch(String),
}

impl Unusable {
    pub fn plain_words(&self) -> String {
        match self {
            Unusable::Unknown { name, known } if known.is_empty() => format!(
                "There is no repository `{name}`: this fleet has no repositories configured."
            ),
            Unusable::Unknown { name, known } => format!(
                "There is no repository `{name}`. Known here: {}.",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Unusable::BadBranch(b) => format!("`{b}` is not a branch name git accepts."),
        }
    }
}

/// The repository a thread's first message asks for: `repo:NAME` (and `branch:NAME`) in
/// the text, else the channel's default (`channels` of a repository), else none.
/// `repos` is (name, default channels) of each configured repository.
pub fn choose_repository(
    text: &str,
    channel: &str,
    repos: &[(&str, &[String])],
) -> Result<Option<Chosen>, Unusable> {
    let word = |prefix: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .map(|v| v.trim_end_matches([',', '.', ';', ')']).to_owned())
    };
    let branch = match word("branch:") {
        Some(b) if !valid_branch(&b) => return Err(Unusable::BadBranch(b)),
        other => other,
    };
    match word("repo:") {
        Some(name) => {
            if repos.iter().any(|(n, _)| *n == name) {
                Ok(Some(Chosen {
                    name,
                    branch,
                    by_default: false,
                }))
            } else {
                Err(Unusable::Unknown {
                    name,
                    known: repos.iter().map(|(n, _)| (*n).to_owned()).collect(),
                })
            }
        }
        None => Ok(repos
            .iter()
            .find(|(_, channels)| channels.iter().any(|c| c == channel))
            .map(|(name, _)| Chosen {
                name: (*name).to_owned(),
                branch,
                by_default: true,
            })),
    }
}

/// Who a commit is by: the Mattermost user who asked for the push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

impl Author {
    /// The author for a Mattermost user: their full name (else username) and email (else
    /// `<username>@users.noreply.<host>`, host from the Mattermost URL). Characters git
    /// cannot hold in an identity (`<`, `>`, newlines) are dropped.
    pub fn for_user(username: &str, full_name: &str, email: &str, mattermost_host: &str) -> Self {
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| !matches!(c, '<' | '>' | '\n' | '\r' | '\0'))
                .collect::<String>()
                .trim()
                .to_owned()
        };
        let user = clean(username);
        let user = if user.is_empty() {
            "ccfleet-user".to_owned()
        } else {
            user
        };
        let name = clean(full_name);
        let email = clean(email);
        let email = if email.contains('@') && !email.contains(char::is_whitespace) {
            email
        } else {
            let host = clean(mattermost_host);
            let host = if host.is_empty() {
                "mattermost".to_owned()
            } else {
                host
            };
            let local: String = user
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("{local}@users.noreply.{host}")
        };
        Author {
            name: if name.is_empty() { user } else { name },
            email,
        }
    }
}

/// The commit message: the request's first line as the title (shortened to
/// [`TITLE_MAX`]), the rest of the request as the body, then the trailers: the thread
/// and Claude as co-author.
pub fn commit_message(request: &str, thread: &ThreadId) -> String {
    let request = strip_markers(request);
    let mut lines = request.lines().map(str::trim).skip_while(|l| l.is_empty());
    let title = title_of(lines.next().unwrap_or(""));
    let body: Vec<&str> = lines.collect();
    let body = body.join("\n");
    // A body line that looks like a trailer would join the trailer block only if it
    // were last; the trailers always come after a blank line of their own.
    let body = body.trim();
    let mut message = title;
    message.push_str("\n\n");
    if !body.is_empty() {
        message.push_str(body);
        message.push_str("\n\n");
    }
    message.push_str(&format!(
        "Ccfleet-Thread: {}\n{CO_AUTHOR}\n",
        thread.as_str()
    ));
    message
}

/// The title [`commit_message`] makes of `request`.
pub fn commit_title(request: &str) -> String {
    let request = strip_markers(request);
    title_of(
        request
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or(""),
    )
}

fn title_of(first: &str) -> String {
    let title = shorten(&collapse(first), TITLE_MAX);
    if title.is_empty() {
        "Changes from Claude Code".to_owned()
    } else {
        title
    }
}

/// The title of a commit of a session's generated files (the thread id follows).
pub const GENERATED_TITLE: &str = "Add generated files from Claude Code";

/// A reply that edits the commit message of the push waiting in the thread:
/// `commit message: TEXT` (any case; TEXT may span lines), after mentions.
pub fn edited_message(text: &str) -> Option<String> {
    let mut rest = text.trim_start();
    while rest.starts_with('@') {
        rest = rest
            .split_once(char::is_whitespace)
            .map_or("", |(_, r)| r)
            .trim_start();
    }
    const PREFIX: &str = "commit message:";
    let head = rest.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let message = rest[PREFIX.len()..].trim();
    (!message.is_empty()).then(|| message.to_owned())
}

/// The title and description of the merge or pull request.
pub fn review_text(message: &str, thread_link: &str) -> (String, String) {
    let title = message.lines().next().unwrap_or("").to_owned();
    let body: String = message
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("Ccfleet-Thread:") && !l.starts_with("Co-authored-by:"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut description = body.trim().to_owned();
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&format!(
        "Opened by ccfleet from a Mattermost thread: {thread_link}"
    ));
    (title, description)
}

/// Removes the fake model's `[[…]]` markers, mentions, `repo:NAME` and `branch:NAME` from a request,
/// line by line.
fn strip_markers(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut out = String::with_capacity(line.len());
            let mut rest = line;
            while let Some(start) = rest.find("[[") {
                let Some(end) = rest[start..].find("]]") else {
                    break;
                };
                out.push_str(&rest[..start]);
                out.push(' ');
                rest = &rest[start + end + 2..];
            }
            out.push_str(rest);
            out.split_whitespace()
                .filter(|w| {
                    !w.starts_with('@') && !w.starts_with("repo:") && !w.starts_with("branch:")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out = out.trim_end().to_owned();
    out.push('…');
    out
}

/// A changed file as the screen sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Workspace-relative path, `/`-separated.
    pub path: String,
    pub size: u64,
    /// The file's first bytes (up to [`HEAD_BYTES`]).
    pub head: Vec<u8>,
}

/// How much of a file the screen reads.
pub const HEAD_BYTES: usize = 8192;

/// Why a changed file is not pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// It looks like a secret; pushed only after an explicit confirmation.
    Secret { path: String, why: &'static str },
    /// It is larger than the repository's `max_push_file_bytes`.
    TooLarge { path: String, size: u64, limit: u64 },
}

impl Held {
    pub fn path(&self) -> &str {
        match self {
            Held::Secret { path, .. } | Held::TooLarge { path, .. } => path,
        }
    }
}

/// Which changed files are pushed and which are held back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screened {
    pub push: Vec<String>,
    pub held: Vec<Held>,
}

/// Sorts changed files into pushed and held: over `max_bytes` (0: no limit) is held
/// always; a secret is held unless `secrets_confirmed`.
pub fn screen(files: &[Candidate], max_bytes: u64, secrets_confirmed: bool) -> Screened {
    let mut out = Screened::default();
    for file in files {
        if max_bytes > 0 && file.size > max_bytes {
            out.held.push(Held::TooLarge {
                path: file.path.clone(),
                size: file.size,
                limit: max_bytes,
            });
        } else if let Some(why) = secret_reason(&file.path, &file.head)
            && !secrets_confirmed
        {
            out.held.push(Held::Secret {
                path: file.path.clone(),
                why,
            });
        } else {
            out.push.push(file.path.clone());
        }
    }
    out
}

/// Why a file looks like a secret, if it does.
pub fn secret_reason(path: &str, head: &[u8]) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let text = String::from_utf8_lossy(head);
    if text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----") {
        return Some("it holds a private key");
    }
    if matches!(
        name.as_str(),
        "id_rsa" | "id_dsa" | "id_ecdsa" | "id_ed25519" | ".netrc" | ".pgpass" | ".git-credentials"
    ) || name.ends_with(".p12")
        || name.ends_with(".pfx")
        || name.ends_with(".keystore")
        || name.ends_with(".jks")
    {
        return Some("its name is that of a credential file");
    }
    let env_file = name == ".env"
        || (name.starts_with(".env.")
            && !["example", "sample", "template", "dist"]
                .iter()
                .any(|s| name.ends_with(s)));
    if env_file && text.lines().any(assigns_a_value) {
        return Some("it is a .env file with values");
    }
    const TOKEN_PREFIXES: &[&str] = &[
        "ghp_",
        "gho_",
        "ghs_",
        "ghu_",
        "github_pat_",
        "glpat-",
        "sk-ant-",
        "xoxb-",
        "xoxp-",
    ];
    if text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .any(|w| {
            TOKEN_PREFIXES
                .iter()
                .any(|p| w.starts_with(p) && w.len() >= p.len() + 16)
                || (w.len() == 20
                    && w.starts_with("AKIA")
                    && w[4..]
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
        })
    {
        return Some("it holds what looks like an access token");
    }
    None
}

/// `KEY=value` with a non-empty value (not a comment).
fn assigns_a_value(line: &str) -> bool {
    let line = line.trim();
    let line = line.strip_prefix("export ").unwrap_or(line);
    if line.starts_with('#') {
        return false;
    }
    match line.split_once('=') {
        Some((key, value)) => {
            !key.trim().is_empty()
                && key
                    .trim()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !value
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .is_empty()
        }
        None => false,
    }
}

/// What went wrong with a clone, a push or a review, in words the thread can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The token was refused (missing, wrong, expired or without the scope).
    AuthRefused,
    /// The branch is protected: pushes to it are refused.
    BranchProtected,
    /// The remote branch has commits the session does not have.
    RemoteMoved,
    /// The push is larger than the server takes.
    TooLarge,
    /// The repository or branch does not exist (or the token cannot see it).
    NotFound,
    /// The server did not answer or failed (5xx, connection refused, DNS, timeout).
    ProviderDown,
    /// Nothing changed since the last push.
    NothingToPush,
    /// Something else; the last lines git or the API said (token removed).
    Other(String),
}

impl Failure {
    /// The thread's notice: what happened and what to do.
    pub fn plain_words(&self, repo: &str, branch: &str) -> String {
        match self {
            Failure::AuthRefused => format!(
                "{repo} refused the fleet's credentials. An operator needs to renew the repository token (or give it write access); then press Push again."
            ),
            Failure::BranchProtected => format!(
                "{repo} does not accept pushes to the protected branch `{branch}`. Start from another branch (`/claude repo {repo}` in a new thread), or ask a maintainer to allow it."
            ),
            Failure::RemoteMoved => format!(
                "`{branch}` on {repo} has commits this session does not have (someone else pushed to it); nothing was overwritten. Start a new thread from that branch to build on them, or ask whoever pushed."
            ),
            Failure::TooLarge => format!(
                "{repo} refused the push as too large. Remove large generated files (or add them to .gitignore) and press Push again."
            ),
            Failure::NotFound => format!(
                "{repo} was not found, or the fleet's token cannot see it. An operator should check the repository's URL and token."
            ),
            Failure::ProviderDown => {
                format!("{repo} is not answering right now. Press Push again in a few minutes.")
            }
            Failure::NothingToPush => format!("Nothing changed since the last push to `{branch}`."),
            Failure::Other(detail) => format!("The push to {repo} failed: {detail}"),
        }
    }

    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::ProviderDown)
    }
}

/// What a failed git command's stderr means. `secret` is removed from any text kept.
pub fn classify_git(stderr: &str, secret: &str) -> Failure {
    let lower = stderr.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&[
        "protected branch",
        "gh006",
        "protected_branch",
        "not allowed to push code to protected",
    ]) {
        Failure::BranchProtected
    } else if has(&[
        "authentication failed",
        "access denied",
        "could not read username",
        "could not read password",
        "invalid username or password",
        "returned error: 401",
        "returned error: 403",
        "permission to",
        "you are not allowed to push",
        "write access to repository not granted",
    ]) {
        Failure::AuthRefused
    } else if has(&[
        "non-fast-forward",
        "fetch first",
        "[rejected]",
        "stale info",
    ]) {
        Failure::RemoteMoved
    } else if has(&[
        "gh001",
        "exceeds file size limit",
        "exceeds maximum allowed size",
        "returned error: 413",
        "http 413",
        "too large",
    ]) {
        Failure::TooLarge
    } else if has(&[
        "repository not found",
        "not found",
        "does not appear to be a git repository",
        "returned error: 404",
        "couldn't find remote ref",
    ]) {
        Failure::NotFound
    } else if has(&[
        "could not resolve host",
        "failed to connect",
        "connection refused",
        "connection timed out",
        "operation timed out",
        "returned error: 50",
        "http 50",
        "rpc failed",
        "unexpected disconnect",
        "the remote end hung up",
        "empty reply from server",
    ]) {
        Failure::ProviderDown
    } else {
        Failure::Other(last_lines(stderr, secret))
    }
}

/// What an API answer's status means (`None`: no answer at all).
pub fn classify_api(status: Option<u16>, body: &str, secret: &str) -> Failure {
    match status {
        None => Failure::ProviderDown,
        Some(401 | 403) => Failure::AuthRefused,
        Some(404) => Failure::NotFound,
        Some(413) => Failure::TooLarge,
        Some(s) if s >= 500 || s == 429 => Failure::ProviderDown,
        Some(s) => Failure::Other(format!(
            "the API answered {s}: {}",
            last_lines(body, secret)
        )),
    }
}

/// The last three non-empty lines of `text`, each without `secret`, at most 400 chars.
fn last_lines(text: &str, secret: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    let tail = if secret.is_empty() {
        tail
    } else {
        tail.replace(secret, "***")
    };
    shorten(&tail, 400)
}

#[cfg(test)]
mod tests;
