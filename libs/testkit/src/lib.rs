//! Test helpers shared by every crate's tests.
//!
//! Tests run on the embedded default (a SQLite file per test) unless
//! `HUITOU_TEST_DATABASE_URL` names a PostgreSQL server (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`): then every test gets its own
//! fresh database there, dropped afterwards. `HUITOU_TEST_REDIS_URL` likewise
//! switches the cache to Redis. When a variable is set and the server is not
//! reachable, tests fail — CI never skips silently.

// Test support fails loudly: a broken fixture must stop the test.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

pub mod probe;

use std::path::PathBuf;

use huitou_storage::DatabaseConfig;
use sea_orm::{ConnectionTrait, Database};

/// The environment variable naming a PostgreSQL server for tests.
pub const DATABASE_ENV: &str = "HUITOU_TEST_DATABASE_URL";
/// The environment variable naming a Redis server for tests.
pub const REDIS_ENV: &str = "HUITOU_TEST_REDIS_URL";

/// A fresh folder under the system temp folder.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("huitou-{label}-{}", uuid::Uuid::now_v7().simple()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

/// A database for one test.
pub struct TestDatabase {
    /// How to connect to it.
    pub config: DatabaseConfig,
    /// `postgres` or `sqlite`.
    pub kind: &'static str,
    drop_sql: Option<(String, String)>,
}

impl TestDatabase {
    /// A fresh database: PostgreSQL when configured, else a SQLite file.
    pub async fn new(label: &str) -> TestDatabase {
        match std::env::var(DATABASE_ENV) {
            Ok(url) if !url.is_empty() => Self::postgres(&url, label).await,
            _ => {
                let dir = temp_dir(label);
                TestDatabase {
                    config: DatabaseConfig::sqlite_file(&dir.join(format!("{label}.db"))),
                    kind: "sqlite",
                    drop_sql: None,
                }
            }
        }
    }

    async fn postgres(admin_url: &str, label: &str) -> TestDatabase {
        let name = format!(
            "huitou_{}_{}",
            label.replace('-', "_"),
            uuid::Uuid::now_v7().simple()
        );
        let admin = match Database::connect(admin_url).await {
            Ok(c) => c,
            Err(e) => {
                panic!("{DATABASE_ENV}={admin_url} is set but PostgreSQL is not reachable: {e}")
            }
        };
        if let Err(e) = admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
        {
            panic!("cannot create test database {name}: {e}");
        }
        let _ = admin.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(admin_url);
        TestDatabase {
            config: DatabaseConfig {
                url: format!("{base}/{name}"),
                max_connections: 32,
                ..DatabaseConfig::default()
            },
            kind: "postgres",
            drop_sql: Some((
                admin_url.to_owned(),
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )),
        }
    }

    /// Drops a PostgreSQL test database (SQLite files stay in the temp folder).
    pub async fn cleanup(self) {
        if let Some((admin_url, sql)) = self.drop_sql
            && let Ok(admin) = Database::connect(&admin_url).await
        {
            let _ = admin.execute_unprepared(&sql).await;
            let _ = admin.close().await;
        }
    }
}

/// The Redis URL for tests, when configured.
pub fn redis_url() -> Option<String> {
    std::env::var(REDIS_ENV).ok().filter(|s| !s.is_empty())
}
