//! What checkout reads, kept close: a member's standing (tier, returning
//! or not) and the shop's old-customer zone prices.
//!
//! Standings live in the cache (Redis when configured, else in-process),
//! versioned by the member row's `updated_at` and written only over older
//! versions — by readers after a miss and by writers after every commit —
//! so a racing reader never puts back an older tier. Zone prices are held
//! per shop in the process for two seconds (and replaced at once after a
//! local change): a price list edited on another replica reaches this one
//! within that time. A shop with more zone prices than fit the snapshot is
//! read from the database per cart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huitou_storage::cache::{Cache, get_versioned, shop_key};
use serde::{Deserialize, Serialize};

use super::catalog::PriceRow;
use super::members::{MemberKey, MemberRow};

/// How long standings live in the cache.
const TTL: Duration = Duration::from_secs(300);
/// How long a zone price snapshot is used.
const PRICES_TTL: Duration = Duration::from_secs(2);
/// Most zone prices a shop's snapshot holds.
pub const SNAPSHOT_LIMIT: usize = 5_000;

/// A member as checkout needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Customer id.
    pub customer_id: String,
    /// Tier code.
    pub tier_code: String,
    /// Has a paid order.
    pub returning: bool,
}

impl From<&MemberRow> for Standing {
    fn from(m: &MemberRow) -> Self {
        Self {
            customer_id: m.customer_id.clone(),
            tier_code: m.tier_code.clone(),
            returning: m.paid_order_count > 0,
        }
    }
}

/// A shop's zone prices, or a note that there are too many to hold.
#[derive(Debug, Clone)]
pub enum Zone {
    /// Every zone price of the shop, by SKU.
    All(HashMap<String, PriceRow>),
    /// More than [`SNAPSHOT_LIMIT`]: look them up per cart.
    TooMany,
}

type Snapshots = HashMap<String, (Instant, Arc<Zone>)>;

/// The checkout cache.
#[derive(Clone)]
pub struct CheckoutCache {
    cache: Arc<dyn Cache>,
    zones: Arc<Mutex<Snapshots>>,
}

impl CheckoutCache {
    /// Over `cache`.
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        Self {
            cache,
            zones: Arc::default(),
        }
    }

    fn by_id(shop_id: &str, id: &str) -> String {
        shop_key(shop_id, &["member", id])
    }

    fn by_nick(shop_id: &str, nick: &str) -> String {
        shop_key(shop_id, &["member-nick", nick])
    }

    /// The cached standing of the member `key` names.
    pub async fn standing(&self, shop_id: &str, key: &MemberKey) -> Option<Standing> {
        let key = match key {
            MemberKey::Id(id) => Self::by_id(shop_id, id),
            MemberKey::Nick(nick) => Self::by_nick(shop_id, nick),
        };
        let (_, bytes) = get_versioned(&*self.cache, &key).await?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Caches a member's standing as read or written, under its id and its
    /// buyer nick (nicks never change; an erased member loses theirs).
    pub async fn remember(&self, m: &MemberRow) {
        let Ok(value) = serde_json::to_vec(&Standing::from(m)) else {
            return;
        };
        let _ = self
            .cache
            .put_if_newer(
                &Self::by_id(&m.shop_id, &m.customer_id),
                m.updated_at,
                &value,
                TTL,
            )
            .await;
        if !m.buyer_nick.is_empty() {
            let _ = self
                .cache
                .put_if_newer(
                    &Self::by_nick(&m.shop_id, &m.buyer_nick),
                    m.updated_at,
                    &value,
                    TTL,
                )
                .await;
        }
    }

    /// Caches the standings of members a batch changed, together: one
    /// round trip to Redis for the whole batch.
    pub async fn remember_all(&self, members: &[MemberRow]) {
        let mut entries = Vec::with_capacity(members.len() * 2);
        for m in members {
            let Ok(value) = serde_json::to_vec(&Standing::from(m)) else {
                continue;
            };
            if !m.buyer_nick.is_empty() {
                entries.push((
                    Self::by_nick(&m.shop_id, &m.buyer_nick),
                    m.updated_at,
                    value.clone(),
                ));
            }
            entries.push((Self::by_id(&m.shop_id, &m.customer_id), m.updated_at, value));
        }
        let _ = self.cache.put_many_if_newer(&entries, TTL).await;
    }

    /// Forgets a buyer nick (the customer was erased).
    pub async fn forget_nick(&self, shop_id: &str, nick: &str) {
        let _ = self.cache.remove(&Self::by_nick(shop_id, nick)).await;
    }

    /// The shop's zone snapshot, if fresh.
    pub fn zone(&self, shop_id: &str) -> Option<Arc<Zone>> {
        let map = self.zones.lock().ok()?;
        let (at, zone) = map.get(shop_id)?;
        (at.elapsed() < PRICES_TTL).then(|| zone.clone())
    }

    /// Keeps a zone snapshot for the shop.
    pub fn keep_zone(&self, shop_id: &str, zone: Arc<Zone>) {
        if let Ok(mut map) = self.zones.lock() {
            map.insert(shop_id.to_owned(), (Instant::now(), zone));
        }
    }

    /// Drops the shop's snapshot (its prices changed here).
    pub fn drop_zone(&self, shop_id: &str) {
        if let Ok(mut map) = self.zones.lock() {
            map.remove(shop_id);
        }
    }
}
