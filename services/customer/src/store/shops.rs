//! Shops and their API keys, and the key check every call goes through.

use std::sync::Arc;
use std::time::Duration;

use huitou_runtime::auth::{ApiKeySecret, BoxFuture, KeyVerifier, constant_time_eq};
use huitou_runtime::{Caller, Failure, Role};
use huitou_storage::cache::LocalCache;
use huitou_storage::{StorageError, now_micros};
use sea_orm::{ConnectionTrait, FromQueryResult, Statement};

use super::{Store, new_id};
use crate::error::CustomerError;

/// The default shop time zone.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Shanghai";

/// A shop.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct Shop {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// IANA time zone.
    pub time_zone: String,
    /// Created, µs.
    pub created_at: i64,
}

/// An API key without its secret.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct ApiKeyRecord {
    /// Key id.
    pub id: String,
    /// Its shop.
    pub shop_id: String,
    /// Role name.
    pub role: String,
    /// Label.
    pub label: String,
    /// Stored hash of the secret.
    pub secret_hash: String,
    /// Created, µs.
    pub created_at: i64,
    /// Revoked, µs.
    pub revoked_at: Option<i64>,
}

/// Checks a shop name: 1-32 characters, no control characters.
pub fn check_shop_name(name: &str) -> Result<(), &'static str> {
    crate::domain::customer::text(name.trim(), 1, 32).map(|_| ())
}

/// Checks an IANA time zone name.
pub fn check_time_zone(tz: &str) -> Result<(), &'static str> {
    tz.parse::<chrono_tz::Tz>()
        .map(|_| ())
        .map_err(|_| "must be an IANA time zone such as Asia/Shanghai")
}

impl Store {
    /// Creates a shop.
    pub async fn create_shop(&self, name: &str, time_zone: &str) -> Result<Shop, CustomerError> {
        let shop = Shop {
            id: new_id(),
            name: name.trim().to_owned(),
            time_zone: time_zone.to_owned(),
            created_at: now_micros(),
        };
        let tx = self.db.begin().await?;
        tx.execute(
            "INSERT INTO shops (id, name, time_zone, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
            vec![
                shop.id.clone().into(),
                shop.name.clone().into(),
                shop.time_zone.clone().into(),
                shop.created_at.into(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(shop)
    }

    /// Reads a shop.
    pub async fn shop(&self, shop_id: &str) -> Result<Shop, CustomerError> {
        let stmt = Statement::from_sql_and_values(
            self.db.backend(),
            self.db
                .sql("SELECT id, name, time_zone, created_at FROM shops WHERE id = $1"),
            vec![shop_id.into()],
        );
        let row = self
            .db
            .conn()
            .query_one_raw(stmt)
            .await?
            .ok_or(CustomerError::ShopNotFound)?;
        Ok(Shop::from_query_result(&row, "")?)
    }

    /// Changes a shop's name or time zone inside `tx`.
    pub async fn update_shop(
        &self,
        tx: &huitou_storage::WriteTx,
        shop_id: &str,
        name: Option<&str>,
        time_zone: Option<&str>,
    ) -> Result<(), CustomerError> {
        let changed = tx
            .execute(
                "UPDATE shops SET name = COALESCE($1, name), time_zone = COALESCE($2, time_zone), updated_at = $3
                 WHERE id = $4",
                vec![
                    name.map(|n| n.trim().to_owned()).into(),
                    time_zone.map(str::to_owned).into(),
                    now_micros().into(),
                    shop_id.into(),
                ],
            )
            .await?;
        if changed == 0 {
            return Err(CustomerError::ShopNotFound);
        }
        Ok(())
    }

    /// Creates an API key; the record and the full key, shown once.
    pub async fn create_api_key(
        &self,
        shop_id: &str,
        role: Role,
        label: &str,
    ) -> Result<(ApiKeyRecord, String), CustomerError> {
        if role == Role::Internal {
            return Err(
                Failure::invalid_field("role", "internal credentials are not API keys").into(),
            );
        }
        self.shop(shop_id).await?;
        let secret = ApiKeySecret::generate()?;
        let record = ApiKeyRecord {
            id: secret.key_id.clone(),
            shop_id: shop_id.to_owned(),
            role: role.as_str().to_owned(),
            label: label.to_owned(),
            secret_hash: secret.secret_hash(),
            created_at: now_micros(),
            revoked_at: None,
        };
        let tx = self.db.begin().await?;
        tx.execute(
            "INSERT INTO api_keys (shop_id, id, role, label, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                record.shop_id.clone().into(),
                record.id.clone().into(),
                record.role.clone().into(),
                record.label.clone().into(),
                record.secret_hash.clone().into(),
                record.created_at.into(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok((record, secret.reveal()))
    }

    /// The shop's keys, newest first.
    pub async fn api_keys(&self, shop_id: &str) -> Result<Vec<ApiKeyRecord>, CustomerError> {
        let stmt = Statement::from_sql_and_values(
            self.db.backend(),
            self.db.sql(
                "SELECT id, shop_id, role, label, secret_hash, created_at, revoked_at FROM api_keys
                 WHERE shop_id = $1 ORDER BY created_at DESC, id",
            ),
            vec![shop_id.into()],
        );
        let rows = self.db.conn().query_all_raw(stmt).await?;
        Ok(rows
            .iter()
            .map(|r| ApiKeyRecord::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StorageError> {
        let stmt = Statement::from_sql_and_values(
            self.db.backend(),
            self.db.sql(
                "SELECT id, shop_id, role, label, secret_hash, created_at, revoked_at FROM api_keys WHERE id = $1",
            ),
            vec![key_id.into()],
        );
        match self.db.conn().query_one_raw(stmt).await? {
            Some(row) => Ok(Some(ApiKeyRecord::from_query_result(&row, "")?)),
            None => Ok(None),
        }
    }

    /// Revokes a key of the shop.
    pub async fn revoke_api_key(
        &self,
        shop_id: &str,
        key_id: &str,
    ) -> Result<ApiKeyRecord, CustomerError> {
        let tx = self.db.begin().await?;
        let changed = tx
            .execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE shop_id = $2 AND id = $3",
                vec![now_micros().into(), shop_id.into(), key_id.into()],
            )
            .await?;
        tx.commit().await?;
        if changed == 0 {
            return Err(CustomerError::KeyNotFound);
        }
        match self.api_key(key_id).await? {
            Some(k) if k.shop_id == shop_id => Ok(k),
            _ => Err(CustomerError::KeyNotFound),
        }
    }
}

/// How long a verified key is trusted before it is looked up again; a
/// revocation reaches every replica within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(10);

/// Verifies API keys against the shop's keys, with a short in-process cache
/// so a call costs no database read.
pub struct StoredKeys {
    store: Store,
    cache: Arc<LocalCache>,
}

impl StoredKeys {
    /// Keys stored in `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Arc::new(LocalCache::new(10_000)),
        }
    }

    /// Forgets a key at once on this replica (after revocation).
    pub fn forget(&self, key_id: &str) {
        use huitou_storage::cache::Cache;
        let cache = self.cache.clone();
        let key = key_id.to_owned();
        tokio::spawn(async move {
            let _ = cache.remove(&key).await;
        });
    }
}

impl StoredKeys {
    /// The caller a key id and secret hash stand for, `None` when unknown,
    /// revoked or wrong.
    pub async fn verify_hash(&self, key_id: &str, hash: &str) -> Result<Option<Caller>, Failure> {
        use huitou_storage::cache::Cache;
        if let Ok(Some(cached)) = self.cache.get(key_id).await
            && let Ok(text) = String::from_utf8(cached)
        {
            // Cached as "hash shop role".
            let mut parts = text.splitn(3, ' ');
            if let (Some(h), Some(shop), Some(role)) = (parts.next(), parts.next(), parts.next())
                && constant_time_eq(h.as_bytes(), hash.as_bytes())
                && let Some(role) = Role::parse(role)
            {
                return Ok(Some(Caller {
                    shop_id: shop.to_owned(),
                    role,
                    key_id: key_id.to_owned(),
                }));
            }
        }
        let Some(record) = self.store.api_key(key_id).await? else {
            return Ok(None);
        };
        if record.revoked_at.is_some()
            || !constant_time_eq(record.secret_hash.as_bytes(), hash.as_bytes())
        {
            return Ok(None);
        }
        let Some(role) = Role::parse(&record.role) else {
            return Ok(None);
        };
        let entry = format!("{} {} {}", record.secret_hash, record.shop_id, record.role);
        let _ = self
            .cache
            .put(key_id, entry.as_bytes(), KEY_CACHE_TTL)
            .await;
        Ok(Some(Caller {
            shop_id: record.shop_id,
            role,
            key_id: key_id.to_owned(),
        }))
    }
}

impl KeyVerifier for StoredKeys {
    fn verify<'a>(
        &'a self,
        key: &'a ApiKeySecret,
    ) -> BoxFuture<'a, Result<Option<Caller>, Failure>> {
        Box::pin(async move { self.verify_hash(&key.key_id, &key.secret_hash()).await })
    }
}
