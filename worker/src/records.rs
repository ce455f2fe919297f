//! The durable record in PostgreSQL: sessions, participants, inbound messages, turns with
//! usage and cost, outbound replies (audit), checkpoints, artifacts, and approvals with
//! the audit of every answer.
//!
//! Every write is idempotent, keyed by Mattermost-derived ids and turn numbers, so a
//! redelivered event or a retried step never writes twice.

use deadpool_postgres::Pool;
use proto::ChatEvent;
use tokio_postgres::types::ToSql;

use common::pg::Migration;

/// A top-up given in a thread (`budget_top_ups`).
#[derive(Debug, Clone)]
pub struct TopUp<'a> {
    pub budget: &'a str,
    pub session_id: &'a str,
    pub user_id: &'a str,
    pub channel_id: &'a str,
    pub amount_usd: f64,
    pub by: &'a str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "0001_sessions",
        sql: include_str!("../migrations/0001_sessions.sql"),
    },
    Migration {
        version: "0002_approvals",
        sql: include_str!("../migrations/0002_approvals.sql"),
    },
    Migration {
        version: "0003_thread_cursors",
        sql: include_str!("../migrations/0003_thread_cursors.sql"),
    },
    Migration {
        version: "0004_unrestorable_checkpoints",
        sql: include_str!("../migrations/0004_unrestorable_checkpoints.sql"),
    },
    Migration {
        version: "0005_turn_starts",
        sql: include_str!("../migrations/0005_turn_starts.sql"),
    },
    Migration {
        version: "0006_admin_audit",
        sql: include_str!("../migrations/0006_admin_audit.sql"),
    },
    Migration {
        version: "0007_turn_trace_ids",
        sql: include_str!("../migrations/0007_turn_trace_ids.sql"),
    },
    Migration {
        version: "0010_model_usage",
        sql: include_str!("../migrations/0010_model_usage.sql"),
    },
    Migration {
        version: "0011_budget_top_ups",
        sql: include_str!("../migrations/0011_budget_top_ups.sql"),
    },
    Migration {
        version: "0012_session_repositories",
        sql: include_str!("../migrations/0012_session_repositories.sql"),
    },
];

/// The repository a session works on (`migrations/0012_session_repositories.sql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRepo {
    pub repo: String,
    pub branch: String,
    /// The branch reviews target.
    pub base: String,
    /// The commit the branch started from.
    pub start_commit: String,
    pub review_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database unavailable")]
    Pool(#[source] deadpool_postgres::PoolError),
    #[error("database query failed")]
    Query(#[source] tokio_postgres::Error),
}

impl Error {
    /// Whether the same statement may succeed later. Connection loss, restarts, locks and
    /// a schema being changed are transient; a value the database refuses (SQLSTATE class
    /// 22, "data exception") is refused every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Pool(_) => true,
            Error::Query(err) => !err.code().is_some_and(|code| code.code().starts_with("22")),
        }
    }
}

/// Text from users, the agent or Mattermost, made safe to store: PostgreSQL's `text`
/// refuses the NUL character, which chat messages and command output can hold. It is
/// stored as U+FFFD.
#[derive(Debug)]
struct Text<'a>(&'a str);

impl tokio_postgres::types::ToSql for Text<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if self.0.contains('\0') {
            self.0.replace('\0', "\u{FFFD}").as_str().to_sql(ty, out)
        } else {
            self.0.to_sql(ty, out)
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub thread_id: String,
    pub session_id: String,
    pub channel_id: String,
    pub started_by: String,
    pub started_by_name: String,
    pub permission_mode: String,
    pub owner: Option<String>,
    pub cli_session_id: Option<String>,
    pub status: String,
    pub turns: i32,
    pub header_ref: Option<i32>,
}

/// A stored approval (see `migrations/0002_approvals.sql`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    pub approval_id: String,
    pub thread_id: String,
    pub session_id: String,
    pub event_id: String,
    pub request_id: String,
    pub incarnation: String,
    pub kind: String,
    pub tool_name: String,
    pub input: String,
    pub fingerprint: String,
    pub post_ref: i32,
    pub status: String,
    pub progress: Option<String>,
    pub answer: Option<String>,
    pub decided_by_name: Option<String>,
    pub delivered: bool,
    /// Milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// One attempt to answer an approval, for the audit.
#[derive(Debug, Clone)]
pub struct AnswerAttempt<'a> {
    pub approval_id: &'a str,
    pub thread_id: &'a str,
    pub user_id: &'a str,
    pub username: &'a str,
    pub action: &'a str,
    pub via: &'a str,
    pub outcome: &'a str,
}

const APPROVAL_COLUMNS: &str =
    "approval_id, thread_id, session_id, event_id, request_id, incarnation, kind,
     tool_name, input, fingerprint, post_ref, status, progress, answer, decided_by_name,
     delivered_at IS NOT NULL, (extract(epoch from expires_at) * 1000)::bigint";

fn approval_row(r: &tokio_postgres::Row) -> ApprovalRow {
    ApprovalRow {
        approval_id: r.get(0),
        thread_id: r.get(1),
        session_id: r.get(2),
        event_id: r.get(3),
        request_id: r.get(4),
        incarnation: r.get(5),
        kind: r.get(6),
        tool_name: r.get(7),
        input: r.get(8),
        fingerprint: r.get(9),
        post_ref: r.get(10),
        status: r.get(11),
        progress: r.get(12),
        answer: r.get(13),
        decided_by_name: r.get(14),
        delivered: r.get(15),
        expires_at_ms: r.get(16),
    }
}

/// What is known of an inbound event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// First time seen.
    New,
    /// Seen before, but its outcome never completed (a worker died mid-turn).
    Unfinished,
    /// Already handled: a redelivery.
    Handled,
}

/// A turn and the trace it ran in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnTrace {
    pub turn: i32,
    /// 32 hex digits; `None` for turns recorded before traces were.
    pub trace_id: Option<String>,
    /// `None` while the turn runs.
    pub duration_ms: Option<i64>,
}

#[derive(Clone)]
pub struct Records {
    pool: Pool,
}

impl Records {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool, for readers that live beside the record (the usage record's sums).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(Error::Pool)
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(Error::Query)?;
        client
            .execute(&statement, params)
            .await
            .map_err(Error::Query)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, Error> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(Error::Query)?;
        client.query(&statement, params).await.map_err(Error::Query)
    }

    pub async fn session(&self, thread: &str) -> Result<Option<SessionRow>, Error> {
        let rows = self
            .query(
                "SELECT thread_id, session_id, channel_id, started_by, started_by_name, permission_mode,
                        owner, cli_session_id, status, turns, header_ref
                 FROM sessions WHERE thread_id = $1",
                &[&thread],
            )
            .await?;
        Ok(rows.first().map(|r| SessionRow {
            thread_id: r.get(0),
            session_id: r.get(1),
            channel_id: r.get(2),
            started_by: r.get(3),
            started_by_name: r.get(4),
            permission_mode: r.get(5),
            owner: r.get(6),
            cli_session_id: r.get(7),
            status: r.get(8),
            turns: r.get(9),
            header_ref: r.get(10),
        }))
    }

    pub async fn has_session(&self, thread: &str) -> Result<bool, Error> {
        Ok(!self
            .query("SELECT 1 FROM sessions WHERE thread_id = $1", &[&thread])
            .await?
            .is_empty())
    }

    /// Creates the session of a thread unless it exists; returns the stored row.
    pub async fn create_session(&self, row: &SessionRow) -> Result<SessionRow, Error> {
        self.execute(
            "INSERT INTO sessions (thread_id, session_id, channel_id, started_by, started_by_name,
                                   permission_mode, owner, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (thread_id) DO NOTHING",
            &[
                &row.thread_id,
                &row.session_id,
                &row.channel_id,
                &row.started_by,
                &Text(&row.started_by_name),
                &row.permission_mode,
                &row.owner,
                &row.status,
            ],
        )
        .await?;
        self.execute(
            "INSERT INTO participants (thread_id, user_id, username, role) VALUES ($1, $2, $3, 'owner')
             ON CONFLICT DO NOTHING",
            &[&row.thread_id, &row.started_by, &Text(&row.started_by_name)],
        )
        .await?;
        Ok(self
            .session(&row.thread_id)
            .await?
            .unwrap_or_else(|| row.clone()))
    }

    pub async fn set_owner(
        &self,
        thread: &str,
        owner: Option<&str>,
        status: &str,
    ) -> Result<(), Error> {
        self.execute(
            "UPDATE sessions SET owner = $2, status = $3, updated_at = now() WHERE thread_id = $1",
            &[&thread, &owner, &status],
        )
        .await
        .map(|_| ())
    }

    /// Sets the status, only while `owner` still holds the thread.
    pub async fn set_status(&self, thread: &str, owner: &str, status: &str) -> Result<(), Error> {
        self.execute(
            "UPDATE sessions SET status = $3, updated_at = now() WHERE thread_id = $1 AND owner = $2",
            &[&thread, &owner, &status],
        )
        .await
        .map(|_| ())
    }

    pub async fn set_cli_session(&self, thread: &str, cli_session_id: &str) -> Result<(), Error> {
        self.execute(
            "UPDATE sessions SET cli_session_id = $2, updated_at = now() WHERE thread_id = $1",
            &[&thread, &cli_session_id],
        )
        .await
        .map(|_| ())
    }

    pub async fn set_header_ref(&self, thread: &str, header_ref: i32) -> Result<(), Error> {
        self.execute(
            "UPDATE sessions SET header_ref = $2 WHERE thread_id = $1",
            &[&thread, &header_ref],
        )
        .await
        .map(|_| ())
    }

    /// Threads whose owner is recorded (they were not released cleanly).
    pub async fn owned_sessions(&self) -> Result<Vec<(String, String)>, Error> {
        let rows = self
            .query(
                "SELECT thread_id, owner FROM sessions WHERE owner IS NOT NULL",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn participants(&self, thread: &str) -> Result<Vec<String>, Error> {
        let rows = self
            .query(
                "SELECT username FROM participants WHERE thread_id = $1 ORDER BY added_at, username",
                &[&thread],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Records an inbound event; tells whether it is new, unfinished or handled.
    pub async fn record_inbound(
        &self,
        event: &ChatEvent,
        kind: &str,
        body: &str,
    ) -> Result<Inbound, Error> {
        let received = i64::try_from(event.received_at_ms).unwrap_or(0) as f64 / 1000.0;
        let inserted = self
            .execute(
                "INSERT INTO inbound_messages (event_id, thread_id, user_id, username, kind, body, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7)) ON CONFLICT (event_id) DO NOTHING",
                &[
                    &event.event_id,
                    &event.thread.as_str(),
                    &event.user.id.as_str(),
                    &Text(&event.user.username),
                    &kind,
                    &Text(body),
                    &received,
                ],
            )
            .await?;
        if inserted == 1 {
            return Ok(Inbound::New);
        }
        let rows = self
            .query(
                "SELECT handled_at IS NOT NULL FROM inbound_messages WHERE event_id = $1",
                &[&event.event_id],
            )
            .await?;
        Ok(match rows.first().map(|r| r.get::<_, bool>(0)) {
            Some(true) => Inbound::Handled,
            _ => Inbound::Unfinished,
        })
    }

    /// Counts one more turn started for the prompt `event_id`; returns how many were
    /// started, this one included (1 for an event without a record).
    pub async fn count_turn_start(&self, event_id: &str) -> Result<i32, Error> {
        let rows = self
            .query(
                "UPDATE inbound_messages SET turn_starts = turn_starts + 1 WHERE event_id = $1 RETURNING turn_starts",
                &[&event_id],
            )
            .await?;
        Ok(rows.first().map_or(1, |row| row.get(0)))
    }

    pub async fn mark_handled(&self, event_id: &str, turn: Option<i32>) -> Result<(), Error> {
        self.execute(
            "UPDATE inbound_messages SET handled_at = now(), turn = $2 WHERE event_id = $1 AND handled_at IS NULL",
            &[&event_id, &turn],
        )
        .await
        .map(|_| ())
    }

    /// The stream sequence after which the thread's events are still to be read, recorded
    /// when its consumer was deleted.
    pub async fn events_after(&self, thread: &str) -> Result<Option<u64>, Error> {
        let rows = self
            .query(
                "SELECT after_seq FROM thread_cursors WHERE thread_id = $1",
                &[&thread],
            )
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    pub async fn set_events_after(&self, thread: &str, after: u64) -> Result<(), Error> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.execute(
            "INSERT INTO thread_cursors (thread_id, after_seq) VALUES ($1, $2)
             ON CONFLICT (thread_id) DO UPDATE SET after_seq = EXCLUDED.after_seq, updated_at = now()",
            &[&thread, &after],
        )
        .await
        .map(|_| ())
    }

    /// Earlier messages of the thread kept as context (not yet given to the agent).
    pub async fn pending_context(
        &self,
        thread: &str,
    ) -> Result<Vec<(String, String, String)>, Error> {
        let rows = self
            .query(
                "SELECT event_id, username, body FROM inbound_messages
                 WHERE thread_id = $1 AND kind = 'context' AND handled_at IS NULL ORDER BY received_at, event_id",
                &[&thread],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Starts turn `turn` (idempotent: a retried turn keeps its row, with the trace of its
    /// latest start).
    pub async fn start_turn(
        &self,
        thread: &str,
        turn: i32,
        event_id: &str,
        worker: &str,
        trace_id: Option<&str>,
    ) -> Result<(), Error> {
        // One round trip: the turn's row and the session's count together.
        self.execute(
            "WITH started AS (
                 INSERT INTO turns (thread_id, turn, event_id, worker, started_at, trace_id) VALUES ($1, $2, $3, $4, now(), $5)
                 ON CONFLICT (thread_id, turn) DO UPDATE SET worker = EXCLUDED.worker, started_at = now(), trace_id = EXCLUDED.trace_id
             )
             UPDATE sessions SET turns = GREATEST(turns, $2), updated_at = now() WHERE thread_id = $1",
            &[&thread, &turn, &event_id, &worker, &trace_id],
        )
        .await
        .map(|_| ())
    }

    /// The latest `limit` turns of a thread, newest first, with their trace ids.
    pub async fn turn_traces(&self, thread: &str, limit: i64) -> Result<Vec<TurnTrace>, Error> {
        let rows = self
            .query(
                "SELECT turn, trace_id, duration_ms FROM turns WHERE thread_id = $1
                 ORDER BY turn DESC LIMIT $2",
                &[&thread, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TurnTrace {
                turn: r.get(0),
                trace_id: r.get(1),
                duration_ms: r.get(2),
            })
            .collect())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn finish_turn(
        &self,
        thread: &str,
        turn: i32,
        duration_ms: i64,
        usage: [i64; 4],
        cost_usd: f64,
        is_error: bool,
    ) -> Result<(), Error> {
        self.execute(
            "UPDATE turns SET finished_at = now(), duration_ms = $3, input_tokens = $4, output_tokens = $5,
                    cache_read_tokens = $6, cache_creation_tokens = $7, cost_usd = $8, is_error = $9
             WHERE thread_id = $1 AND turn = $2",
            &[&thread, &turn, &duration_ms, &usage[0], &usage[1], &usage[2], &usage[3], &cost_usd, &is_error],
        )
        .await
        .map(|_| ())
    }

    /// Usage so far: (turns, input tokens, output tokens, cost).
    pub async fn usage(&self, thread: &str) -> Result<(i64, i64, i64, f64), Error> {
        let rows = self
            .query(
                "SELECT count(*), COALESCE(sum(input_tokens + COALESCE(cache_read_tokens,0) + COALESCE(cache_creation_tokens,0)),0)::bigint,
                        COALESCE(sum(output_tokens),0)::bigint, COALESCE(sum(cost_usd),0)::float8
                 FROM turns WHERE thread_id = $1 AND finished_at IS NOT NULL",
                &[&thread],
            )
            .await?;
        Ok(rows
            .first()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .unwrap_or_default())
    }

    pub async fn record_reply(
        &self,
        session: &str,
        seq: i64,
        thread: &str,
        kind: &str,
        body: &str,
    ) -> Result<(), Error> {
        self.execute(
            "INSERT INTO outbound_replies (session_id, seq, thread_id, kind, body) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&session, &seq, &thread, &kind, &Text(body)],
        )
        .await
        .map(|_| ())
    }

    pub async fn record_checkpoint(
        &self,
        thread: &str,
        turn: i32,
        key: &str,
        size: i64,
        worker: &str,
    ) -> Result<(), Error> {
        self.execute(
            "INSERT INTO checkpoints (thread_id, turn, object_key, size_bytes, worker) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (thread_id, turn) DO UPDATE SET object_key = EXCLUDED.object_key,
                 size_bytes = EXCLUDED.size_bytes, worker = EXCLUDED.worker, created_at = now(),
                 unrestorable = NULL",
            &[&thread, &turn, &key, &size, &worker],
        )
        .await
        .map(|_| ())
    }

    /// The thread's checkpoints not known to be unrestorable, latest first: (turn, key).
    pub async fn restorable_checkpoints(&self, thread: &str) -> Result<Vec<(i32, String)>, Error> {
        let rows = self
            .query(
                "SELECT turn, object_key FROM checkpoints WHERE thread_id = $1 AND unrestorable IS NULL
                 ORDER BY turn DESC",
                &[&thread],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Records why a checkpoint could not be restored, so later starts skip it.
    pub async fn mark_unrestorable(
        &self,
        thread: &str,
        turn: i32,
        reason: &str,
    ) -> Result<(), Error> {
        self.execute(
            "UPDATE checkpoints SET unrestorable = $3 WHERE thread_id = $1 AND turn = $2",
            &[&thread, &turn, &reason],
        )
        .await
        .map(|_| ())
    }

    pub async fn record_artifact(
        &self,
        thread: &str,
        turn: i32,
        path: &str,
        key: &str,
        size: i64,
        content_type: &str,
    ) -> Result<(), Error> {
        self.execute(
            "INSERT INTO artifacts (thread_id, turn, path, object_key, size_bytes, content_type)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[&thread, &turn, &Text(path), &key, &size, &content_type],
        )
        .await
        .map(|_| ())
    }

    pub async fn insert_approval(&self, row: &ApprovalRow) -> Result<(), Error> {
        let expires = row.expires_at_ms as f64 / 1000.0;
        self.execute(
            "INSERT INTO approvals (approval_id, thread_id, session_id, event_id, request_id, incarnation,
                                    kind, tool_name, input, fingerprint, post_ref, status, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, to_timestamp($13))
             ON CONFLICT (approval_id) DO NOTHING",
            &[
                &row.approval_id,
                &row.thread_id,
                &row.session_id,
                &row.event_id,
                &row.request_id,
                &row.incarnation,
                &row.kind,
                &Text(&row.tool_name),
                &Text(&row.input),
                &row.fingerprint,
                &row.post_ref,
                &row.status,
                &expires,
            ],
        )
        .await
        .map(|_| ())
    }

    pub async fn approval(&self, approval_id: &str) -> Result<Option<ApprovalRow>, Error> {
        let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE approval_id = $1");
        let rows = self.query(&sql, &[&approval_id]).await?;
        Ok(rows.first().map(approval_row))
    }

    /// An approval of the same turn asked by an earlier CLI process and not yet
    /// delivered: the request a resumed CLI asks again.
    pub async fn reasked_approval(
        &self,
        thread: &str,
        event_id: &str,
        fingerprint: &str,
        incarnation: &str,
    ) -> Result<Option<ApprovalRow>, Error> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE thread_id = $1 AND event_id = $2 AND fingerprint = $3 AND incarnation <> $4
               AND delivered_at IS NULL AND status IN ('pending', 'allowed', 'allowed_always', 'denied', 'answered', 'timed_out')
             ORDER BY created_at LIMIT 1"
        );
        let rows = self
            .query(&sql, &[&thread, &event_id, &fingerprint, &incarnation])
            .await?;
        Ok(rows.first().map(approval_row))
    }

    /// Approvals of the thread still waiting for an answer.
    pub async fn open_approvals(&self, thread: &str) -> Result<Vec<ApprovalRow>, Error> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE thread_id = $1 AND status = 'pending' ORDER BY created_at"
        );
        let rows = self.query(&sql, &[&thread]).await?;
        Ok(rows.iter().map(approval_row).collect())
    }

    /// Records a top-up given in a thread.
    pub async fn add_top_up(&self, top_up: &TopUp<'_>) -> Result<(), Error> {
        self.execute(
            "INSERT INTO budget_top_ups (budget, session_id, user_id, channel_id, amount_usd, given_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &top_up.budget,
                &top_up.session_id,
                &top_up.user_id,
                &top_up.channel_id,
                &top_up.amount_usd,
                &top_up.by,
            ],
        )
        .await
        .map(|_| ())
    }

    /// The top-ups that count now for a session, its owner's and its channel's UTC day:
    /// (session, user day, channel day), in dollars.
    pub async fn top_ups(
        &self,
        session_id: &str,
        user_id: &str,
        channel_id: &str,
    ) -> Result<(f64, f64, f64), Error> {
        let rows = self
            .query(
                "SELECT
                   COALESCE(SUM(amount_usd) FILTER (WHERE budget = 'session' AND session_id = $1), 0),
                   COALESCE(SUM(amount_usd) FILTER (WHERE budget = 'user_day' AND user_id = $2), 0),
                   COALESCE(SUM(amount_usd) FILTER (WHERE budget = 'channel_day' AND channel_id = $3), 0)
                 FROM budget_top_ups
                 WHERE (session_id = $1 OR user_id = $2 OR channel_id = $3)
                   AND (budget = 'session' OR day = (now() AT TIME ZONE 'utc')::date)",
                &[&session_id, &user_id, &channel_id],
            )
            .await?;
        let row = rows.first();
        Ok(row.map_or((0.0, 0.0, 0.0), |r| (r.get(0), r.get(1), r.get(2))))
    }

    /// What the thread said about hosts its session's egress gateway refused (asked,
    /// allowed once or for the session, denied), oldest first.
    pub async fn domain_approvals(&self, thread: &str) -> Result<Vec<ApprovalRow>, Error> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE thread_id = $1 AND kind = 'domain' ORDER BY created_at"
        );
        let rows = self.query(&sql, &[&thread]).await?;
        Ok(rows.iter().map(approval_row).collect())
    }

    /// The repository the session works on, if any.
    pub async fn session_repo(&self, thread: &str) -> Result<Option<SessionRepo>, Error> {
        let rows = self
            .query(
                "SELECT repo, branch, base, start_commit, review_url
                 FROM session_repositories WHERE thread_id = $1",
                &[&thread],
            )
            .await?;
        Ok(rows.first().map(|r| SessionRepo {
            repo: r.get(0),
            branch: r.get(1),
            base: r.get(2),
            start_commit: r.get(3),
            review_url: r.get(4),
        }))
    }

    /// Records the session's repository once it is checked out. A session keeps the first
    /// one recorded: `false` when it already had one.
    pub async fn set_session_repo(&self, thread: &str, repo: &SessionRepo) -> Result<bool, Error> {
        self.execute(
            "INSERT INTO session_repositories (thread_id, repo, branch, base, start_commit)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (thread_id) DO NOTHING",
            &[
                &thread,
                &repo.repo,
                &repo.branch,
                &repo.base,
                &repo.start_commit,
            ],
        )
        .await
        .map(|n| n == 1)
    }

    /// Records a push: its commit and its review, if one was opened or updated.
    pub async fn set_pushed(
        &self,
        thread: &str,
        commit: &str,
        review_url: Option<&str>,
    ) -> Result<(), Error> {
        self.execute(
            "UPDATE session_repositories
             SET pushed_commit = $2, review_url = COALESCE($3, review_url), updated_at = now()
             WHERE thread_id = $1",
            &[&thread, &commit, &review_url],
        )
        .await
        .map(|_| ())
    }

    /// Pushes someone asked for that were not carried out (their worker stopped first).
    pub async fn unfinished_pushes(&self, thread: &str) -> Result<Vec<ApprovalRow>, Error> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE thread_id = $1 AND kind = 'push' AND status = 'allowed' AND delivered_at IS NULL
             ORDER BY created_at"
        );
        let rows = self.query(&sql, &[&thread]).await?;
        Ok(rows.iter().map(approval_row).collect())
    }

    /// Outsiders' messages the owner let in that were not yet handed back to the thread.
    pub async fn undelivered_admissions(&self, thread: &str) -> Result<Vec<ApprovalRow>, Error> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE thread_id = $1 AND kind = 'guest' AND status = 'allowed' AND delivered_at IS NULL
             ORDER BY created_at"
        );
        let rows = self.query(&sql, &[&thread]).await?;
        Ok(rows.iter().map(approval_row).collect())
    }

    /// Points an approval at the CLI's new request (after a resume).
    pub async fn rebind_approval(
        &self,
        approval_id: &str,
        request_id: &str,
        incarnation: &str,
    ) -> Result<(), Error> {
        self.execute(
            "UPDATE approvals SET request_id = $2, incarnation = $3 WHERE approval_id = $1",
            &[&approval_id, &request_id, &incarnation],
        )
        .await
        .map(|_| ())
    }

    /// Decides a pending approval; false when it was already decided (the first answer
    /// wins).
    #[allow(clippy::too_many_arguments)]
    pub async fn decide_approval(
        &self,
        approval_id: &str,
        status: &str,
        answer: &str,
        user_id: &str,
        username: &str,
        via: &str,
    ) -> Result<bool, Error> {
        let n = self
            .execute(
                "UPDATE approvals SET status = $2, answer = $3, decided_by = $4, decided_by_name = $5,
                        decided_via = $6, decided_at = now()
                 WHERE approval_id = $1 AND status = 'pending'",
                &[&approval_id, &status, &answer, &user_id, &username, &via],
            )
            .await?;
        Ok(n == 1)
    }

    /// Replaces a pending approval's input (a push offer's commit message edited in the
    /// thread); `false` once it is decided.
    pub async fn set_approval_input(&self, approval_id: &str, input: &str) -> Result<bool, Error> {
        self.execute(
            "UPDATE approvals SET input = $2 WHERE approval_id = $1 AND status = 'pending'",
            &[&approval_id, &input],
        )
        .await
        .map(|n| n == 1)
    }

    /// The push offer of the thread waiting for an answer, if any.
    pub async fn pending_push(&self, thread: &str) -> Result<Option<ApprovalRow>, Error> {
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE thread_id = $1 AND kind = 'push' AND status = 'pending'
             ORDER BY created_at DESC LIMIT 1"
        );
        let rows = self.query(&sql, &[&thread]).await?;
        Ok(rows.first().map(approval_row))
    }

    pub async fn set_approval_progress(
        &self,
        approval_id: &str,
        progress: &str,
    ) -> Result<(), Error> {
        self.execute(
            "UPDATE approvals SET progress = $2 WHERE approval_id = $1 AND status = 'pending'",
            &[&approval_id, &progress],
        )
        .await
        .map(|_| ())
    }

    pub async fn mark_approval_delivered(&self, approval_id: &str) -> Result<(), Error> {
        self.execute(
            "UPDATE approvals SET delivered_at = now() WHERE approval_id = $1 AND delivered_at IS NULL",
            &[&approval_id],
        )
        .await
        .map(|_| ())
    }

    /// Closes an approval nobody needs any more (withdrawn, turn over); keeps decisions.
    pub async fn close_approval(&self, approval_id: &str, status: &str) -> Result<(), Error> {
        self.execute(
            "UPDATE approvals SET status = CASE WHEN status = 'pending' THEN $2 ELSE status END,
                    delivered_at = COALESCE(delivered_at, now())
             WHERE approval_id = $1",
            &[&approval_id, &status],
        )
        .await
        .map(|_| ())
    }

    pub async fn record_answer_attempt(&self, attempt: &AnswerAttempt<'_>) -> Result<(), Error> {
        self.execute(
            "INSERT INTO approval_answers (approval_id, thread_id, user_id, username, action, via, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &attempt.approval_id,
                &attempt.thread_id,
                &attempt.user_id,
                &Text(attempt.username),
                &Text(attempt.action),
                &attempt.via,
                &attempt.outcome,
            ],
        )
        .await
        .map(|_| ())
    }

    /// Adds a participant (idempotent). Invited users may be known by name only.
    pub async fn add_participant(
        &self,
        thread: &str,
        user_id: &str,
        username: &str,
        role: &str,
    ) -> Result<bool, Error> {
        let n = self
            .execute(
                "INSERT INTO participants (thread_id, user_id, username, role)
                 SELECT $1, $2, $3, $4
                 WHERE NOT EXISTS (SELECT 1 FROM participants WHERE thread_id = $1 AND username = $3)
                 ON CONFLICT DO NOTHING",
                &[&thread, &user_id, &Text(username), &role],
            )
            .await?;
        Ok(n == 1)
    }

    /// Removes a participant other than the owner; true when one was removed.
    pub async fn remove_participant(&self, thread: &str, username: &str) -> Result<bool, Error> {
        let n = self
            .execute(
                "DELETE FROM participants WHERE thread_id = $1 AND username = $2 AND role <> 'owner'",
                &[&thread, &username],
            )
            .await?;
        Ok(n > 0)
    }

    pub async fn set_permission_mode(&self, thread: &str, mode: &str) -> Result<(), Error> {
        self.execute(
            "UPDATE sessions SET permission_mode = $2, updated_at = now() WHERE thread_id = $1",
            &[&thread, &mode],
        )
        .await
        .map(|_| ())
    }

    /// Sessions started by `user_id` that a worker holds now, other than `thread`.
    pub async fn live_sessions_of(&self, user_id: &str, thread: &str) -> Result<i64, Error> {
        let rows = self
            .query(
                "SELECT count(*) FROM sessions WHERE started_by = $1 AND owner IS NOT NULL AND thread_id <> $2",
                &[&user_id, &thread],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }

    /// The username last seen for `user_id` (reaction events carry only the id).
    pub async fn username_of(&self, user_id: &str) -> Result<Option<String>, Error> {
        let rows = self
            .query(
                "SELECT username FROM (
                     SELECT started_by_name AS username, updated_at AS at FROM sessions WHERE started_by = $1
                     UNION ALL
                     SELECT username, added_at FROM participants WHERE user_id = $1
                     UNION ALL
                     SELECT username, received_at FROM inbound_messages WHERE user_id = $1
                 ) seen WHERE username <> '' ORDER BY at DESC LIMIT 1",
                &[&user_id],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }
}
