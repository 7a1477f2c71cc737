//! Storage of the customer service: hand-written SQL through sea-orm's
//! connection, transactions and typed rows, for PostgreSQL and SQLite alike.

pub mod audit;
pub mod customers;
pub mod imports;
pub mod orders;
pub mod reseal;
pub mod schema;
pub mod shops;

use std::sync::Arc;

use huitou_privacy::Vault;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::idempotency::IdempotencyKey;
use huitou_storage::outbox::Outbox;
use huitou_storage::write;
use huitou_storage::{Database, StorageError, WriteTx};
use prost::Message;

use crate::cache::CustomerCache;
use crate::error::CustomerError;

/// Everything the service stores, and the keys to its personal data.
#[derive(Clone)]
pub struct Store {
    /// The database.
    pub db: Database,
    /// Seals and opens personal data.
    pub vault: Arc<Vault>,
    /// Wakes the relay after commits.
    pub outbox: Outbox,
    /// Customers as read at checkout.
    pub cache: CustomerCache,
}

impl Store {
    /// A store over `db`.
    pub fn new(db: Database, vault: Arc<Vault>, outbox: Outbox, cache: CustomerCache) -> Self {
        Self {
            db,
            vault,
            outbox,
            cache,
        }
    }

    /// Writes a customer (inserting a new one) and refreshes its cache
    /// entry once the transaction commits.
    pub async fn save_customer(
        &self,
        tx: &WriteTx,
        record: &mut customers::CustomerRecord,
        is_new: bool,
    ) -> Result<(), CustomerError> {
        record.save(tx, is_new).await?;
        let (cache, shop, customer) = (
            self.cache.clone(),
            record.shop_id.clone(),
            record.customer.clone(),
        );
        tx.after_commit(Box::pin(async move {
            cache.remember(&shop, &customer).await;
        }));
        Ok(())
    }

    /// Runs `work` in a write transaction, once per request id: a retry of an
    /// already-answered request returns the stored answer. Races that a
    /// retry resolves (a concurrent insert of the same buyer, a deadlock) are
    /// retried here.
    pub async fn write<R, F>(
        &self,
        key: Option<&IdempotencyKey>,
        work: F,
    ) -> Result<R, CustomerError>
    where
        R: Message + Default,
        F: for<'t> Fn(&'t WriteTx, &'t Store) -> BoxFuture<'t, Result<R, CustomerError>>,
    {
        write::once_per_request(&self.db, &self.outbox, key, self, work).await
    }

    /// Runs `work` in a write transaction, with the same retries as
    /// [`Store::write`], for answers that are not stored for request ids.
    pub async fn write_answer<R, F>(&self, work: F) -> Result<R, CustomerError>
    where
        F: for<'t> Fn(&'t WriteTx, &'t Store) -> BoxFuture<'t, Result<R, CustomerError>>,
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
}

pub use huitou_storage::new_id;

/// Decodes a JSON column, naming it when it is damaged.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    column: &str,
    text: &str,
) -> Result<T, CustomerError> {
    serde_json::from_str(text)
        .map_err(|e| CustomerError::Storage(StorageError::Other(format!("column {column}: {e}"))))
}

/// Encodes a JSON column.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising plain structs and maps of strings cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
