//! Customers in the cache, as the masked response they are read as.
//!
//! `GetCustomer` is the checkout path: it reads the cache first and the
//! database on a miss. Entries are versioned by the customer's update time
//! and written only over older versions, by readers after a miss and by
//! writers after every commit that changes a customer, so a racing reader
//! can never put back a value older than the latest write. With Redis the
//! cache is shared by replicas; without it each process keeps its own, which
//! is exact for the embedded default where one process owns the database.
//! Entries live five minutes, bounding any staleness a failed cache write
//! could leave.

use std::sync::Arc;
use std::time::Duration;

use huitou_proto::customer::v1 as pb;
use huitou_storage::cache::{Cache, get_versioned, shop_key};
use prost::Message;

use crate::api::convert;
use crate::domain::customer::Customer;

/// How long entries live.
const TTL: Duration = Duration::from_secs(300);

/// The customer cache.
#[derive(Clone)]
pub struct CustomerCache {
    cache: Arc<dyn Cache>,
}

impl CustomerCache {
    /// Over `cache`.
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        Self { cache }
    }

    /// The underlying cache (rate limits share it).
    pub fn inner(&self) -> &Arc<dyn Cache> {
        &self.cache
    }

    fn by_id(shop_id: &str, id: &str) -> String {
        shop_key(shop_id, &["customer", id])
    }

    fn by_nick(shop_id: &str, nick: &str) -> String {
        shop_key(shop_id, &["nick", nick])
    }

    /// The cached response for a customer id.
    pub async fn get(&self, shop_id: &str, id: &str) -> Option<pb::Customer> {
        let (_, bytes) = get_versioned(&*self.cache, &Self::by_id(shop_id, id)).await?;
        pb::Customer::decode(bytes.as_slice()).ok()
    }

    /// The customer id of a buyer nick, if cached.
    pub async fn id_for_nick(&self, shop_id: &str, nick: &str) -> Option<String> {
        let bytes = self
            .cache
            .get(&Self::by_nick(shop_id, nick))
            .await
            .ok()
            .flatten()?;
        String::from_utf8(bytes).ok()
    }

    /// Caches a customer as read or written; the wire form it returns.
    pub async fn remember(&self, shop_id: &str, customer: &Customer) -> pb::Customer {
        let wire = convert::customer(customer);
        let key = Self::by_id(shop_id, &customer.id);
        let _ = self
            .cache
            .put_if_newer(&key, customer.updated_at, &wire.encode_to_vec(), TTL)
            .await;
        if customer.erased_at.is_none() {
            let _ = self
                .cache
                .put(
                    &Self::by_nick(shop_id, &customer.buyer_nick),
                    customer.id.as_bytes(),
                    TTL,
                )
                .await;
        }
        wire
    }

    /// Caches customers a batch wrote, together: one round trip to Redis
    /// for a thousand-row import batch. Nick entries are left to the
    /// readers (a lookup by nick that misses reads the database and fills
    /// them); a batch never changes a nick.
    pub async fn remember_all(&self, shop_id: &str, customers: &[Customer]) {
        let entries: Vec<(String, i64, Vec<u8>)> = customers
            .iter()
            .map(|c| {
                (
                    Self::by_id(shop_id, &c.id),
                    c.updated_at,
                    convert::customer(c).encode_to_vec(),
                )
            })
            .collect();
        let _ = self.cache.put_many_if_newer(&entries, TTL).await;
    }

    /// Forgets a nick (it changed, on erasure).
    pub async fn forget_nick(&self, shop_id: &str, nick: &str) {
        let _ = self.cache.remove(&Self::by_nick(shop_id, nick)).await;
    }
}
