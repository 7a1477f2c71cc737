//! The coupon service: templates, issuing within stock, limits, audiences
//! and agents' budgets, unguessable codes, and validate / hold / redeem /
//! give back at checkout — each exactly once under races.

pub mod api;
pub mod domain;
pub mod error;
pub mod events;
pub mod store;
pub mod template;

use std::sync::Arc;
use std::time::Duration;

use huitou_proto::coupon::v1::coupon_service_server::CouponServiceServer;
use huitou_runtime::server::GrpcServer;
use huitou_storage::cache::CacheConfig;
use huitou_storage::inbox::{EventInbox, Inbox};
use huitou_storage::outbox::{Outbox, OutboxConfig, Relay};
use huitou_storage::{Database, DatabaseConfig, now_micros};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tonic::codec::CompressionEncoding;

pub use error::CouponError;
use store::Store;

/// The service's name in logs, health and events.
pub const SERVICE: &str = "coupon";

/// The coupon service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CouponConfig {
    /// Its database.
    pub database: DatabaseConfig,
    /// The cache counting code-guessing misses.
    pub cache: CacheConfig,
    /// Who receives its events (issued, redeemed, released, expiring,
    /// expired).
    pub outbox: OutboxConfig,
    /// Seconds between expiry sweeps.
    pub sweep_interval_seconds: u64,
    /// Days before expiry the "expires soon" event goes out; 0 for none.
    pub remind_days_before_expiry: i32,
    /// Lookups of unknown codes one API key may make per minute before it
    /// is refused (code guessing).
    pub unknown_code_lookups_per_minute: i64,
}

impl Default for CouponConfig {
    fn default() -> Self {
        Self {
            database: DatabaseConfig::default(),
            cache: CacheConfig::default(),
            outbox: OutboxConfig::default(),
            sweep_interval_seconds: 60,
            remind_days_before_expiry: 3,
            unknown_code_lookups_per_minute: 20,
        }
    }
}

impl CouponConfig {
    /// Problems with the settings under `section`.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = self.database.problems(&format!("{section}.database"));
        p.extend(self.cache.problems(&format!("{section}.cache")));
        p.extend(self.outbox.problems(&format!("{section}.outbox")));
        if !(1..=86_400).contains(&self.sweep_interval_seconds) {
            p.push(format!("{section}.sweep_interval_seconds: must be 1-86400"));
        }
        if !(0..=30).contains(&self.remind_days_before_expiry) {
            p.push(format!("{section}.remind_days_before_expiry: must be 0-30"));
        }
        if !(1..=100_000).contains(&self.unknown_code_lookups_per_minute) {
            p.push(format!(
                "{section}.unknown_code_lookups_per_minute: must be 1-100000"
            ));
        }
        p
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[error("coupon service: {0}")]
pub struct StartError(String);

/// Applies pending migrations.
pub async fn migrate(db: &Database) -> Result<(), StartError> {
    huitou_storage::migrate::run::<store::schema::Migrator>(db)
        .await
        .map_err(|e| StartError(format!("migrations failed: {e}")))
}

/// A running coupon service's parts.
pub struct CouponService {
    /// Its storage.
    pub store: Store,
    config: CouponConfig,
}

impl CouponService {
    /// Connects to the database (migrating it when `migrate_on_start`).
    pub async fn open(config: &CouponConfig, migrate_on_start: bool) -> Result<Self, StartError> {
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

    /// Adds the coupon API to `server`.
    pub fn register(&self, server: &mut GrpcServer) {
        let limit = server.config().max_message_bytes;
        server.add_service(
            CouponServiceServer::new(api::CouponApi::new(
                self.store.clone(),
                self.config.unknown_code_lookups_per_minute,
            ))
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
            Arc::new(events::CouponEvents::new(self.store.clone())),
        ))
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

    /// Adds `subscriber` to the outbox unless one of its name is there.
    pub fn subscribe_if_absent(&mut self, subscriber: huitou_storage::outbox::Subscriber) {
        self.config.outbox.subscribe_if_absent(subscriber);
    }

    /// Periodic work until `stop`: expiry and reminders, birthday coupons,
    /// stalled bulk runs, and forgetting old idempotency answers.
    pub async fn housekeeping(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let interval = Duration::from_secs(self.config.sweep_interval_seconds);
        loop {
            let now = now_micros();
            match self
                .store
                .sweep(now, self.config.remind_days_before_expiry)
                .await
            {
                Ok(report) if report != Default::default() => {
                    tracing::info!(?report, "coupon expiry sweep done")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "coupon expiry sweep failed"),
            }
            match self.store.birthday_gifts(now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(issued = n, "birthday coupons issued"),
                Err(e) => tracing::warn!(error = %e, "birthday coupons failed"),
            }
            if let Err(e) = api::resume_stalled_runs(&self.store).await {
                tracing::warn!(error = %e, "resuming bulk runs failed");
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
