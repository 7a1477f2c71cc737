//! A running suite for tests: fresh storage, a shop with one key per role,
//! and clients that call it over gRPC as a storefront or operator would.

// Test support fails loudly: a broken fixture must stop the test.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use huitou::{Settings, Suite};
use huitou_privacy::PersonalDataConfig;
use huitou_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use huitou_proto::customer::v1::customer_service_client::CustomerServiceClient;
use huitou_proto::customer::v1::shop_service_client::ShopServiceClient;
use huitou_proto::loyalty::v1::loyalty_service_client::LoyaltyServiceClient;
use huitou_proto::notification::v1::notification_service_client::NotificationServiceClient;
use huitou_runtime::Role;
use huitou_testkit::TestDatabase;
use secrecy::SecretString;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// The internal token of test suites.
pub const INTERNAL_TOKEN: &str = "test-internal-token-0123456789abcdef";

/// A shop's API keys, one per role.
#[derive(Debug, Clone)]
pub struct ShopKeys {
    /// The shop.
    pub shop_id: String,
    /// Storefront key.
    pub storefront: String,
    /// Operator key.
    pub operator: String,
    /// Admin key.
    pub admin: String,
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The interceptor presenting `key`.
pub fn bearer(key: &str) -> Bearer {
    Bearer(format!("Bearer {key}").parse().expect("metadata"))
}

/// A customer-service client with a key.
pub type Customers =
    CustomerServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;
/// A shop-service client with a key.
pub type Shops =
    ShopServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A loyalty-service client with a key.
pub type Loyalty =
    LoyaltyServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A coupon-service client with a key.
pub type Coupons =
    CouponServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A notification-service client with a key.
pub type Notifications =
    NotificationServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A suite serving on an ephemeral port.
pub struct TestSuite {
    /// Where it listens.
    pub address: SocketAddr,
    /// The first shop.
    pub shop: ShopKeys,
    /// A second shop, to check nothing leaks between shops.
    pub other_shop: ShopKeys,
    /// Its database.
    pub database: TestDatabase,
    /// The loyalty service's database, when it runs.
    pub loyalty_database: Option<TestDatabase>,
    /// The coupon service's database, when it runs.
    pub coupon_database: Option<TestDatabase>,
    /// The notification service's database, when it runs.
    pub notification_database: Option<TestDatabase>,
    /// Its settings.
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    channel: Channel,
}

/// Settings of a test suite over `database`.
pub fn test_settings(database: &TestDatabase) -> Settings {
    let mut settings = Settings::default();
    settings.auth.internal_token = Some(SecretString::from(INTERNAL_TOKEN));
    settings.customer.database = database.config.clone();
    settings.customer.personal_data = PersonalDataConfig::generate("k1").expect("keys");
    if let Some(url) = huitou_testkit::redis_url() {
        settings.customer.cache.redis_url = url;
    }
    settings.customer.outbox.poll_interval_ms = 50;
    settings.customer.outbox.retry_base_ms = 50;
    settings.customer.outbox.retry_max_ms = 500;
    settings.server.shutdown_grace_ms = 5_000;
    settings
}

/// Adds the loyalty service over its own `database` to `settings`.
pub fn with_loyalty(settings: &mut Settings, database: &TestDatabase) {
    let mut loyalty = huitou_loyalty::LoyaltyConfig {
        database: database.config.clone(),
        ..Default::default()
    };
    if let Some(url) = huitou_testkit::redis_url() {
        loyalty.cache.redis_url = url;
    }
    loyalty.outbox.poll_interval_ms = 50;
    loyalty.outbox.retry_base_ms = 50;
    loyalty.outbox.retry_max_ms = 500;
    settings.loyalty = Some(loyalty);
}

/// Adds the coupon service over its own `database` to `settings`, with
/// the cache at `redis_url` (None: in-process).
pub fn with_coupon(settings: &mut Settings, database: &TestDatabase, redis_url: Option<String>) {
    let mut coupon = huitou_coupon::CouponConfig {
        database: database.config.clone(),
        ..Default::default()
    };
    if let Some(url) = redis_url {
        coupon.cache.redis_url = url;
    }
    coupon.outbox.poll_interval_ms = 50;
    coupon.outbox.retry_base_ms = 50;
    coupon.outbox.retry_max_ms = 500;
    settings.coupon = Some(coupon);
}

/// Adds the notification service over its own `database` to `settings`,
/// sending every channel to a JSON-lines file at `sink`, with `dispatchers`
/// dispatchers polling often.
pub fn with_notification(
    settings: &mut Settings,
    database: &TestDatabase,
    sink: &std::path::Path,
    dispatchers: usize,
) {
    let mut n = huitou_notification::NotificationConfig {
        database: database.config.clone(),
        dispatchers,
        idle_millis: 20,
        ..Default::default()
    };
    n.providers.insert(
        "log".into(),
        huitou_notification::providers::ProviderConfig::Log {
            path: sink.display().to_string(),
        },
    );
    settings.notification = Some(n);
}

async fn shop_keys(suite: &Suite, name: &str) -> ShopKeys {
    let store = &suite.customer().expect("customer runs").store;
    let shop = store
        .create_shop(name, "Asia/Shanghai")
        .await
        .expect("shop");
    let id = shop.id.as_str();
    let key = |role| async move { store.create_api_key(id, role, "test").await.expect("key").1 };
    ShopKeys {
        shop_id: shop.id.clone(),
        storefront: key(Role::Storefront).await,
        operator: key(Role::Operator).await,
        admin: key(Role::Admin).await,
    }
}

impl TestSuite {
    /// Starts a suite of every service on fresh storage.
    pub async fn start(label: &str) -> TestSuite {
        let database = TestDatabase::new(label).await;
        let loyalty = TestDatabase::new(&format!("{label}-loyalty")).await;
        let coupon = TestDatabase::new(&format!("{label}-coupon")).await;
        let mut settings = test_settings(&database);
        with_loyalty(&mut settings, &loyalty);
        with_coupon(&mut settings, &coupon, huitou_testkit::redis_url());
        let mut suite = Self::start_with(database, settings).await;
        suite.loyalty_database = Some(loyalty);
        suite.coupon_database = Some(coupon);
        suite
    }

    /// Starts a suite with the given settings.
    pub async fn start_with(database: TestDatabase, settings: Settings) -> TestSuite {
        let suite = Suite::open(settings.clone(), true)
            .await
            .expect("suite opens");
        let shop = shop_keys(&suite, "测试店铺").await;
        let other_shop = shop_keys(&suite, "隔壁店铺").await;
        let (address, stop, task, channel) = serve(suite).await;
        TestSuite {
            address,
            shop,
            other_shop,
            database,
            loyalty_database: None,
            coupon_database: None,
            notification_database: None,
            settings,
            stop: Some(stop),
            task: Some(task),
            channel,
        }
    }

    /// Stops the server and starts a new one over the same storage (a
    /// process restart), on a new port.
    pub async fn restart(mut self) -> TestSuite {
        self.stop_server().await;
        let suite = Suite::open(self.settings.clone(), true)
            .await
            .expect("suite reopens");
        let (address, stop, task, channel) = serve(suite).await;
        self.address = address;
        self.stop = Some(stop);
        self.task = Some(task);
        self.channel = channel;
        self
    }

    /// Asks the server to shut down without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for a server asked to stop; how long it took.
    pub async fn wait_stopped(&mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        started.elapsed()
    }

    /// Stops the server, keeping the storage.
    pub async fn stop_server(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Starts a second replica over the same storage and cache; its client
    /// channel and a handle that stops it when dropped.
    pub async fn replica(&self) -> (Channel, oneshot::Sender<()>) {
        let suite = Suite::open(self.settings.clone(), false)
            .await
            .expect("replica opens");
        let (_, stop, _task, channel) = serve(suite).await;
        (channel, stop)
    }

    /// A customer-service client presenting `key` over `channel`.
    pub fn customers_via(&self, channel: Channel, key: &str) -> Customers {
        let bearer = Bearer(format!("Bearer {key}").parse().expect("metadata"));
        CustomerServiceClient::with_interceptor(channel, bearer)
    }

    /// A channel to any address, for calling other test servers.
    pub fn channel_to(&self, address: SocketAddr) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .timeout(Duration::from_secs(30))
            .connect_lazy()
    }

    /// The shared channel.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A customer-service client presenting `key`.
    pub fn customers(&self, key: &str) -> Customers {
        let bearer = Bearer(format!("Bearer {key}").parse().expect("metadata"));
        CustomerServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    /// A shop-service client presenting `key`.
    pub fn shops(&self, key: &str) -> Shops {
        let bearer = Bearer(format!("Bearer {key}").parse().expect("metadata"));
        ShopServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    /// A loyalty-service client presenting `key`.
    pub fn loyalty(&self, key: &str) -> Loyalty {
        let bearer = Bearer(format!("Bearer {key}").parse().expect("metadata"));
        LoyaltyServiceClient::with_interceptor(self.channel.clone(), bearer)
    }

    /// A coupon-service client presenting `key`.
    pub fn coupons(&self, key: &str) -> Coupons {
        CouponServiceClient::with_interceptor(self.channel.clone(), bearer(key))
    }

    /// A notification-service client presenting `key`.
    pub fn notifications(&self, key: &str) -> Notifications {
        NotificationServiceClient::with_interceptor(self.channel.clone(), bearer(key))
    }

    /// A coupon-service client presenting `key` over `channel`.
    pub fn coupons_via(&self, channel: Channel, key: &str) -> Coupons {
        CouponServiceClient::with_interceptor(channel, bearer(key))
    }

    /// Stops the server and hands back the storage for inspection; call
    /// `cleanup` on it afterwards.
    pub async fn stop_keeping_storage(mut self) -> TestDatabase {
        self.stop_server().await;
        if let Some(loyalty) = self.loyalty_database.take() {
            loyalty.cleanup().await;
        }
        if let Some(coupon) = self.coupon_database.take() {
            coupon.cleanup().await;
        }
        if let Some(n) = self.notification_database.take() {
            n.cleanup().await;
        }
        self.database
    }

    /// Stops the server, waits for it, and drops a PostgreSQL database.
    pub async fn stop(self) {
        self.stop_keeping_storage().await.cleanup().await;
    }
}

type Running = (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
    Channel,
);

async fn serve(suite: Suite) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
        };
        if let Err(e) = suite.serve(listener, stop).await {
            panic!("suite failed: {e}");
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    (address, stop_tx, task, channel)
}

/// The reason in a status's `google.rpc.ErrorInfo`.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The fields named in a status's `google.rpc.BadRequest`.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// A timestamp `seconds_ago` before now.
pub fn ago(seconds_ago: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    prost_types::Timestamp {
        seconds: now - seconds_ago,
        nanos: 0,
    }
}

/// Rounds a race test runs: `default`, or `HUITOU_RACE_ROUNDS` when set
/// (CI and local runs turn it up or down without editing tests).
pub fn race_rounds(default: usize) -> usize {
    std::env::var("HUITOU_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(default, |r| r.max(1))
}

/// A service's event inbox, called as another service's relay calls it:
/// events delivered in whatever order a test needs.
pub struct Inbox {
    client: huitou_proto::events::v1::event_consumer_service_client::EventConsumerServiceClient<
        tonic::service::interceptor::InterceptedService<
            Channel,
            huitou_runtime::client::InternalCredential,
        >,
    >,
    shop: String,
    consumer: &'static str,
}

impl Inbox {
    /// The inbox of `consumer` ("loyalty", "coupon", "notification") in
    /// the suite, for its shop.
    pub fn of(suite: &TestSuite, consumer: &'static str) -> Self {
        use huitou_proto::events::v1::event_consumer_service_client::EventConsumerServiceClient;
        Self {
            client: EventConsumerServiceClient::with_interceptor(
                suite.channel(),
                huitou_runtime::client::InternalCredential::new(&SecretString::from(
                    INTERNAL_TOKEN,
                ))
                .expect("credential"),
            ),
            shop: suite.shop.shop_id.clone(),
            consumer,
        }
    }

    /// An event of the shop, with a new id, that occurred `seconds_ago`.
    pub fn envelope_at(
        &self,
        seconds_ago: i64,
        payload: huitou_proto::events::v1::event_envelope::Payload,
    ) -> huitou_proto::events::v1::EventEnvelope {
        huitou_proto::events::v1::EventEnvelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            shop_id: self.shop.clone(),
            occur_time: Some(ago(seconds_ago)),
            source_service: "customer".into(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    /// An event of the shop, with a new id, that occurred 10 s ago.
    pub fn envelope(
        &self,
        payload: huitou_proto::events::v1::event_envelope::Payload,
    ) -> huitou_proto::events::v1::EventEnvelope {
        self.envelope_at(10, payload)
    }

    /// Delivers `events` in one call, in the order given.
    pub async fn deliver(
        &self,
        events: Vec<huitou_proto::events::v1::EventEnvelope>,
    ) -> huitou_proto::events::v1::DeliverEventsResponse {
        use huitou_proto::events::v1::DeliverEventsRequest;
        let mut request =
            huitou_runtime::client::for_shop(&self.shop, DeliverEventsRequest { events })
                .expect("request");
        // The suite serves several inboxes: the header picks one.
        request.metadata_mut().insert(
            huitou_storage::inbox::CONSUMER_HEADER,
            self.consumer.parse().expect("metadata"),
        );
        self.client
            .clone()
            .deliver_events(request)
            .await
            .expect("deliver")
            .into_inner()
    }
}
