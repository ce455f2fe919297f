//! What the admin API reads from the workers' record in PostgreSQL (sessions, turns,
//! approvals and their answers), and the audit of admin actions it writes
//! (`admin_audit`, created by the workers' migration `0006_admin_audit`).
//!
//! Read only, except the audit: the gateway decides nothing about sessions.

use deadpool_postgres::Pool;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database unavailable")]
    Pool(#[source] deadpool_postgres::PoolError),
    #[error("database query failed")]
    Query(#[source] tokio_postgres::Error),
}

/// A timestamp column as RFC 3339 text in UTC (millisecond precision).
fn ts(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub thread_id: String,
    pub session_id: String,
    pub channel_id: String,
    pub started_by: String,
    pub started_by_name: String,
    pub status: String,
    /// The worker holding the thread; `null` once it released it.
    pub worker: Option<String>,
    pub permission_mode: String,
    pub turns: i32,
    pub cost_usd: f64,
    pub created_at: String,
    pub updated_at: String,
}

fn summary_columns() -> String {
    format!(
        "s.thread_id, s.session_id, s.channel_id, s.started_by, s.started_by_name, s.status,
         s.owner, s.permission_mode, s.turns,
         COALESCE((SELECT sum(t.cost_usd) FROM turns t WHERE t.thread_id = s.thread_id), 0)::float8,
         {}, {}",
        ts("s.created_at"),
        ts("s.updated_at")
    )
}

fn summary(r: &tokio_postgres::Row) -> SessionSummary {
    SessionSummary {
        thread_id: r.get(0),
        session_id: r.get(1),
        channel_id: r.get(2),
        started_by: r.get(3),
        started_by_name: r.get(4),
        status: r.get(5),
        worker: r.get(6),
        permission_mode: r.get(7),
        turns: r.get(8),
        cost_usd: r.get(9),
        created_at: r.get(10),
        updated_at: r.get(11),
    }
}

/// Filters of the session list; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub state: Option<String>,
    /// A user id or username of who started the session.
    pub user: Option<String>,
    pub channel: Option<String>,
    pub worker: Option<String>,
    /// Only threads after this id (the previous page's `next_cursor`).
    pub after: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Turn {
    pub turn: i32,
    pub worker: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_creation_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
    pub is_error: Option<bool>,
    /// The turn's trace; not recorded yet.
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub user_id: String,
    pub username: String,
    pub action: String,
    pub via: String,
    pub outcome: String,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub approval_id: String,
    pub kind: String,
    pub tool_name: String,
    pub status: String,
    pub decided_by_name: Option<String>,
    pub decided_via: Option<String>,
    pub created_at: String,
    pub decided_at: Option<String>,
    /// Every attempt to answer, accepted or not.
    pub answers: Vec<Answer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub pool: Pool,
}

impl Record {
    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(Error::Pool)
    }

    /// One page of sessions in thread id order, and whether there are more.
    pub async fn sessions(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<SessionSummary>, bool), Error> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM sessions s
             WHERE ($1::text IS NULL OR s.status = $1)
               AND ($2::text IS NULL OR s.started_by = $2 OR s.started_by_name = $2)
               AND ($3::text IS NULL OR s.channel_id = $3)
               AND ($4::text IS NULL OR s.owner = $4)
               AND ($5::text IS NULL OR s.thread_id > $5)
             ORDER BY s.thread_id
             LIMIT $6",
            summary_columns()
        );
        let fetch = (limit + 1) as i64;
        let rows = client
            .query(
                &sql,
                &[
                    &filter.state,
                    &filter.user,
                    &filter.channel,
                    &filter.worker,
                    &filter.after,
                    &fetch,
                ],
            )
            .await
            .map_err(Error::Query)?;
        let more = rows.len() > limit;
        Ok((rows.iter().take(limit).map(summary).collect(), more))
    }

    /// The session of a thread, found by thread id or session id.
    pub async fn session(&self, id: &str) -> Result<Option<SessionSummary>, Error> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM sessions s WHERE s.thread_id = $1 OR s.session_id = $1 LIMIT 1",
            summary_columns()
        );
        let row = client.query_opt(&sql, &[&id]).await.map_err(Error::Query)?;
        Ok(row.as_ref().map(summary))
    }

    /// Threads whose session a worker holds now.
    pub async fn owned(&self) -> Result<Vec<SessionSummary>, Error> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM sessions s WHERE s.owner IS NOT NULL ORDER BY s.thread_id",
            summary_columns()
        );
        let rows = client.query(&sql, &[]).await.map_err(Error::Query)?;
        Ok(rows.iter().map(summary).collect())
    }

    pub async fn turns(&self, thread: &str) -> Result<Vec<Turn>, Error> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT turn, worker, {}, {}, duration_ms, input_tokens, output_tokens,
                    cache_read_tokens, cache_creation_tokens, cost_usd, is_error, trace_id
             FROM turns WHERE thread_id = $1 ORDER BY turn",
            ts("started_at"),
            ts("finished_at")
        );
        let rows = client.query(&sql, &[&thread]).await.map_err(Error::Query)?;
        Ok(rows
            .iter()
            .map(|r| Turn {
                turn: r.get(0),
                worker: r.get(1),
                started_at: r.get(2),
                finished_at: r.get(3),
                duration_ms: r.get(4),
                input_tokens: r.get(5),
                output_tokens: r.get(6),
                cache_read_tokens: r.get(7),
                cache_creation_tokens: r.get(8),
                cost_usd: r.get(9),
                is_error: r.get(10),
                trace_id: r.get(11),
            })
            .collect())
    }

    pub async fn approvals(&self, thread: &str) -> Result<Vec<Approval>, Error> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT approval_id, kind, tool_name, status, decided_by_name, decided_via, {}, {}
             FROM approvals WHERE thread_id = $1 ORDER BY created_at, approval_id",
            ts("created_at"),
            ts("decided_at")
        );
        let rows = client.query(&sql, &[&thread]).await.map_err(Error::Query)?;
        let sql = format!(
            "SELECT approval_id, user_id, username, action, via, outcome, {}
             FROM approval_answers WHERE thread_id = $1 ORDER BY id",
            ts("at")
        );
        let answers = client.query(&sql, &[&thread]).await.map_err(Error::Query)?;
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get(0);
                Approval {
                    answers: answers
                        .iter()
                        .filter(|a| a.get::<_, &str>(0) == id)
                        .map(|a| Answer {
                            user_id: a.get(1),
                            username: a.get(2),
                            action: a.get(3),
                            via: a.get(4),
                            outcome: a.get(5),
                            at: a.get(6),
                        })
                        .collect(),
                    approval_id: id,
                    kind: r.get(1),
                    tool_name: r.get(2),
                    status: r.get(3),
                    decided_by_name: r.get(4),
                    decided_via: r.get(5),
                    created_at: r.get(6),
                    decided_at: r.get(7),
                }
            })
            .collect())
    }

    /// Admin actions on `target`, oldest first.
    pub async fn audit_of(&self, target: &str) -> Result<Vec<AuditEntry>, Error> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT id, {}, actor, action, target, outcome, detail
             FROM admin_audit WHERE target = $1 ORDER BY id",
            ts("at")
        );
        let rows = client.query(&sql, &[&target]).await.map_err(Error::Query)?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                outcome: r.get(5),
                detail: r.get(6),
            })
            .collect())
    }

    /// Records an admin action before it is carried out; returns the row to finish.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
    ) -> Result<i64, Error> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO admin_audit (actor, action, target, outcome) VALUES ($1, $2, $3, $4)
                 RETURNING id",
                &[&actor, &action, &target, &outcome],
            )
            .await
            .map_err(Error::Query)?;
        Ok(row.get(0))
    }

    /// Sets how an audited action ended.
    pub async fn finish(&self, id: i64, outcome: &str, detail: Option<&str>) -> Result<(), Error> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE admin_audit SET outcome = $2, detail = $3 WHERE id = $1",
                &[&id, &outcome, &detail],
            )
            .await
            .map_err(Error::Query)?;
        Ok(())
    }
}
