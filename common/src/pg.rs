//! PostgreSQL: a deadpool pool and a small versioned-migration runner.
//!
//! Why our own runner rather than refinery or sqlx: the fleet's schema is a handful of
//! plain SQL files owned by the crate that uses them; what we need is exactly "apply the
//! ones not applied yet, in order, each in a transaction, once across a fleet that starts
//! all at once". An advisory lock gives the "once"; a checksum per applied migration
//! catches a released file that was edited. That is 80 lines with no extra dependency
//! tree, and it works on the deadpool client we already hold.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sha2::{Digest, Sha256};

use crate::config::PostgresConfig;

/// Key of the advisory lock held while migrating (`ccfleet` in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_6366_6c65_6574;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid postgres.url")]
    Url(#[source] tokio_postgres::Error),
    #[error("could not build the connection pool")]
    Build(#[source] deadpool_postgres::BuildError),
    #[error("could not get a database connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    #[error("database query failed")]
    Query(#[source] tokio_postgres::Error),
    #[error("migration {version} failed")]
    Migration {
        version: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("migration {version} was changed after it was applied (checksum {applied} ≠ {now})")]
    Drift {
        version: String,
        applied: String,
        now: String,
    },
}

/// A versioned SQL script. Released migrations are never edited; add a new one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: &'static str,
    pub sql: &'static str,
}

pub fn pool(config: &PostgresConfig) -> Result<Pool, Error> {
    let mut pg = tokio_postgres::Config::from_str(config.url.expose()).map_err(Error::Url)?;
    pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    // A server that vanished (host down, network cut) is noticed by TCP keepalive instead
    // of a query waiting for ever; a statement that hangs is cancelled by the server.
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(15));
    pg.keepalives_interval(Duration::from_secs(5));
    pg.keepalives_retries(3);
    if config.statement_timeout_ms > 0 {
        pg.options(format!(
            "-c statement_timeout={}",
            config.statement_timeout_ms
        ));
    }
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .build()
        .map_err(Error::Build)
}

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies the migrations not applied yet, in order. Returns the versions it applied.
pub async fn migrate(pool: &Pool, migrations: &[Migration]) -> Result<Vec<String>, Error> {
    let mut client = pool.get().await.map_err(Error::Pool)?;
    // Taken before anything else: even `CREATE TABLE IF NOT EXISTS` races with itself.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(Error::Query)?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS ccfleet_migrations (
                version text PRIMARY KEY,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
            )
            .await
            .map_err(Error::Query)?;
        apply(&mut client, migrations).await
    }
    .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(Error::Query);
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply(
    client: &mut deadpool_postgres::Object,
    migrations: &[Migration],
) -> Result<Vec<String>, Error> {
    let rows = client
        .query("SELECT version, checksum FROM ccfleet_migrations", &[])
        .await
        .map_err(Error::Query)?;
    let done: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut applied = Vec::new();
    for migration in migrations {
        let sum = checksum(migration.sql);
        if let Some(previous) = done.get(migration.version) {
            if *previous != sum {
                return Err(Error::Drift {
                    version: migration.version.to_owned(),
                    applied: previous.clone(),
                    now: sum,
                });
            }
            continue;
        }
        let err = |source| Error::Migration {
            version: migration.version.to_owned(),
            source,
        };
        let tx = client.transaction().await.map_err(err)?;
        tx.batch_execute(migration.sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO ccfleet_migrations (version, checksum) VALUES ($1, $2)",
            &[&migration.version, &sum],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        tracing::info!(version = migration.version, "migration applied");
        applied.push(migration.version.to_owned());
    }
    Ok(applied)
}
