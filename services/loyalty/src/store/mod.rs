//! Storage of the loyalty service: hand-written SQL through sea-orm's
//! connection, for PostgreSQL and SQLite alike. Every change to a member's
//! points or tier locks the member row first, so concurrent spends,
//! earnings and the nightly run serialise per member.

pub mod batch;
pub mod catalog;
pub mod checkout;
pub mod members;
pub mod nightly;
pub mod points;
pub mod schema;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huitou_proto::events::v1::EventEnvelope;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::idempotency::IdempotencyKey;
use huitou_storage::outbox::Outbox;
use huitou_storage::{Database, StorageError, WriteTx, now_micros, write};
use prost::Message;
use sea_orm::{ConnectionTrait, QueryResult, Statement, Value};

use crate::domain::program::Program;
use crate::error::LoyaltyError;

/// The name this service signs its events with.
pub const SOURCE: &str = "loyalty";

/// How long a program read at checkout may be stale on another replica.
const PROGRAM_TTL: Duration = Duration::from_secs(2);

/// A program as read, and when.
type CachedProgram = (Instant, Arc<Program>);

/// Everything the service stores.
#[derive(Clone)]
pub struct Store {
    /// The database.
    pub db: Database,
    /// Wakes the relay after commits.
    pub outbox: Outbox,
    /// What checkout reads.
    pub checkout: checkout::CheckoutCache,
    programs: Arc<Mutex<HashMap<String, CachedProgram>>>,
}

impl Store {
    /// A store over `db`.
    pub fn new(db: Database, outbox: Outbox, cache: Arc<dyn huitou_storage::cache::Cache>) -> Self {
        Self {
            db,
            outbox,
            checkout: checkout::CheckoutCache::new(cache),
            programs: Arc::default(),
        }
    }

    /// The standing of the member `key` names, from the cache when it has
    /// it.
    pub async fn checkout_standing(
        &self,
        shop_id: &str,
        key: &members::MemberKey,
    ) -> Result<checkout::Standing, LoyaltyError> {
        if let Some(s) = self.checkout.standing(shop_id, key).await {
            return Ok(s);
        }
        let row = self
            .find_member(self.db.conn(), shop_id, key, false)
            .await?;
        self.checkout.remember(&row).await;
        Ok(checkout::Standing::from(&row))
    }

    /// The shop's zone prices for a cart of `skus`: the whole snapshot
    /// when the shop's list fits in one, else just these SKUs.
    pub async fn zone_prices(
        &self,
        shop_id: &str,
        skus: impl Fn() -> Vec<String>,
    ) -> Result<Arc<checkout::Zone>, LoyaltyError> {
        use checkout::{SNAPSHOT_LIMIT, Zone};
        let zone = match self.checkout.zone(shop_id) {
            Some(z) => z,
            None => {
                let rows = self.list_prices(shop_id, None, SNAPSHOT_LIMIT + 1).await?;
                let zone = if rows.len() > SNAPSHOT_LIMIT {
                    Zone::TooMany
                } else {
                    Zone::All(rows.into_iter().map(|p| (p.sku.clone(), p)).collect())
                };
                let zone = Arc::new(zone);
                self.checkout.keep_zone(shop_id, zone.clone());
                zone
            }
        };
        if let Zone::TooMany = &*zone {
            let mut skus = skus();
            skus.sort();
            skus.dedup();
            let rows = self.prices_for(shop_id, &skus).await?;
            return Ok(Arc::new(Zone::All(
                rows.into_iter().map(|p| (p.sku.clone(), p)).collect(),
            )));
        }
        Ok(zone)
    }

    /// Runs `work` in a write transaction once per request id, retrying
    /// lost races.
    pub async fn write<R, F>(
        &self,
        key: Option<&IdempotencyKey>,
        work: F,
    ) -> Result<R, LoyaltyError>
    where
        R: Message + Default,
        F: for<'t> Fn(&'t WriteTx, &'t Store) -> BoxFuture<'t, Result<R, LoyaltyError>>,
    {
        write::once_per_request(&self.db, &self.outbox, key, self, work).await
    }

    /// Runs `work` in a write transaction, retrying lost races.
    pub async fn transaction<R, F>(&self, work: F) -> Result<R, LoyaltyError>
    where
        F: for<'t> Fn(&'t WriteTx, &'t Store) -> BoxFuture<'t, Result<R, LoyaltyError>>,
    {
        write::transaction(&self.db, &self.outbox, self, work).await
    }

    /// ` FOR UPDATE` on PostgreSQL; nothing on SQLite, where the write gate
    /// already serialises writers.
    pub fn lock_suffix(&self) -> &'static str {
        if self.db.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        }
    }

    /// Runs a read outside any transaction.
    pub async fn read(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<QueryResult>, StorageError> {
        let stmt = Statement::from_sql_and_values(self.db.backend(), self.db.sql(sql), values);
        Ok(self.db.conn().query_all_raw(stmt).await?)
    }

    /// The shop's program as stored (the default until one is saved), and
    /// when it was saved.
    pub async fn load_program(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
    ) -> Result<(Program, Option<i64>), LoyaltyError> {
        let stmt = Statement::from_sql_and_values(
            self.db.backend(),
            self.db
                .sql("SELECT program, updated_at FROM programs WHERE shop_id = $1"),
            vec![shop_id.into()],
        );
        let Some(row) = conn.query_one_raw(stmt).await? else {
            return Ok((Program::default(), None));
        };
        let text: String = row.try_get("", "program")?;
        let program = serde_json::from_str(&text).map_err(|e| {
            LoyaltyError::Storage(StorageError::Other(format!("column program: {e}")))
        })?;
        Ok((program, Some(row.try_get("", "updated_at")?)))
    }

    /// The program for reads at checkout: cached in the process for a
    /// moment, so a price check does not read it every time.
    pub async fn program(&self, shop_id: &str) -> Result<Arc<Program>, LoyaltyError> {
        if let Ok(map) = self.programs.lock()
            && let Some((at, p)) = map.get(shop_id)
            && at.elapsed() < PROGRAM_TTL
        {
            return Ok(p.clone());
        }
        let (program, _) = self.load_program(self.db.conn(), shop_id).await?;
        let program = Arc::new(program);
        if let Ok(mut map) = self.programs.lock() {
            map.insert(shop_id.to_owned(), (Instant::now(), program.clone()));
        }
        Ok(program)
    }

    /// Replaces the shop's program.
    pub async fn save_program(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        program: &Program,
    ) -> Result<i64, LoyaltyError> {
        let now = now_micros();
        let text = serde_json::to_string(program)
            .map_err(|e| LoyaltyError::Storage(StorageError::Other(e.to_string())))?;
        tx.execute(
            "INSERT INTO programs (shop_id, program, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (shop_id) DO UPDATE SET program = excluded.program, updated_at = excluded.updated_at",
            vec![shop_id.into(), text.into(), now.into()],
        )
        .await?;
        let cache = self.programs.clone();
        let (shop, program) = (shop_id.to_owned(), Arc::new(program.clone()));
        tx.after_commit(Box::pin(async move {
            if let Ok(mut map) = cache.lock() {
                map.insert(shop, (Instant::now(), program));
            }
        }));
        Ok(now)
    }
}

pub use huitou_storage::new_id;

/// An event of this service for `shop_id`.
pub fn event(shop_id: &str, payload: Payload) -> EventEnvelope {
    huitou_storage::outbox::event(SOURCE, shop_id, payload)
}
