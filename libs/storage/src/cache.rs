//! The cache and counters: Redis when configured, in-process otherwise.
//!
//! Redis is an accelerator, never the only copy of a fact: values here can
//! be rebuilt from the database, counters only pace things (rate limits,
//! frequency caps). When Redis fails, calls fall back to the in-process store
//! of this replica — limits become per replica for a while, nothing breaks —
//! and every Redis call has a short timeout so a hung Redis never stalls a
//! request. Keys are hash-tagged by shop (`h:{shop}:...`) so multi-key
//! scripts stay in one Redis Cluster slot.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use huitou_runtime::Failure;
use huitou_runtime::auth::BoxFuture;
use serde::{Deserialize, Serialize};

/// Why a cache call failed.
#[derive(Debug, thiserror::Error)]
#[error("cache unavailable: {0}")]
pub struct CacheError(String);

/// A key-value cache with expiring counters.
pub trait Cache: Send + Sync + 'static {
    /// The value under `key`, if present and not expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>>;
    /// Stores `value` under `key` for `ttl`.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>>;
    /// Stores `value` under `key` for `ttl` unless the entry there carries a
    /// version at least `version`: writers and readers racing to fill a
    /// cache can then never put an older value over a newer one. Read it back
    /// with [`get_versioned`].
    fn put_if_newer<'a>(
        &'a self,
        key: &'a str,
        version: i64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>>;
    /// Stores each `(key, version, value)` as [`Cache::put_if_newer`] does.
    /// A cache behind the network sends them together: a batch that
    /// changed a thousand customers pays one round trip, not a thousand.
    fn put_many_if_newer<'a>(
        &'a self,
        entries: &'a [(String, i64, Vec<u8>)],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            for (key, version, value) in entries {
                self.put_if_newer(key, *version, value, ttl).await?;
            }
            Ok(())
        })
    }
    /// Removes `key`.
    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>>;
    /// Removes every key of `keys`: in one round trip for a cache behind the
    /// network.
    fn remove_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            for key in keys {
                self.remove(key).await?;
            }
            Ok(())
        })
    }
    /// Adds `by` to the counter under `key` and returns the new value; a new
    /// counter expires after `ttl` (a fixed window).
    fn incr<'a>(
        &'a self,
        key: &'a str,
        by: i64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<i64, CacheError>>;
    /// `redis` or `in-process`.
    fn kind(&self) -> &'static str;
}

/// Width of the version prefix of versioned entries (decimal, zero-padded).
const VERSION_WIDTH: usize = 20;

fn versioned(version: i64, value: &[u8]) -> Vec<u8> {
    let mut out = format!("{:0width$}", version.max(0), width = VERSION_WIDTH).into_bytes();
    out.extend_from_slice(value);
    out
}

fn version_of(entry: &[u8]) -> Option<i64> {
    std::str::from_utf8(entry.get(..VERSION_WIDTH)?)
        .ok()?
        .parse()
        .ok()
}

/// Reads a versioned entry: its version and value.
pub async fn get_versioned(cache: &dyn Cache, key: &str) -> Option<(i64, Vec<u8>)> {
    let entry = cache.get(key).await.ok().flatten()?;
    let version = version_of(&entry)?;
    Some((version, entry[VERSION_WIDTH..].to_vec()))
}

/// A cache key for `shop_id`, hash-tagged for Redis Cluster.
pub fn shop_key(shop_id: &str, parts: &[&str]) -> String {
    let mut key = format!("h:{{{shop_id}}}");
    for p in parts {
        key.push(':');
        key.push_str(p);
    }
    key
}

/// Cache settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `redis://host:6379/0`; empty for the in-process cache.
    pub redis_url: String,
    /// Longest a Redis call may take before the in-process fallback answers, in ms.
    pub op_timeout_ms: u64,
    /// Most entries the in-process cache holds.
    pub local_capacity: usize,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("redis_url", &crate::db::redact_url(&self.redis_url))
            .field("op_timeout_ms", &self.op_timeout_ms)
            .finish()
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            op_timeout_ms: 250,
            local_capacity: 100_000,
        }
    }
}

impl CacheConfig {
    /// Problems with the settings under `section`.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        let url = &self.redis_url;
        if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
            p.push(format!(
                "{section}.redis_url: must start with redis:// or rediss://"
            ));
        }
        if !(10..=10_000).contains(&self.op_timeout_ms) {
            p.push(format!("{section}.op_timeout_ms: must be 10-10000"));
        }
        if self.local_capacity < 100 {
            p.push(format!("{section}.local_capacity: must be at least 100"));
        }
        p
    }

    /// The cache these settings describe. Redis connects lazily, so a Redis
    /// that is down at start does not stop the service.
    pub fn open(&self) -> Result<std::sync::Arc<dyn Cache>, CacheError> {
        let local = LocalCache::new(self.local_capacity);
        if self.redis_url.is_empty() {
            return Ok(std::sync::Arc::new(local));
        }
        Ok(std::sync::Arc::new(RedisCache::new(
            &self.redis_url,
            Duration::from_millis(self.op_timeout_ms),
            local,
        )?))
    }
}

enum Entry {
    Bytes(Vec<u8>),
    Counter(i64),
}

const SHARDS: usize = 16;

/// The in-process cache: sharded maps with expiry.
pub struct LocalCache {
    shards: Vec<Mutex<HashMap<String, (Entry, Instant)>>>,
    per_shard: usize,
}

impl LocalCache {
    /// Holds at most about `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, (Entry, Instant)>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn with_shard<T>(
        &self,
        key: &str,
        f: impl FnOnce(&mut HashMap<String, (Entry, Instant)>) -> T,
    ) -> T {
        let mut map = match self.shard(key).lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= self.per_shard && !map.contains_key(key) {
            let now = Instant::now();
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= self.per_shard {
                // Still full of live entries: forget an eighth of them (a
                // cache may forget), so the scan above runs once per that
                // many inserts rather than on every one.
                let mut excess = map.len() + 1 - self.per_shard + self.per_shard / 8;
                map.retain(|_, _| {
                    let keep = excess == 0;
                    excess = excess.saturating_sub(1);
                    keep
                });
            }
        }
        f(&mut map)
    }

    fn get_now(&self, key: &str) -> Option<Vec<u8>> {
        self.with_shard(key, |map| match map.get(key) {
            Some((Entry::Bytes(v), exp)) if *exp > Instant::now() => Some(v.clone()),
            _ => None,
        })
    }

    fn put_now(&self, key: &str, value: &[u8], ttl: Duration) {
        self.with_shard(key, |map| {
            map.insert(
                key.to_owned(),
                (Entry::Bytes(value.to_vec()), Instant::now() + ttl),
            );
        });
    }

    fn put_if_newer_now(&self, key: &str, version: i64, value: &[u8], ttl: Duration) {
        self.with_shard(key, |map| {
            let now = Instant::now();
            let newer = match map.get(key) {
                Some((Entry::Bytes(v), exp)) if *exp > now => {
                    version_of(v).is_none_or(|old| version > old)
                }
                _ => true,
            };
            if newer {
                map.insert(
                    key.to_owned(),
                    (Entry::Bytes(versioned(version, value)), now + ttl),
                );
            }
        });
    }

    fn remove_now(&self, key: &str) {
        self.with_shard(key, |map| {
            map.remove(key);
        });
    }

    fn incr_now(&self, key: &str, by: i64, ttl: Duration) -> i64 {
        self.with_shard(key, |map| {
            let now = Instant::now();
            let entry = map
                .entry(key.to_owned())
                .or_insert((Entry::Counter(0), now + ttl));
            if entry.1 <= now || !matches!(entry.0, Entry::Counter(_)) {
                *entry = (Entry::Counter(0), now + ttl);
            }
            match &mut entry.0 {
                Entry::Counter(n) => {
                    *n += by;
                    *n
                }
                Entry::Bytes(_) => by,
            }
        })
    }
}

impl Cache for LocalCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(async move { Ok(self.get_now(key)) })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.put_now(key, value, ttl);
            Ok(())
        })
    }

    fn put_if_newer<'a>(
        &'a self,
        key: &'a str,
        version: i64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.put_if_newer_now(key, version, value, ttl);
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.remove_now(key);
            Ok(())
        })
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        by: i64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<i64, CacheError>> {
        Box::pin(async move { Ok(self.incr_now(key, by, ttl)) })
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

/// Redis, with the in-process cache standing in while Redis fails.
pub struct RedisCache {
    conn: redis::aio::ConnectionManager,
    timeout: Duration,
    fallback: LocalCache,
    incr_script: redis::Script,
    newer_script: redis::Script,
    failures: AtomicU64,
    /// When the last failure happened, so calls skip Redis for a moment.
    started: Instant,
    /// Until when (ms after `started`) Redis is taken for down.
    down_until_ms: AtomicU64,
}

/// After a failed call, how long every call goes straight to the fallback.
/// Without it each call of a checkout would wait out the operation timeout
/// while Redis is down; with it an outage costs one timeout per second.
const DOWN_FOR: Duration = Duration::from_secs(1);

/// Values written while Redis fails live this long in the process, so
/// replicas that could not see each other's writes disagree only briefly.
const FALLBACK_TTL: Duration = Duration::from_secs(2);

const INCR_WITH_EXPIRY: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v";

const PUT_IF_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local old = tonumber(string.sub(cur, 1, 20))
  if old and old >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1";

impl RedisCache {
    /// Connects lazily to `url`.
    pub fn new(url: &str, timeout: Duration, fallback: LocalCache) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|e| CacheError(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CacheError(e.to_string()))?;
        Ok(Self {
            conn,
            timeout,
            fallback,
            incr_script: redis::Script::new(INCR_WITH_EXPIRY),
            newer_script: redis::Script::new(PUT_IF_NEWER),
            failures: AtomicU64::new(0),
            started: Instant::now(),
            down_until_ms: AtomicU64::new(0),
        })
    }

    /// Checks Redis answers (for start-up checks and tests).
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        self.bounded(async move { cmd.query_async::<String>(&mut conn).await })
            .await
            .map(|_| ())
    }

    /// The put-if-newer script for one entry.
    fn newer_invocation(
        &self,
        key: &str,
        version: i64,
        value: &[u8],
        ttl: Duration,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.newer_script.key(key);
        invocation
            .arg(version)
            .arg(versioned(version, value))
            .arg(ttl.as_millis().max(1) as u64);
        invocation
    }

    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        if (self.started.elapsed().as_millis() as u64) < self.down_until_ms.load(Ordering::Relaxed)
        {
            return Err(CacheError("redis taken for down after a failure".into()));
        }
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            Err(_) => Err(self.failed("timed out".into())),
        }
    }

    fn failed(&self, detail: String) -> CacheError {
        let until = self.started.elapsed() + DOWN_FOR;
        self.down_until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
        // One line per 1000 failures keeps a Redis outage from flooding logs.
        if self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1000)
        {
            tracing::warn!(%detail, "redis call failed; using the in-process fallback");
        }
        CacheError(detail)
    }
}

impl Cache for RedisCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let cmd = redis::Cmd::get(key);
            match self
                .bounded(async move { cmd.query_async::<Option<Vec<u8>>>(&mut conn).await })
                .await
            {
                Ok(v) => Ok(v),
                Err(_) => Ok(self.fallback.get_now(key)),
            }
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let cmd = redis::Cmd::pset_ex(key, value, ttl.as_millis().max(1) as u64);
            if self
                .bounded(async move { cmd.query_async::<()>(&mut conn).await })
                .await
                .is_err()
            {
                self.fallback.put_now(key, value, ttl.min(FALLBACK_TTL));
            }
            Ok(())
        })
    }

    fn put_if_newer<'a>(
        &'a self,
        key: &'a str,
        version: i64,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let invocation = self.newer_invocation(key, version, value, ttl);
            let stored = self
                .bounded(async move { invocation.invoke_async::<i64>(&mut conn).await })
                .await;
            if stored.is_err() {
                self.fallback
                    .put_if_newer_now(key, version, value, ttl.min(FALLBACK_TTL));
            }
            Ok(())
        })
    }

    fn put_many_if_newer<'a>(
        &'a self,
        entries: &'a [(String, i64, Vec<u8>)],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(());
            }
            let invocations: Vec<redis::ScriptInvocation<'_>> = entries
                .iter()
                .map(|(key, version, value)| self.newer_invocation(key, *version, value, ttl))
                .collect();
            // One pipeline: the script loaded (a no-op when it is), then
            // every entry through it.
            let mut pipe = redis::pipe();
            pipe.load_script(&self.newer_script).ignore();
            for invocation in &invocations {
                pipe.invoke_script(invocation).ignore();
            }
            let mut conn = self.conn.clone();
            let stored = self
                .bounded(async move { pipe.query_async::<()>(&mut conn).await })
                .await;
            if stored.is_err() {
                for (key, version, value) in entries {
                    self.fallback
                        .put_if_newer_now(key, *version, value, ttl.min(FALLBACK_TTL));
                }
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            // Forget locally too: a value cached during an outage must not
            // outlive the change that made it stale.
            self.fallback.remove_now(key);
            let mut conn = self.conn.clone();
            let cmd = redis::Cmd::del(key);
            self.bounded(async move { cmd.query_async::<()>(&mut conn).await })
                .await
        })
    }

    fn remove_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            for key in keys {
                self.fallback.remove_now(key);
            }
            let mut conn = self.conn.clone();
            let cmd = redis::Cmd::del(keys);
            self.bounded(async move { cmd.query_async::<()>(&mut conn).await })
                .await
        })
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        by: i64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<i64, CacheError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut invocation = self.incr_script.key(key);
            invocation.arg(by).arg(ttl.as_millis().max(1) as u64);
            match self
                .bounded(async move { invocation.invoke_async::<i64>(&mut conn).await })
                .await
            {
                Ok(v) => Ok(v),
                Err(_) => Ok(self.fallback.incr_now(key, by, ttl)),
            }
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// A fixed-window rate limit on top of a cache counter.
pub async fn rate_limit(
    cache: &dyn Cache,
    key: &str,
    limit: i64,
    window: Duration,
) -> Result<(), Failure> {
    match cache.incr(key, 1, window).await {
        Ok(n) if n > limit => Err(Failure::rate_limited(window)),
        // A cache that cannot count does not block callers.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_values_expire_and_counters_reset_per_window() {
        let cache = LocalCache::new(1000);
        cache.put("a", b"1", Duration::from_millis(30)).await.ok();
        assert_eq!(cache.get("a").await.ok().flatten(), Some(b"1".to_vec()));
        assert_eq!(
            cache.incr("n", 2, Duration::from_millis(30)).await.ok(),
            Some(2)
        );
        assert_eq!(
            cache.incr("n", 3, Duration::from_millis(30)).await.ok(),
            Some(5)
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(cache.get("a").await.ok().flatten(), None);
        assert_eq!(
            cache.incr("n", 1, Duration::from_millis(30)).await.ok(),
            Some(1)
        );
    }

    #[tokio::test]
    async fn local_cache_stays_within_capacity() {
        let cache = LocalCache::new(160);
        for i in 0..10_000 {
            cache
                .put(&format!("k{i}"), b"v", Duration::from_secs(60))
                .await
                .ok();
        }
        let total: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= 160, "{total}");
    }

    #[tokio::test]
    async fn rate_limit_refuses_past_the_limit_with_retry_info() {
        let cache = LocalCache::new(1000);
        for _ in 0..3 {
            assert!(
                rate_limit(&cache, "k", 3, Duration::from_secs(60))
                    .await
                    .is_ok()
            );
        }
        let refused = rate_limit(&cache, "k", 3, Duration::from_secs(60)).await;
        assert_eq!(
            refused.map_err(|f| f.code),
            Err(tonic::Code::ResourceExhausted)
        );
    }

    async fn behaves_as_a_cache(cache: &dyn Cache, prefix: &str) {
        let key = |k: &str| format!("{prefix}:{k}");
        assert_eq!(cache.get(&key("missing")).await.ok().flatten(), None);
        cache
            .put(&key("v"), b"hello", Duration::from_millis(300))
            .await
            .ok();
        assert_eq!(
            cache.get(&key("v")).await.ok().flatten(),
            Some(b"hello".to_vec())
        );
        cache.remove(&key("v")).await.ok();
        assert_eq!(cache.get(&key("v")).await.ok().flatten(), None);
        assert_eq!(
            cache
                .incr(&key("n"), 2, Duration::from_millis(300))
                .await
                .ok(),
            Some(2)
        );
        assert_eq!(
            cache
                .incr(&key("n"), 5, Duration::from_millis(300))
                .await
                .ok(),
            Some(7)
        );
        cache
            .put_if_newer(&key("c"), 5, b"five", Duration::from_secs(5))
            .await
            .ok();
        cache
            .put_if_newer(&key("c"), 4, b"four", Duration::from_secs(5))
            .await
            .ok();
        assert_eq!(
            get_versioned(cache, &key("c")).await,
            Some((5, b"five".to_vec())),
            "older never wins"
        );
        cache
            .put_if_newer(&key("c"), 6, b"six", Duration::from_secs(5))
            .await
            .ok();
        assert_eq!(
            get_versioned(cache, &key("c")).await,
            Some((6, b"six".to_vec()))
        );
        // Together: each entry as alone; the older one loses, the new
        // ones land.
        let entries = vec![
            (key("c"), 3, b"three".to_vec()),
            (key("d"), 1, b"one".to_vec()),
            (key("e"), 2, b"two".to_vec()),
        ];
        cache
            .put_many_if_newer(&entries, Duration::from_secs(5))
            .await
            .ok();
        assert_eq!(
            get_versioned(cache, &key("c")).await,
            Some((6, b"six".to_vec()))
        );
        assert_eq!(
            get_versioned(cache, &key("d")).await,
            Some((1, b"one".to_vec()))
        );
        assert_eq!(
            get_versioned(cache, &key("e")).await,
            Some((2, b"two".to_vec()))
        );
        cache.remove_many(&[key("d"), key("e")]).await.ok();
        assert_eq!(get_versioned(cache, &key("d")).await, None);
        assert_eq!(get_versioned(cache, &key("e")).await, None);
        assert!(get_versioned(cache, &key("c")).await.is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            cache
                .incr(&key("n"), 1, Duration::from_millis(300))
                .await
                .ok(),
            Some(1),
            "a new window"
        );
    }

    #[tokio::test]
    async fn redis_and_in_process_caches_behave_alike() {
        behaves_as_a_cache(&LocalCache::new(1000), "local").await;
        // CI sets HUITOU_TEST_REDIS_URL; then Redis must answer.
        if let Ok(url) = std::env::var("HUITOU_TEST_REDIS_URL") {
            let redis = RedisCache::new(&url, Duration::from_millis(500), LocalCache::new(100))
                .expect("client");
            redis
                .ping()
                .await
                .expect("HUITOU_TEST_REDIS_URL is set but Redis does not answer");
            let prefix = format!("test:{}", uuid::Uuid::now_v7());
            behaves_as_a_cache(&redis, &prefix).await;
        }
    }

    #[tokio::test]
    async fn a_dead_redis_falls_back_to_the_process() {
        let redis = RedisCache::new(
            "redis://127.0.0.1:1",
            Duration::from_millis(50),
            LocalCache::new(100),
        )
        .expect("client");
        assert!(redis.ping().await.is_err());
        // Taken for down after the failure: calls go straight to the
        // process instead of each waiting out the timeout (50 calls would
        // take 2.5 s of timeouts).
        let started = Instant::now();
        for i in 0..50 {
            redis
                .put(&format!("quick{i}"), b"v", Duration::from_secs(5))
                .await
                .ok();
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        behaves_as_a_cache(&redis, "dead").await;
    }

    #[test]
    fn shop_keys_are_hash_tagged() {
        assert_eq!(shop_key("s1", &["limit", "reveal"]), "h:{s1}:limit:reveal");
    }
}
