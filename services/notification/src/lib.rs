//! The notification service: templates per channel, sends one at a time,
//! in batches, on a schedule and from other services' events, under the
//! shop's policy (windows, consent, opt-outs, caps, duplicates, complaints),
//! through pluggable providers with a fallback, with every message's status
//! history — nothing accepted is lost, nothing sent twice by us.

pub mod api;
pub mod contacts;
pub mod dispatcher;
pub mod domain;
pub mod error;
pub mod events;
pub mod policy;
pub mod providers;
pub mod store;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use huitou_proto::customer::v1::Channel;
use huitou_proto::notification::v1::notification_service_server::NotificationServiceServer;
use huitou_runtime::server::GrpcServer;
use huitou_storage::cache::{Cache, CacheConfig};
use huitou_storage::inbox::{EventInbox, Inbox};
use huitou_storage::outbox::Outbox;
use huitou_storage::{Database, DatabaseConfig};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tonic::codec::CompressionEncoding;

use contacts::{ContactBook, CustomerContacts};
use dispatcher::{Dispatcher, Providers};
pub use error::NotificationError;
use providers::{ProviderConfig, Route};
use store::Store;

/// The service's name in logs, health and events.
pub const SERVICE: &str = "notification";

/// Every channel by its configuration name.
pub const CHANNELS: &[(&str, Channel)] = &[
    ("sms", Channel::Sms),
    ("wechat", Channel::Wechat),
    ("platform_im", Channel::PlatformIm),
    ("email", Channel::Email),
    ("app_push", Channel::AppPush),
    ("phone_call", Channel::PhoneCall),
];

/// The notification service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationConfig {
    /// Its database.
    pub database: DatabaseConfig,
    /// Counters for the providers' per-shop rate limits (Redis shares them
    /// across replicas; in-process otherwise).
    pub cache: CacheConfig,
    /// The customer service, asked for addresses at the moment of sending
    /// and for the customer behind a reply's phone number.
    pub customer_endpoint: String,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Which provider sends each channel (sms, wechat, platform_im, email,
    /// app_push, phone_call), with an optional fallback.
    pub channels: BTreeMap<String, Route>,
    /// Dispatchers in this process (each claims its own messages); 0 for a
    /// replica that only takes requests.
    pub dispatchers: usize,
    /// Messages one dispatcher claims at a time.
    pub dispatch_batch: usize,
    /// Seconds a claimed message is held before another dispatcher may
    /// send it again (a dispatcher killed mid-send).
    pub lease_seconds: u64,
    /// Milliseconds a dispatcher rests when nothing is due.
    pub idle_millis: u64,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        let mut providers = BTreeMap::new();
        providers.insert(
            "log".to_owned(),
            ProviderConfig::Log {
                path: String::new(),
            },
        );
        let channels = CHANNELS
            .iter()
            .map(|(name, _)| {
                (
                    (*name).to_owned(),
                    Route {
                        provider: "log".into(),
                        fallback: String::new(),
                        per_shop_per_second: 0,
                    },
                )
            })
            .collect();
        Self {
            database: DatabaseConfig::default(),
            cache: CacheConfig::default(),
            customer_endpoint: "http://127.0.0.1:50051".into(),
            providers,
            channels,
            dispatchers: 2,
            dispatch_batch: 200,
            lease_seconds: 60,
            idle_millis: 250,
        }
    }
}

impl NotificationConfig {
    /// Problems with the settings under `section`.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = self.database.problems(&format!("{section}.database"));
        p.extend(self.cache.problems(&format!("{section}.cache")));
        if !(self.customer_endpoint.starts_with("http://")
            || self.customer_endpoint.starts_with("https://"))
        {
            p.push(format!(
                "{section}.customer_endpoint: must be an http:// or https:// URL"
            ));
        }
        for (name, provider) in &self.providers {
            p.extend(provider.problems(&format!("{section}.providers.{name}")));
        }
        for (channel, route) in &self.channels {
            if !CHANNELS.iter().any(|(n, _)| n == channel) {
                p.push(format!(
                    "{section}.channels.{channel}: not a channel (sms, wechat, platform_im, email, app_push, phone_call)"
                ));
            }
            for name in [&route.provider, &route.fallback] {
                if !name.is_empty() && !self.providers.contains_key(name) {
                    p.push(format!(
                        "{section}.channels.{channel}: no provider named {name}"
                    ));
                }
            }
        }
        if self.dispatchers > 64 {
            p.push(format!(
                "{section}.dispatchers: must be 0-64 (0: this replica only takes requests)"
            ));
        }
        if !(1..=5_000).contains(&self.dispatch_batch) {
            p.push(format!("{section}.dispatch_batch: must be 1-5000"));
        }
        if !(5..=3_600).contains(&self.lease_seconds) {
            p.push(format!("{section}.lease_seconds: must be 5-3600"));
        }
        if !(10..=60_000).contains(&self.idle_millis) {
            p.push(format!("{section}.idle_millis: must be 10-60000"));
        }
        p
    }
}

/// Writes opt-outs not yet written back to the customer service's consent
/// records (`only` one customer's); how many were written. The local opt-out already stops
/// sending: this keeps the customer record, which other tools read, true.
pub async fn sync_opt_outs(
    store: &Store,
    contacts: &dyn ContactBook,
    only: Option<(&str, &str)>,
) -> Result<usize, NotificationError> {
    let mut done = 0;
    for (shop, customer, channel, at) in store.unsynced_opt_outs(only, 500).await? {
        let number = store::recipients::channel_number(&channel);
        if let Err(e) = contacts
            .withdraw_consent(&shop, &customer, number, at)
            .await
        {
            tracing::warn!(shop, error = %e, "opt-out not yet written back");
            continue;
        }
        store
            .transaction(|tx, store| {
                let (shop, customer, channel) = (shop.clone(), customer.clone(), channel.clone());
                Box::pin(async move { store.opt_out_synced(tx, &shop, &customer, &channel).await })
            })
            .await?;
        done += 1;
    }
    Ok(done)
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[error("notification service: {0}")]
pub struct StartError(String);

/// Applies pending migrations.
pub async fn migrate(db: &Database) -> Result<(), StartError> {
    huitou_storage::migrate::run::<store::schema::Migrator>(db)
        .await
        .map_err(|e| StartError(format!("migrations failed: {e}")))
}

/// A running notification service's parts.
pub struct NotificationService {
    /// Its storage.
    pub store: Store,
    config: NotificationConfig,
    contacts: Arc<dyn ContactBook>,
    routes: HashMap<i32, Providers>,
    rates: Arc<dyn Cache>,
}

impl NotificationService {
    /// Connects to the database (migrating it when `migrate_on_start`) and
    /// opens the providers. `internal_token` authenticates calls to the
    /// customer service.
    pub async fn open(
        config: &NotificationConfig,
        migrate_on_start: bool,
        internal_token: &SecretString,
    ) -> Result<Self, StartError> {
        let contacts =
            CustomerContacts::new(&config.customer_endpoint, internal_token).map_err(StartError)?;
        Self::open_with(config, migrate_on_start, Arc::new(contacts)).await
    }

    /// As [`NotificationService::open`], finding addresses in `contacts`.
    pub async fn open_with(
        config: &NotificationConfig,
        migrate_on_start: bool,
        contacts: Arc<dyn ContactBook>,
    ) -> Result<Self, StartError> {
        let db = Database::connect(&config.database)
            .await
            .map_err(|e| StartError(e.to_string()))?;
        if migrate_on_start {
            migrate(&db).await?;
        }
        let mut opened = HashMap::new();
        for (name, p) in &config.providers {
            opened.insert(
                name.clone(),
                p.open(name)
                    .map_err(|e| StartError(format!("provider {name}: {e}")))?,
            );
        }
        let mut routes = HashMap::new();
        for (channel, route) in &config.channels {
            let Some((_, number)) = CHANNELS.iter().find(|(n, _)| n == channel) else {
                continue;
            };
            let first = opened.get(&route.provider).cloned().ok_or_else(|| {
                StartError(format!("channel {channel}: no provider {}", route.provider))
            })?;
            let fallback = if route.fallback.is_empty() {
                None
            } else {
                Some(opened.get(&route.fallback).cloned().ok_or_else(|| {
                    StartError(format!("channel {channel}: no provider {}", route.fallback))
                })?)
            };
            routes.insert(
                *number as i32,
                Providers {
                    first,
                    fallback,
                    per_shop_per_second: route.per_shop_per_second,
                },
            );
        }
        let rates = config.cache.open().map_err(|e| StartError(e.to_string()))?;
        Ok(Self {
            store: Store::new(db, Outbox::new()),
            config: config.clone(),
            contacts,
            routes,
            rates,
        })
    }

    /// Asks the customer service at `endpoint` for addresses from now on
    /// (the one-process suite learns its own address only when it listens).
    pub fn use_customer_endpoint(
        &mut self,
        endpoint: &str,
        internal_token: &SecretString,
    ) -> Result<(), StartError> {
        self.contacts =
            Arc::new(CustomerContacts::new(endpoint, internal_token).map_err(StartError)?);
        Ok(())
    }

    /// Adds the notification API to `server`.
    pub fn register(&self, server: &mut GrpcServer) {
        let limit = server.config().max_message_bytes;
        server.add_service(
            NotificationServiceServer::new(api::NotificationApi::new(
                self.store.clone(),
                self.contacts.clone(),
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
            Arc::new(events::NotificationEvents::new(self.store.clone())),
        ))
    }

    /// A dispatcher over this service's store and providers.
    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher::new(
            self.store.clone(),
            self.routes.clone(),
            self.contacts.clone(),
            self.config.dispatch_batch,
            Duration::from_secs(self.config.lease_seconds),
            self.rates.clone(),
        )
    }

    /// Runs the configured dispatchers and, every five minutes, the day's
    /// birthday and holiday greetings and the idempotency sweep, until
    /// `stop` resolves.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let idle = Duration::from_millis(self.config.idle_millis);
        let mut tasks = Vec::new();
        for _ in 0..self.config.dispatchers {
            let d = self.dispatcher();
            let mut stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                d.run(idle, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            }));
        }
        // The delivery queue's depth, for dashboards and alerts.
        let queue_store = self.store.clone();
        let mut stop_queue = stop.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match queue_store
                    .delivery_queue(huitou_storage::now_micros())
                    .await
                {
                    Ok((due, oldest)) => {
                        huitou_runtime::metrics::record_delivery_queue(due, oldest)
                    }
                    Err(e) => tracing::debug!(error = %e, "delivery queue depth not read"),
                }
                tokio::select! {
                    _ = stop_queue.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                }
            }
        }));
        let store = self.store.clone();
        let contacts = self.contacts.clone();
        let mut stop_sweep = stop.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Err(e) = sync_opt_outs(&store, &*contacts, None).await {
                    tracing::warn!(error = %e, "writing opt-outs back to the customer service failed");
                }
                let retention = Duration::from_secs(
                    huitou_storage::idempotency::DEFAULT_RETENTION_HOURS * 3600,
                );
                if let Err(e) = huitou_storage::idempotency::sweep(&store.db, retention).await {
                    tracing::warn!(error = %e, "idempotency sweep failed");
                }
                // Far beyond the relay's retries (50 attempts, at most 5 min apart).
                let settled = Duration::from_secs(7 * 24 * 3600);
                if let Err(e) = store.forget_settled_orders(settled).await {
                    tracing::warn!(error = %e, "settled orders sweep failed");
                }
                tokio::select! {
                    _ = stop_sweep.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_secs(300)) => {}
                }
            }
        }));
        for t in tasks {
            let _ = t.await;
        }
    }
}
