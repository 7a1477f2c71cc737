//! A suite for benchmarks: fresh storage, a shop, a key, clients.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use huitou::{Settings, Suite};
use huitou_privacy::PersonalDataConfig;
use huitou_proto::customer::v1::customer_service_client::CustomerServiceClient;
use huitou_runtime::Role;
use huitou_storage::DatabaseConfig;
use sea_orm::ConnectionTrait;
use secrecy::SecretString;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// Where a benchmark keeps its data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file in a temp folder (the embedded default).
    Sqlite,
    /// A fresh database on this PostgreSQL server (admin URL).
    Postgres(String),
}

impl Backend {
    /// A fresh database for one measurement.
    pub async fn fresh(&self, label: &str) -> anyhow::Result<DatabaseConfig> {
        match self {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!(
                    "huitou-bench-{label}-{}",
                    uuid::Uuid::now_v7().simple()
                ));
                std::fs::create_dir_all(&dir)?;
                Ok(DatabaseConfig::sqlite_file(&dir.join("bench.db")))
            }
            Backend::Postgres(admin) => {
                let name = format!("huitou_bench_{label}_{}", uuid::Uuid::now_v7().simple());
                let conn = sea_orm::Database::connect(admin.as_str())
                    .await
                    .context("connect to PostgreSQL")?;
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await?;
                conn.close().await?;
                // Swap the database name, keeping any ?host=/socket/dir query.
                let (path, query) = admin
                    .split_once('?')
                    .map_or((admin.as_str(), ""), |(p, q)| (p, q));
                let base = path.rsplit_once('/').map(|(b, _)| b).unwrap_or(path);
                let query = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                Ok(DatabaseConfig {
                    url: format!("{base}/{name}{query}"),
                    max_connections: 64,
                    ..DatabaseConfig::default()
                })
            }
        }
    }

    /// Drops every database this run created (best effort).
    pub async fn drop_created(&self) {
        let Backend::Postgres(admin) = self else {
            return;
        };
        let Ok(conn) = sea_orm::Database::connect(admin.as_str()).await else {
            return;
        };
        let names = conn
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT datname FROM pg_database WHERE datname LIKE 'huitou_bench_%'",
            ))
            .await
            .unwrap_or_default();
        for row in names {
            if let Ok(name) = row.try_get::<String>("", "datname") {
                let _ = conn
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        }
        let _ = conn.close().await;
    }

    /// A name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }
}

/// Adds the API key to every call.
#[derive(Clone)]
pub struct Bearer(pub MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// A customer-service client with a key.
pub type Customers =
    CustomerServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A suite serving for a benchmark.
pub struct Running {
    /// Its address.
    pub address: SocketAddr,
    /// An operator key of its shop.
    pub key: String,
    /// Its shop.
    pub shop_id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// Starts a suite on `database` with the cache at `redis_url` (empty for
    /// in-process), inside the current runtime.
    pub async fn start(database: DatabaseConfig, redis_url: &str) -> anyhow::Result<Running> {
        Self::start_suite(database, None, None, redis_url).await
    }

    /// Starts a suite that also runs loyalty over `loyalty` and coupon over
    /// `coupon` when given.
    pub async fn start_suite(
        database: DatabaseConfig,
        loyalty: Option<DatabaseConfig>,
        coupon: Option<DatabaseConfig>,
        redis_url: &str,
    ) -> anyhow::Result<Running> {
        let redis = redis_url.to_owned();
        Self::start_configured(database, redis_url, move |settings| {
            settings.loyalty = loyalty.map(|database| huitou_loyalty::LoyaltyConfig {
                database,
                ..Default::default()
            });
            settings.coupon = coupon.map(|database| {
                let mut c = huitou_coupon::CouponConfig {
                    database,
                    ..Default::default()
                };
                c.cache.redis_url = redis;
                c
            });
        })
        .await
    }

    /// Starts a suite whose settings `configure` completes (other services,
    /// their options).
    pub async fn start_configured(
        database: DatabaseConfig,
        redis_url: &str,
        configure: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Running> {
        let mut settings = Settings::default();
        configure(&mut settings);
        settings.auth.internal_token =
            Some(SecretString::from("bench-internal-token-0123456789abcdef"));
        settings.customer.database = database;
        settings.customer.personal_data = PersonalDataConfig::generate("k1")?;
        settings.customer.cache.redis_url = redis_url.to_owned();
        settings.server.max_concurrent_requests = 4096;
        let suite = Suite::open(settings, true).await?;
        let shop = suite
            .customer()?
            .store
            .create_shop("压测店铺", "Asia/Shanghai")
            .await?;
        let (_, key) = suite
            .customer()?
            .store
            .create_api_key(&shop.id, Role::Operator, "bench")
            .await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = suite
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Running {
            address,
            key,
            shop_id: shop.id.clone(),
            stop: Some(tx),
        })
    }

    /// `connections` clients over separate HTTP/2 connections.
    pub fn clients(&self, connections: usize) -> anyhow::Result<Vec<Customers>> {
        let bearer = Bearer(format!("Bearer {}", self.key).parse()?);
        (0..connections)
            .map(|_| {
                let channel = channel(self.address)?;
                Ok(CustomerServiceClient::with_interceptor(
                    channel,
                    bearer.clone(),
                ))
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A channel to `address` (one HTTP/2 connection).
pub fn channel(address: SocketAddr) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .connect_lazy(),
    )
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
