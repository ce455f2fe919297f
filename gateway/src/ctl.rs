//! `ccfleet-ctl`: the admin API from a terminal. Human tables by default, the API's JSON
//! with `--json`, and exit codes scripts can use ([`exit`]).

use clap::{Parser, Subcommand};
use serde_json::Value;

/// Exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    /// The API refused the request (not found, conflict, bad request) or failed.
    pub const API: u8 = 1;
    /// Bad usage (clap's own code for usage errors).
    pub const USAGE: u8 = 2;
    /// No token, or a token that is unknown (401) or lacks the scope (403).
    pub const UNAUTHORIZED: u8 = 3;
    /// The gateway could not be reached.
    pub const UNREACHABLE: u8 = 4;
}

#[derive(Debug, Parser)]
#[command(
    name = "ccfleet-ctl",
    version,
    about = "Look at and steer a ccfleet through a gateway's admin API",
    after_help = "Exit codes: 0 ok; 1 the API refused or failed (not found, not running, …); \
                  2 usage; 3 unauthorized or forbidden (no token, unknown token, read scope \
                  for an action); 4 the gateway is unreachable."
)]
pub struct Args {
    /// The gateway's base URL (the API is under /admin/v1).
    #[arg(
        long,
        env = "CCFLEET_ADMIN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// An admin API token (`gateway.admin_tokens`).
    #[arg(long, env = "CCFLEET_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List sessions (a page; --cursor for the next).
    Sessions {
        #[arg(long)]
        state: Option<String>,
        /// User id or username of who started it.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        worker: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One session: turns, approvals, admin actions.
    Session { id: String },
    /// Stop a session (resumable; the thread is told).
    Stop { id: String },
    /// Stop every running session.
    StopAll,
    /// Drain a worker: no new threads, its sessions finish and are released.
    Drain { worker: String },
    /// Live workers with capacity and free slots.
    Workers,
    /// Threads waiting for a free slot.
    Queue,
}

/// What a call gave: an exit code and what to print on stdout and stderr.
#[derive(Debug)]
pub struct Outcome {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    fn error(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            stdout: String::new(),
            stderr: message.into(),
        }
    }
}

pub async fn run(args: Args) -> Outcome {
    let Some(token) = args.token.clone().filter(|t| !t.is_empty()) else {
        return Outcome::error(
            exit::UNAUTHORIZED,
            "no token: pass --token or set CCFLEET_ADMIN_TOKEN",
        );
    };
    let base = format!("{}/admin/v1", args.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let (method, path, query): (reqwest::Method, String, Vec<(&str, String)>) = match &args.command
    {
        Command::Sessions {
            state,
            user,
            channel,
            worker,
            limit,
            cursor,
        } => {
            let mut query = Vec::new();
            for (key, value) in [
                ("state", state),
                ("user", user),
                ("channel", channel),
                ("worker", worker),
                ("cursor", cursor),
            ] {
                if let Some(value) = value {
                    query.push((key, value.clone()));
                }
            }
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            (reqwest::Method::GET, "/sessions".into(), query)
        }
        Command::Session { id } => (
            reqwest::Method::GET,
            format!("/sessions/{}", segment(id)),
            vec![],
        ),
        Command::Stop { id } => (
            reqwest::Method::POST,
            format!("/sessions/{}/stop", segment(id)),
            vec![],
        ),
        Command::StopAll => (reqwest::Method::POST, "/sessions/stop-all".into(), vec![]),
        Command::Drain { worker } => (
            reqwest::Method::POST,
            format!("/workers/{}/drain", segment(worker)),
            vec![],
        ),
        Command::Workers => (reqwest::Method::GET, "/workers".into(), vec![]),
        Command::Queue => (reqwest::Method::GET, "/queue".into(), vec![]),
    };
    let response = client
        .request(method, format!("{base}{path}"))
        .query(&query)
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(err) => {
            return Outcome::error(
                exit::UNREACHABLE,
                format!("cannot reach {base}: {}", common::error_chain(&err)),
            );
        }
    };
    let status = response.status();
    let body: Value = match response.json().await {
        Ok(body) => body,
        Err(err) => {
            return Outcome::error(
                exit::API,
                format!(
                    "unreadable answer ({status}): {}",
                    common::error_chain(&err)
                ),
            );
        }
    };
    if !status.is_success() {
        let code = match status.as_u16() {
            401 | 403 => exit::UNAUTHORIZED,
            _ => exit::API,
        };
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Outcome {
            code,
            stdout: if args.json {
                format!("{body:#}\n")
            } else {
                String::new()
            },
            stderr: format!("{status}: {message}"),
        };
    }
    let stdout = if args.json {
        format!("{body:#}\n")
    } else {
        render(&args.command, &body)
    };
    Outcome {
        code: exit::OK,
        stdout,
        stderr: String::new(),
    }
}

/// A path segment, percent-encoded.
fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(0.0)),
        Some(other) => other.to_string(),
    }
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// What a successful answer looks like in a terminal.
pub fn render(command: &Command, body: &Value) -> String {
    let session_row = |s: &Value| {
        vec![
            text(s, "thread_id"),
            text(s, "status"),
            text(s, "worker"),
            text(s, "started_by_name"),
            text(s, "turns"),
            format!(
                "{:.4}",
                s.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0)
            ),
            text(s, "updated_at"),
        ]
    };
    let session_headers = [
        "THREAD", "STATUS", "WORKER", "USER", "TURNS", "COST_USD", "UPDATED",
    ];
    match command {
        Command::Sessions { .. } => {
            let rows: Vec<_> = items(body, "sessions").iter().map(session_row).collect();
            let mut out = table(&session_headers, &rows);
            if let Some(cursor) = body.get("next_cursor").and_then(Value::as_str) {
                out.push_str(&format!("more: --cursor {cursor}\n"));
            }
            out
        }
        Command::Session { .. } => {
            let session = body.get("session").cloned().unwrap_or_default();
            let mut out = table(&session_headers, &[session_row(&session)]);
            out.push_str(&format!(
                "session {}  channel {}  running on {}\n\nturns:\n",
                text(&session, "session_id"),
                text(&session, "channel_id"),
                text(body, "running_on")
            ));
            let turns: Vec<_> = items(body, "turns")
                .iter()
                .map(|t| {
                    vec![
                        text(t, "turn"),
                        text(t, "worker"),
                        text(t, "started_at"),
                        text(t, "duration_ms"),
                        text(t, "input_tokens"),
                        text(t, "output_tokens"),
                        text(t, "cost_usd"),
                        text(t, "is_error"),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "TURN", "WORKER", "STARTED", "MS", "IN", "OUT", "COST_USD", "ERROR",
                ],
                &turns,
            ));
            out.push_str("\napprovals:\n");
            let approvals: Vec<_> = items(body, "approvals")
                .iter()
                .map(|a| {
                    vec![
                        text(a, "approval_id"),
                        text(a, "kind"),
                        text(a, "tool_name"),
                        text(a, "status"),
                        text(a, "decided_by_name"),
                        items(a, "answers").len().to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "APPROVAL",
                    "KIND",
                    "TOOL",
                    "STATUS",
                    "DECIDED_BY",
                    "ANSWERS",
                ],
                &approvals,
            ));
            out.push_str("\nadmin actions:\n");
            let audit: Vec<_> = items(body, "admin_audit")
                .iter()
                .map(|a| {
                    vec![
                        text(a, "at"),
                        text(a, "actor"),
                        text(a, "action"),
                        text(a, "outcome"),
                    ]
                })
                .collect();
            out.push_str(&table(&["AT", "ACTOR", "ACTION", "OUTCOME"], &audit));
            out
        }
        Command::Stop { .. } => format!(
            "stopping {} on {}\n",
            text(body, "thread_id"),
            text(body, "worker")
        ),
        Command::StopAll => {
            let rows: Vec<_> = items(body, "stopping")
                .iter()
                .map(|s| vec![text(s, "thread_id"), text(s, "worker")])
                .collect();
            let mut out = format!("stopping {} sessions\n", rows.len());
            if !rows.is_empty() {
                out.push_str(&table(&["THREAD", "WORKER"], &rows));
            }
            for failed in items(body, "failed") {
                out.push_str(&format!(
                    "not reached: {}\n",
                    failed.as_str().unwrap_or("?")
                ));
            }
            out
        }
        Command::Drain { .. } => format!(
            "worker {} draining ({} sessions to release)\n",
            text(body, "worker"),
            text(body, "owned")
        ),
        Command::Workers => {
            let rows: Vec<_> = items(body, "workers")
                .iter()
                .map(|w| {
                    vec![
                        text(w, "worker"),
                        text(w, "max_sessions"),
                        text(w, "owned"),
                        text(w, "free_slots"),
                    ]
                })
                .collect();
            let mut out = table(&["WORKER", "MAX", "OWNED", "FREE"], &rows);
            out.push_str(&format!(
                "capacity {}, free {}\n",
                text(body, "capacity"),
                text(body, "free_slots")
            ));
            out
        }
        Command::Queue => {
            let rows: Vec<_> = items(body, "threads")
                .iter()
                .map(|t| {
                    vec![
                        text(t, "thread_id"),
                        text(t, "pending"),
                        text(t, "queued_at_ms"),
                    ]
                })
                .collect();
            let mut out = table(&["THREAD", "PENDING", "QUEUED_AT_MS"], &rows);
            out.push_str(&format!("{} threads waiting\n", text(body, "total")));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let out = table(
            &["WORKER", "FREE"],
            &[
                vec!["w-1".into(), "2".into()],
                vec!["worker-long".into(), "0".into()],
            ],
        );
        assert_eq!(out, "WORKER       FREE\nw-1          2\nworker-long  0\n");
    }

    #[test]
    fn workers_render_as_a_table_with_totals() {
        let body = serde_json::json!({
            "workers": [{"worker": "w-1", "max_sessions": 4, "owned": 1, "free_slots": 3}],
            "capacity": 4, "free_slots": 3
        });
        assert_eq!(
            render(&Command::Workers, &body),
            "WORKER  MAX  OWNED  FREE\nw-1     4    1      3\ncapacity 4, free 3\n"
        );
    }
}
