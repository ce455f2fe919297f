//! The usage record: what each model request used and cost, written to PostgreSQL
//! (`model_usage`) as the requests end, and the sums budgets and `/claude status` read.
//!
//! The gateway's response streams hand a [`Row`] over without waiting (an unbounded
//! channel); one task ([`Meter::run`]) writes them, each insert keyed by an id made here so
//! a retried insert never counts twice. A row names the session; the user (the session's
//! `started_by`) and channel are read from `sessions` in the same statement, so nothing
//! has to be carried with the session token, and a warm container's token renamed to its
//! session is attributed correctly.

use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use proto::ids::SessionId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::usage::{Tokens, Usage};
use crate::records::Error;

/// Attempts to write one row before it is given up (with a log line).
const ATTEMPTS: u32 = 6;

/// One model request's usage, as recorded.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub at: SystemTime,
    pub session: SessionId,
    /// The pool credential's label.
    pub credential: String,
    pub usage: Usage,
    pub cost_usd: f64,
    /// The model API's `request-id`.
    pub request_id: Option<String>,
}

/// The writer's ends: [`Meter::record`] for the streams, [`Meter::run`] for the task.
#[derive(Debug)]
pub struct Meter {
    tx: mpsc::UnboundedSender<Row>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Row>>>,
    db: Option<Pool>,
}

impl Meter {
    /// `db`: where rows go; `None`: they are logged at debug level only.
    pub fn new(db: Option<Pool>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            db,
        }
    }

    /// Hands a row to the writer; never waits.
    pub fn record(&self, row: Row) {
        tracing::debug!(
            session_id = %row.session, credential = %row.credential, model = %row.usage.model,
            input = row.usage.tokens.input, output = row.usage.tokens.output,
            cache_read = row.usage.tokens.cache_read, cache_creation = row.usage.tokens.cache_creation,
            cost_usd = row.cost_usd, "model usage"
        );
        if self.db.is_some() {
            // Fails only once `run` ended (shutdown): nothing is left to write it.
            let _ = self.tx.send(row);
        }
    }

    /// Writes rows until `shutdown`, then what was handed over before it. Runs once; a
    /// second call returns at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        let Some(mut rx) = self.rx.lock().expect("meter lock").take() else {
            return;
        };
        let Some(db) = self.db.clone() else {
            return;
        };
        loop {
            let row = tokio::select! {
                row = rx.recv() => row,
                () = shutdown.cancelled() => break,
            };
            let Some(row) = row else { return };
            write_retrying(&db, &row, Some(&shutdown)).await;
        }
        rx.close();
        while let Ok(row) = rx.try_recv() {
            write_retrying(&db, &row, None).await;
        }
    }
}

async fn write_retrying(db: &Pool, row: &Row, shutdown: Option<&CancellationToken>) {
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=ATTEMPTS {
        match write(db, row).await {
            Ok(()) => return,
            Err(err) if err.is_retryable() && attempt < ATTEMPTS => {
                tracing::warn!(error = &err as &dyn std::error::Error, session_id = %row.session, attempt, "recording model usage; retrying");
                let wait = tokio::time::sleep(backoff);
                match shutdown {
                    Some(stop) => tokio::select! { () = wait => {}, () = stop.cancelled() => {} },
                    None => wait.await,
                }
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
            Err(err) => {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    session_id = %row.session, credential = %row.credential,
                    input = row.usage.tokens.input, output = row.usage.tokens.output,
                    cost_usd = row.cost_usd,
                    "a model request's usage could not be recorded"
                );
                return;
            }
        }
    }
}

/// Inserts one row (again: a no-op once it is there).
pub async fn write(db: &Pool, row: &Row) -> Result<(), Error> {
    let client = db.get().await.map_err(Error::Pool)?;
    let t = &row.usage.tokens;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO model_usage (id, at, day, session_id, user_id, channel_id, credential, model,
                 input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd, request_id)
             SELECT $1::text, $2::timestamptz, ($2::timestamptz AT TIME ZONE 'UTC')::date, $3::text,
                 COALESCE((SELECT started_by FROM sessions WHERE session_id = $3::text), ''),
                 COALESCE((SELECT channel_id FROM sessions WHERE session_id = $3::text), ''),
                 $4::text, $5::text, $6::bigint, $7::bigint, $8::bigint, $9::bigint,
                 $10::float8, $11::text
             ON CONFLICT (id) DO NOTHING",
            &[
                &row.id,
                &row.at,
                &row.session.as_str(),
                &row.credential,
                &row.usage.model,
                &count(t.input),
                &count(t.output),
                &count(t.cache_read),
                &count(t.cache_creation),
                &row.cost_usd,
                &row.request_id,
            ],
        )
        .await
        .map_err(Error::Query)?;
    Ok(())
}

/// Summed usage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spend {
    /// Model requests with usage.
    pub requests: u64,
    pub tokens: Tokens,
    pub cost_usd: f64,
}

/// Whose usage: a day is a UTC date (`YYYY-MM-DD`), `None` for today (UTC).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    User {
        user_id: &'a str,
        day: Option<&'a str>,
    },
    Channel {
        channel_id: &'a str,
        day: Option<&'a str>,
    },
    Session {
        session_id: &'a str,
    },
    Credential {
        label: &'a str,
        day: Option<&'a str>,
    },
}

const SUMS: &str = "count(*)::bigint, COALESCE(sum(input_tokens), 0)::bigint,
    COALESCE(sum(output_tokens), 0)::bigint, COALESCE(sum(cache_read_tokens), 0)::bigint,
    COALESCE(sum(cache_creation_tokens), 0)::bigint, COALESCE(sum(cost_usd), 0)::float8";
const DAY: &str = "day = COALESCE($2::text::date, (now() AT TIME ZONE 'UTC')::date)";

fn spend_of(row: &tokio_postgres::Row, from: usize) -> Spend {
    let n = |i: usize| u64::try_from(row.get::<_, i64>(from + i)).unwrap_or(0);
    Spend {
        requests: n(0),
        tokens: Tokens {
            input: n(1),
            output: n(2),
            cache_read: n(3),
            cache_creation: n(4),
        },
        cost_usd: row.get(from + 5),
    }
}

/// What `scope` has used so far (budgets, `/claude status`).
pub async fn spend(db: &Pool, scope: Scope<'_>) -> Result<Spend, Error> {
    let client = db.get().await.map_err(Error::Pool)?;
    let (column, key, day) = match scope {
        Scope::User { user_id, day } => ("user_id", user_id, Some(day)),
        Scope::Channel { channel_id, day } => ("channel_id", channel_id, Some(day)),
        Scope::Credential { label, day } => ("credential", label, Some(day)),
        Scope::Session { session_id } => ("session_id", session_id, None),
    };
    let row = match day {
        Some(day) => {
            client
                .query_one(
                    &format!("SELECT {SUMS} FROM model_usage WHERE {column} = $1 AND {DAY}"),
                    &[&key, &day],
                )
                .await
        }
        None => {
            client
                .query_one(
                    &format!("SELECT {SUMS} FROM model_usage WHERE {column} = $1"),
                    &[&key],
                )
                .await
        }
    }
    .map_err(Error::Query)?;
    Ok(spend_of(&row, 0))
}

/// Each credential's usage on a UTC day (`None`: today), by label.
pub async fn spend_by_credential(
    db: &Pool,
    day: Option<&str>,
) -> Result<Vec<(String, Spend)>, Error> {
    let client = db.get().await.map_err(Error::Pool)?;
    let rows = client
        .query(
            &format!(
                "SELECT credential, {SUMS} FROM model_usage
                 WHERE day = COALESCE($1::text::date, (now() AT TIME ZONE 'UTC')::date)
                 GROUP BY credential ORDER BY credential"
            ),
            &[&day],
        )
        .await
        .map_err(Error::Query)?;
    Ok(rows.iter().map(|r| (r.get(0), spend_of(r, 1))).collect())
}

/// What a session's budgets count now: spent by the session, its owner today and its
/// channel today (UTC), and the top-ups given for each, in dollars. A session without a
/// record (a warm container's) has no owner or channel.
pub async fn budget_state(
    db: &Pool,
    session_id: &str,
) -> Result<(super::budget::Amounts, super::budget::Amounts), Error> {
    let client = db.get().await.map_err(Error::Pool)?;
    let row = client
        .query_one(
            "WITH s AS (SELECT started_by AS user_id, channel_id FROM sessions WHERE session_id = $1),
                  today AS (SELECT (now() AT TIME ZONE 'UTC')::date AS d)
             SELECT
               (SELECT COALESCE(sum(cost_usd), 0)::float8 FROM model_usage WHERE session_id = $1),
               (SELECT COALESCE(sum(u.cost_usd), 0)::float8 FROM model_usage u, s, today
                 WHERE u.user_id = s.user_id AND u.day = today.d),
               (SELECT COALESCE(sum(u.cost_usd), 0)::float8 FROM model_usage u, s, today
                 WHERE u.channel_id = s.channel_id AND u.day = today.d),
               (SELECT COALESCE(sum(amount_usd), 0)::float8 FROM budget_top_ups
                 WHERE budget = 'session' AND session_id = $1),
               (SELECT COALESCE(sum(t.amount_usd), 0)::float8 FROM budget_top_ups t, s, today
                 WHERE t.budget = 'user_day' AND t.user_id = s.user_id AND t.day = today.d),
               (SELECT COALESCE(sum(t.amount_usd), 0)::float8 FROM budget_top_ups t, s, today
                 WHERE t.budget = 'channel_day' AND t.channel_id = s.channel_id AND t.day = today.d)",
            &[&session_id],
        )
        .await
        .map_err(Error::Query)?;
    let amounts = |from: usize| super::budget::Amounts {
        session: row.get(from),
        user_day: row.get(from + 1),
        channel_day: row.get(from + 2),
    };
    Ok((amounts(0), amounts(3)))
}
