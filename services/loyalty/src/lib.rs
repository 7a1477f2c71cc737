//! The loyalty service: member tiers with a wide discount gradient, an
//! append-only points ledger that explains every entry, member prices for
//! the old-customer zone and a rewards catalog — moved by the customer
//! service's order events.

pub mod api;
pub mod domain;
pub mod error;
pub mod events;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use huitou_proto::loyalty::v1::loyalty_service_server::LoyaltyServiceServer;
use huitou_runtime::server::GrpcServer;
use huitou_storage::cache::CacheConfig;
use huitou_storage::inbox::{EventInbox, Inbox};
use huitou_storage::outbox::{Outbox, OutboxConfig, Relay};
use huitou_storage::{Database, DatabaseConfig, now_micros};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tonic::codec::CompressionEncoding;

pub use error::LoyaltyError;
use store::Store;

/// The service's name in logs, health and events.
pub const SERVICE: &str = "loyalty";

/// The loyalty service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoyaltyConfig {
    /// Its database.
    pub database: DatabaseConfig,
    /// The cache for checkout reads.
    pub cache: CacheConfig,
    /// Who receives its events (tier changes, expiries, exchanges).
    pub outbox: OutboxConfig,
    /// Minutes between runs of the tier, expiry and warning work.
    pub review_interval_minutes: u64,
}

impl Default for LoyaltyConfig {
    fn default() -> Self {
        Self {
            database: DatabaseConfig::default(),
            cache: CacheConfig::default(),
            outbox: OutboxConfig::default(),
            review_interval_minutes: 60,
        }
    }
}

impl LoyaltyConfig {
    /// Problems with the settings under `section`.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = self.database.problems(&format!("{section}.database"));
        p.extend(self.cache.problems(&format!("{section}.cache")));
        p.extend(self.outbox.problems(&format!("{section}.outbox")));
        if !(1..=1440).contains(&self.review_interval_minutes) {
            p.push(format!("{section}.review_interval_minutes: must be 1-1440"));
        }
        p
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[error("loyalty service: {0}")]
pub struct StartError(String);

/// Applies pending migrations.
pub async fn migrate(db: &Database) -> Result<(), StartError> {
    huitou_storage::migrate::run::<store::schema::Migrator>(db)
        .await
        .map_err(|e| StartError(format!("migrations failed: {e}")))
}

/// A running loyalty service's parts.
pub struct LoyaltyService {
    /// Its storage.
    pub store: Store,
    config: LoyaltyConfig,
}

impl LoyaltyService {
    /// Connects to the database (migrating it when `migrate_on_start`).
    pub async fn open(config: &LoyaltyConfig, migrate_on_start: bool) -> Result<Self, StartError> {
        let db = Database::connect(&config.database)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        if migrate_on_start {
            migrate(&db).await?;
        }
        let cache = config.cache.open().map_err(|e| StartError(e.to_string()))?;
        Ok(Self {
            store: Store::new(db, Outbox::new(), cache),
            config: config.clone(),
        })
    }

    /// Adds the loyalty API to `server`.
    pub fn register(&self, server: &mut GrpcServer) {
        let limit = server.config().max_message_bytes;
        server.add_service(
            LoyaltyServiceServer::new(api::LoyaltyApi::new(self.store.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip),
        );
    }

    /// Its event inbox, for the process's `EventConsumerService`.
    pub fn inbox(&self) -> Arc<dyn Inbox> {
        Arc::new(EventInbox::new(
            self.store.db.clone(),
            Arc::new(events::LoyaltyEvents::new(self.store.clone())),
        ))
    }

    /// Adds `subscriber` to the outbox unless one of its name is there.
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

    /// Periodic work until `stop`: tier requalification, point expiry and
    /// warnings, and forgetting idempotency answers past their retention.
    pub async fn housekeeping(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let interval = Duration::from_secs(self.config.review_interval_minutes * 60);
        loop {
            match self.store.nightly(now_micros()).await {
                Ok(report) => tracing::info!(?report, "loyalty review done"),
                Err(e) => tracing::warn!(error = %e, "loyalty review failed"),
            }
            let retention =
                Duration::from_secs(huitou_storage::idempotency::DEFAULT_RETENTION_HOURS * 3600);
            if let Err(e) = huitou_storage::idempotency::sweep(&self.store.db, retention).await {
                tracing::warn!(error = %e, "idempotency sweep failed");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
