//! Storage of the coupon service: hand-written SQL through sea-orm's
//! connection, for PostgreSQL and SQLite alike. Every limit (stock, per
//! customer, agent budget, one redemption per coupon) is a conditional
//! update in the database, so it holds across replicas and with the cache
//! down; the cache counts code-guessing misses and keeps coupons for
//! checkout reads (`cached`), never deciding a limit.

pub mod buyers;
pub mod cached;
pub mod coupons;
pub mod redemptions;
pub mod runs;
pub mod schema;
pub mod sweep;
pub mod templates;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huitou_proto::events::v1::EventEnvelope;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::cache::Cache;
use huitou_storage::idempotency::IdempotencyKey;
use huitou_storage::outbox::Outbox;
use huitou_storage::{Database, StorageError, WriteTx, write};
use prost::Message;
use sea_orm::{ConnectionTrait, QueryResult, Statement, Value};

use crate::error::CouponError;
use crate::template::Template;

/// The name this service signs its events with.
pub const SOURCE: &str = "coupon";

/// How long a template read for checkout is reused. Its terms never
/// change; only the name shown may be this stale.
const TEMPLATE_TTL: Duration = Duration::from_secs(30);

/// Templates kept for checkout per process before the map is cleared.
const TEMPLATE_CACHE_LIMIT: usize = 10_000;

type CachedTemplate = (Instant, Arc<Template>);

/// Everything the service stores.
#[derive(Clone)]
pub struct Store {
    /// The database.
    pub db: Database,
    /// Wakes the relay after commits.
    pub outbox: Outbox,
    /// Counters for the code-guessing limit, and coupons for checkout.
    pub cache: Arc<dyn Cache>,
    templates: Arc<Mutex<HashMap<(String, String), CachedTemplate>>>,
    /// Checkout redemptions written together; started on first use.
    redemptions: Arc<std::sync::OnceLock<redemptions::RedemptionIntake>>,
}

impl Store {
    /// A store over `db`.
    pub fn new(db: Database, outbox: Outbox, cache: Arc<dyn Cache>) -> Self {
        Self {
            db,
            outbox,
            cache,
            templates: Arc::default(),
            redemptions: Arc::default(),
        }
    }

    /// The redemption intake (its writer starts with the first redemption,
    /// on the caller's runtime).
    pub fn redemptions(&self) -> &redemptions::RedemptionIntake {
        self.redemptions
            .get_or_init(|| redemptions::RedemptionIntake::start(self.db.clone()))
    }

    /// Runs `work` in a write transaction once per request id, retrying
    /// lost races.
    pub async fn write<R, F>(&self, key: Option<&IdempotencyKey>, work: F) -> Result<R, CouponError>
    where
        R: Message + Default,
        F: for<'t> Fn(&'t WriteTx, &'t Store) -> BoxFuture<'t, Result<R, CouponError>>,
    {
        write::once_per_request(&self.db, &self.outbox, key, self, work).await
    }

    /// Runs `work` in a write transaction, retrying lost races.
    pub async fn transaction<R, F>(&self, work: F) -> Result<R, CouponError>
    where
        F: for<'t> Fn(&'t WriteTx, &'t Store) -> BoxFuture<'t, Result<R, CouponError>>,
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

    /// A template for checkout and issuing: from the process for a moment,
    /// else from the database.
    pub async fn template(&self, shop_id: &str, id: &str) -> Result<Arc<Template>, CouponError> {
        let key = (shop_id.to_owned(), id.to_owned());
        if let Ok(map) = self.templates.lock()
            && let Some((at, t)) = map.get(&key)
            && at.elapsed() < TEMPLATE_TTL
        {
            return Ok(t.clone());
        }
        let t = Arc::new(
            self.load_template(self.db.conn(), shop_id, id)
                .await?
                .ok_or(CouponError::TemplateNotFound)?
                .0,
        );
        self.keep_template(shop_id, t.clone());
        Ok(t)
    }

    /// Puts a template read or written just now in the process cache.
    fn keep_template(&self, shop_id: &str, t: Arc<Template>) {
        if let Ok(mut map) = self.templates.lock() {
            if map.len() >= TEMPLATE_CACHE_LIMIT {
                map.clear();
            }
            map.insert((shop_id.to_owned(), t.id.clone()), (Instant::now(), t));
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

/// An event of this service for `shop_id`.
pub fn event(shop_id: &str, payload: Payload) -> EventEnvelope {
    huitou_storage::outbox::event(SOURCE, shop_id, payload)
}
