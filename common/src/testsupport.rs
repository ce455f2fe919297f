//! Test support: each test gets its own slice of the real local services started by
//! `deploy/local/services up` — a NATS subject/stream prefix, a fresh PostgreSQL
//! database, and an object-store key prefix — and a [`Config`] pointing at them.
//!
//! The services' addresses come from the state file that script writes
//! (`deploy/local/.state/services.env`, or the file named by `CCFLEET_SERVICES_ENV`).
//! When the services are not running, tests fail at once with a message saying how to
//! start them, rather than timing out.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::{Config, Sources};

/// The addresses and credentials of the local services.
#[derive(Debug, Clone)]
pub struct Services {
    vars: HashMap<String, String>,
    path: PathBuf,
}

fn state_file() -> PathBuf {
    if let Some(path) = std::env::var_os("CCFLEET_SERVICES_ENV") {
        return PathBuf::from(path);
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/local/.state/services.env"
    ))
}

const HOW_TO_START: &str = "start the local services first: `deploy/local/services up`";

impl Services {
    /// The running local services. Panics with instructions when they are not running.
    pub fn get() -> &'static Services {
        static SERVICES: OnceLock<Services> = OnceLock::new();
        SERVICES.get_or_init(|| Services::read(&state_file()))
    }

    /// The services whose state file is `path` (another instance of the script, e.g. one
    /// a fault run stops and starts). Panics with instructions when they are not running.
    pub fn read(path: &std::path::Path) -> Services {
        {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
                panic!(
                    "local services state {} unreadable ({e}): {HOW_TO_START}",
                    path.display()
                )
            });
            let vars: HashMap<String, String> = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                .collect();
            let services = Services {
                vars,
                path: path.to_owned(),
            };
            for key in ["NATS_URL", "POSTGRES_URL", "S3_ENDPOINT"] {
                let url = services.var(key);
                let addr = url
                    .split("://")
                    .nth(1)
                    .and_then(|rest| rest.rsplit('@').next())
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default()
                    .to_owned();
                let reachable = addr
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .and_then(|a| {
                        std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok()
                    })
                    .is_some();
                assert!(reachable, "{key} ({addr}) is not reachable: {HOW_TO_START}");
            }
            services
        }
    }

    /// A value from the state file, e.g. `NATS_URL`.
    pub fn var(&self, key: &str) -> String {
        self.vars
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} missing from {}: {HOW_TO_START}", self.path.display()))
    }

    /// A configuration pointing at the services, with a unique NATS prefix and object
    /// prefix, and `database` as the PostgreSQL database.
    pub fn config(&self, prefix: &str, database: &str) -> Config {
        let pg = self.var("POSTGRES_URL");
        let base = pg.rsplit_once('/').map(|(b, _)| b).unwrap_or(&pg);
        let overrides = vec![
            ("nats.url".into(), self.var("NATS_URL")),
            ("nats.prefix".into(), prefix.to_owned()),
            ("postgres.url".into(), format!("{base}/{database}")),
            ("postgres.pool_size".into(), "4".into()),
            ("object_store.kind".into(), "s3".into()),
            ("object_store.endpoint".into(), self.var("S3_ENDPOINT")),
            ("object_store.region".into(), self.var("S3_REGION")),
            ("object_store.bucket".into(), self.var("S3_BUCKET")),
            (
                "object_store.access_key_id".into(),
                self.var("S3_ACCESS_KEY_ID"),
            ),
            (
                "object_store.secret_access_key".into(),
                self.var("S3_SECRET_ACCESS_KEY"),
            ),
            ("object_store.prefix".into(), format!("test/{prefix}")),
            ("gateway.signing_key".into(), random_signing_key()),
        ];
        Config::load(&Sources {
            file: None,
            env: HashMap::new(),
            overrides,
        })
        .expect("test configuration is valid")
    }
}

/// A signing key as an operator makes one (`openssl rand -hex 32`): 64 random hex digits.
pub fn random_signing_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A unique, subject-safe name for one test's resources.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// One test's slice of the services. The database is dropped when this is dropped.
pub struct TestEnv {
    pub prefix: String,
    pub database: String,
    pub config: Config,
    /// Where the database is dropped from.
    admin_url: String,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        TestEnv::on(Services::get()).await
    }

    /// A slice of `services` (not necessarily the default ones).
    pub async fn on(services: &Services) -> TestEnv {
        let prefix = unique_prefix();
        let database = format!("ccfleet_{prefix}");
        let admin = admin_client(services).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{database}\""))
            .await
            .unwrap_or_else(|e| panic!("create test database {database}: {e}"));
        let config = services.config(&prefix, &database);
        TestEnv {
            prefix,
            database,
            config,
            admin_url: services.var("POSTGRES_URL"),
        }
    }

    pub async fn nats(&self) -> async_nats::Client {
        crate::nats::connect(&self.config.nats, "test")
            .await
            .expect("connect to NATS")
    }

    pub fn pool(&self) -> deadpool_postgres::Pool {
        crate::pg::pool(&self.config.postgres).expect("build pool")
    }

    pub fn store(&self) -> crate::store::Store {
        crate::store::Store::from_config(&self.config.object_store).expect("object store")
    }
}

async fn admin_client(services: &Services) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&services.var("POSTGRES_URL"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}: {HOW_TO_START}"));
    tokio::spawn(connection);
    client
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let url = self.admin_url.clone();
        let database = self.database.clone();
        // Drop runs inside the test's runtime; use a thread with its own to do async work.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    ))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Polls `check` until it returns `Some`, or fails the test after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
