//! The customer service: shops and API keys, customer profiles with
//! personal data sealed and audited, orders through their lifecycle with
//! exact purchase statistics, consent, tags and attributes — every change
//! leaving as an event through the outbox.

pub mod api;
pub mod cache;
pub mod client;
pub mod domain;
pub mod error;
pub mod events;
pub mod intake;
pub mod store;

use std::sync::Arc;

use huitou_privacy::{PersonalDataConfig, Vault};
use huitou_proto::customer::v1::customer_service_server::CustomerServiceServer;
use huitou_proto::customer::v1::shop_service_server::ShopServiceServer;
use huitou_runtime::auth::KeyVerifier;
use huitou_runtime::server::GrpcServer;
use huitou_storage::cache::CacheConfig;
use huitou_storage::outbox::{Outbox, OutboxConfig, Relay};
use huitou_storage::{Database, DatabaseConfig};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tonic::codec::CompressionEncoding;

pub use api::customers::PersonalDataLimits;
pub use error::CustomerError;
use store::Store;
use store::shops::StoredKeys;

/// The service's name in logs, health and events.
pub const SERVICE: &str = "customer";

/// The customer service's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomerConfig {
    /// Its database.
    pub database: DatabaseConfig,
    /// Cache and counters.
    pub cache: CacheConfig,
    /// Keys for personal data.
    pub personal_data: PersonalDataConfig,
    /// Who receives its events.
    pub outbox: OutboxConfig,
    /// Limits on personal-data lookups.
    pub limits: PersonalDataLimits,
}

impl CustomerConfig {
    /// Problems with the settings under `section`.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = self.database.problems(&format!("{section}.database"));
        p.extend(self.cache.problems(&format!("{section}.cache")));
        p.extend(
            self.personal_data
                .problems(&format!("{section}.personal_data")),
        );
        p.extend(self.outbox.problems(&format!("{section}.outbox")));
        if self.limits.reveals_per_hour < 1 {
            p.push(format!(
                "{section}.limits.reveals_per_hour: must be at least 1"
            ));
        }
        if self.limits.phone_lookups_per_minute < 1 {
            p.push(format!(
                "{section}.limits.phone_lookups_per_minute: must be at least 1"
            ));
        }
        p
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[error("customer service: {0}")]
pub struct StartError(String);

/// A running customer service's parts.
pub struct CustomerService {
    /// Its storage.
    pub store: Store,
    /// Its key check, which every service in the process can use.
    pub keys: Arc<StoredKeys>,
    config: CustomerConfig,
}

/// Applies pending migrations.
pub async fn migrate(db: &Database) -> Result<(), StartError> {
    huitou_storage::migrate::run::<store::schema::Migrator>(db)
        .await
        .map_err(|e| StartError(format!("migrations failed: {e}")))
}

impl CustomerService {
    /// Connects to the database (migrating it when `migrate_on_start`) and
    /// prepares the service.
    pub async fn open(config: &CustomerConfig, migrate_on_start: bool) -> Result<Self, StartError> {
        let db = Database::connect(&config.database)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        if migrate_on_start {
            migrate(&db).await?;
        }
        let vault = Vault::new(&config.personal_data).map_err(|e| StartError(e.to_string()))?;
        let cache = config.cache.open().map_err(|e| StartError(e.to_string()))?;
        let store = Store::new(
            db,
            Arc::new(vault),
            Outbox::new(),
            cache::CustomerCache::new(cache),
        );
        Ok(Self {
            keys: Arc::new(StoredKeys::new(store.clone())),
            store,
            config: config.clone(),
        })
    }

    /// The API key check, for the server's call layer.
    pub fn key_verifier(&self) -> Arc<dyn KeyVerifier> {
        self.keys.clone()
    }

    /// Adds the service's gRPC services to `server`.
    pub fn register(&self, server: &mut GrpcServer) {
        let limit = server.config().max_message_bytes;
        let customers = api::customers::CustomerApi::new(self.store.clone(), self.config.limits);
        let shops = api::shops::ShopApi::new(self.store.clone(), self.keys.clone());
        server.add_service(
            CustomerServiceServer::new(customers)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip),
        );
        server.allow_long_running("/huitou.customer.v1.CustomerService/ImportOrders");
        server.add_service(
            ShopServiceServer::new(shops)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip),
        );
    }

    /// Adds a subscriber unless one of that name is configured (how the
    /// one-process suite subscribes its own services).
    pub fn subscribe_if_absent(&mut self, subscriber: huitou_storage::outbox::Subscriber) {
        self.config.outbox.subscribe_if_absent(subscriber);
    }

    /// The relay delivering this service's events.
    pub fn relay(&self, internal_token: &SecretString) -> Result<Relay, StartError> {
        Relay::new(
            SERVICE,
            self.store.db.clone(),
            &self.store.outbox,
            self.config.outbox.clone(),
            internal_token,
        )
        .map_err(|e| StartError(e.to_string()))
    }

    /// Periodic housekeeping: forgets idempotency answers and consumed event
    /// ids past their retention. Runs until `stop`.
    pub async fn housekeeping(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let retention = std::time::Duration::from_secs(
                huitou_storage::idempotency::DEFAULT_RETENTION_HOURS * 3600,
            );
            if let Err(e) = huitou_storage::idempotency::sweep(&self.store.db, retention).await {
                tracing::warn!(error = %e, "idempotency sweep failed");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            }
        }
    }
}
