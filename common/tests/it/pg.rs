use common::pg::{Error, Migration, migrate};
use common::testsupport::TestEnv;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: "0001_notes",
        sql: "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)",
    },
    Migration {
        version: "0002_notes_author",
        sql: "ALTER TABLE notes ADD COLUMN author text NOT NULL DEFAULT 'nobody'",
    },
];

#[tokio::test]
async fn migrations_apply_once_and_rows_round_trip() {
    let env = TestEnv::new().await;
    let pool = env.pool();
    assert_eq!(
        migrate(&pool, MIGRATIONS).await.unwrap(),
        ["0001_notes", "0002_notes_author"]
    );
    assert!(
        migrate(&pool, MIGRATIONS).await.unwrap().is_empty(),
        "second run applies nothing"
    );

    let client = pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO notes (id, body, author) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&1_i64, &"hello", &"alice"],
        )
        .await
        .unwrap();
    let row = client
        .query_one("SELECT body, author FROM notes WHERE id = $1", &[&1_i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "hello");
    assert_eq!(row.get::<_, String>(1), "alice");
}

#[tokio::test]
async fn concurrent_starts_apply_each_migration_exactly_once() {
    let env = TestEnv::new().await;
    let pool = env.pool();
    let runs = futures::future::join_all((0..4).map(|_| migrate(&pool, MIGRATIONS))).await;
    let applied: usize = runs.into_iter().map(|r| r.unwrap().len()).sum();
    assert_eq!(applied, MIGRATIONS.len());
}

#[tokio::test]
async fn an_edited_released_migration_is_refused() {
    let env = TestEnv::new().await;
    let pool = env.pool();
    migrate(&pool, &MIGRATIONS[..1]).await.unwrap();
    let edited = [Migration {
        version: "0001_notes",
        sql: "CREATE TABLE notes (id bigint PRIMARY KEY)",
    }];
    assert!(matches!(
        migrate(&pool, &edited).await,
        Err(Error::Drift { .. })
    ));
}
