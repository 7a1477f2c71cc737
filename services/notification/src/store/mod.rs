//! Storage of the notification service: hand-written SQL through sea-orm's
//! connection, for PostgreSQL and SQLite alike. Every rule that limits
//! sending (caps, duplicates, opt-outs) is decided inside the transaction
//! that marks a message as leaving, under a lock on the customer's row, so
//! it holds across workers and replicas.

pub mod calendar;
pub mod calls;
pub mod dispatch;
pub mod messages;
pub mod recipients;
pub mod schema;
pub mod settings;
pub mod templates;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huitou_runtime::auth::BoxFuture;
use huitou_storage::idempotency::IdempotencyKey;
use huitou_storage::outbox::Outbox;
use huitou_storage::{Database, StorageError, WriteTx, write};
use prost::Message;
use sea_orm::{ConnectionTrait, QueryResult, Statement, Value};

use crate::domain::window::Calendar;
use crate::error::NotificationError;
use crate::policy::Policy;

/// How long a shop's policy and calendar are reused by a process. A change
/// made through this process is seen at once; one made through another
/// replica within this time.
const SETTINGS_TTL: Duration = Duration::from_secs(5);

/// A shop's policy with its calendar.
#[derive(Debug, Clone)]
pub struct ShopSettings {
    /// The policy.
    pub policy: Policy,
    /// Windows and holidays in the shop's zone.
    pub calendar: Calendar,
}

type CachedSettings = (Instant, Arc<ShopSettings>);

/// Everything the service stores.
#[derive(Clone)]
pub struct Store {
    /// The database.
    pub db: Database,
    /// Wakes the relay after commits.
    pub outbox: Outbox,
    settings: Arc<Mutex<HashMap<String, CachedSettings>>>,
}

impl Store {
    /// A store over `db`.
    pub fn new(db: Database, outbox: Outbox) -> Self {
        Self {
            db,
            outbox,
            settings: Arc::default(),
        }
    }

    /// Runs `work` in a write transaction once per request id, retrying
    /// lost races.
    pub async fn write<R, F>(
        &self,
        key: Option<&IdempotencyKey>,
        work: F,
    ) -> Result<R, NotificationError>
    where
        R: Message + Default,
        F: for<'t> Fn(&'t WriteTx, &'t Store) -> BoxFuture<'t, Result<R, NotificationError>>,
    {
        write::once_per_request(&self.db, &self.outbox, key, self, work).await
    }

    /// Runs `work` in a write transaction, retrying lost races.
    pub async fn transaction<R, F>(&self, work: F) -> Result<R, NotificationError>
    where
        F: for<'t> Fn(&'t WriteTx, &'t Store) -> BoxFuture<'t, Result<R, NotificationError>>,
    {
        write::transaction(&self.db, &self.outbox, self, work).await
    }

    /// Runs a read outside any transaction.
    pub async fn read(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<QueryResult>, StorageError> {
        read_on(self.db.conn(), &self.db, sql, values).await
    }

    /// ` FOR UPDATE` on PostgreSQL; nothing on SQLite, where one writer at
    /// a time already holds the database.
    pub fn for_update(&self) -> &'static str {
        if self.db.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        }
    }

    /// The shop's policy and calendar, from the process for a moment.
    pub async fn shop_settings(
        &self,
        shop_id: &str,
    ) -> Result<Arc<ShopSettings>, NotificationError> {
        if let Ok(map) = self.settings.lock()
            && let Some((at, s)) = map.get(shop_id)
            && at.elapsed() < SETTINGS_TTL
        {
            return Ok(s.clone());
        }
        self.fresh_shop_settings(shop_id).await
    }

    /// The shop's policy and calendar read now (and kept for others). The
    /// dispatcher decides with these: a deferred message released by a
    /// policy change must never be placed again by a copy older than the
    /// change.
    pub async fn fresh_shop_settings(
        &self,
        shop_id: &str,
    ) -> Result<Arc<ShopSettings>, NotificationError> {
        let policy = self.policy(self.db.conn(), shop_id).await?;
        let holidays = self.holidays(shop_id, "").await?;
        let calendar = policy.calendar(&holidays);
        let s = Arc::new(ShopSettings { policy, calendar });
        if let Ok(mut map) = self.settings.lock() {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(shop_id.to_owned(), (Instant::now(), s.clone()));
        }
        Ok(s)
    }

    /// Forgets the process's copy of a shop's settings (after a change).
    pub fn forget_settings(&self, shop_id: &str) {
        if let Ok(mut map) = self.settings.lock() {
            map.remove(shop_id);
        }
    }
}

/// Runs a read on `conn` with `$n` placeholders.
pub async fn read_on(
    conn: &impl ConnectionTrait,
    db: &Database,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, StorageError> {
    let stmt = Statement::from_sql_and_values(db.backend(), db.sql(sql), values);
    Ok(conn.query_all_raw(stmt).await?)
}

pub use huitou_storage::new_id;
