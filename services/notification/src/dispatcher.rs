//! The dispatcher: takes due messages, asks the customer service where they
//! go, hands them to the channel's provider (or its fallback) and records
//! the answer. Any number of dispatchers run at once, in one process or
//! many: each claims its own messages (`SKIP LOCKED` on PostgreSQL) for a
//! lease; a dispatcher killed mid-send leaves its messages SENDING until
//! the lease ends, and then another sends them again under the same
//! idempotency key. Nothing accepted is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use huitou_storage::cache::{Cache, shop_key};
use huitou_storage::now_micros;
use tokio::task::JoinSet;

use crate::contacts::ContactBook;
use crate::error::NotificationError;
use crate::providers::{Outgoing, Provider, SendError};
use crate::store::Store;
use crate::store::dispatch::Outcome;
use crate::store::messages::MessageRow;
use crate::store::recipients::channel_name;

/// A channel's providers: the first, and the one tried when it fails.
#[derive(Clone)]
pub struct Providers {
    /// Tried first.
    pub first: Arc<dyn Provider>,
    /// Tried when the first fails.
    pub fallback: Option<Arc<dyn Provider>>,
    /// Most messages per shop per second; 0 for no limit.
    pub per_shop_per_second: u32,
}

/// Sends due messages.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    routes: Arc<HashMap<i32, Providers>>,
    contacts: Arc<dyn ContactBook>,
    batch: usize,
    lease_micros: i64,
    rates: Arc<dyn Cache>,
}

/// A random share in [0, 1) for retry jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

impl Dispatcher {
    /// A dispatcher over `store` sending `batch` messages at a time, each
    /// claimed for `lease`.
    pub fn new(
        store: Store,
        routes: HashMap<i32, Providers>,
        contacts: Arc<dyn ContactBook>,
        batch: usize,
        lease: Duration,
        rates: Arc<dyn Cache>,
    ) -> Self {
        Self {
            store,
            routes: Arc::new(routes),
            contacts,
            batch,
            lease_micros: lease.as_micros() as i64,
            rates,
        }
    }

    /// How many of `n` messages a shop may hand the channel's provider in
    /// this second; the rest wait for the next.
    async fn allowance(&self, shop: &str, channel: i32, limit: u32, n: usize) -> (usize, i64) {
        let now = now_micros();
        let second = now.div_euclid(1_000_000);
        let next = (second + 1) * 1_000_000;
        if limit == 0 {
            return (n, next);
        }
        let key = shop_key(
            shop,
            &["notify-rate", &channel.to_string(), &second.to_string()],
        );
        match self
            .rates
            .incr(&key, n as i64, Duration::from_secs(2))
            .await
        {
            Ok(count) => {
                let before = (count - n as i64).max(0);
                (
                    (i64::from(limit) - before).clamp(0, n as i64) as usize,
                    next,
                )
            }
            // The cache falls back to counting in the process; if even
            // that fails, send rather than stall.
            Err(_) => (n, next),
        }
    }

    /// One pass: claims up to a batch of due messages and sends them; how
    /// many were claimed.
    pub async fn pass(&self) -> Result<usize, NotificationError> {
        let started = std::time::Instant::now();
        let claimed = self
            .store
            .claim_due(now_micros(), self.batch, self.lease_micros)
            .await?;
        let n = claimed.len();
        if n == 0 {
            return Ok(0);
        }
        let claimed_in = started.elapsed();
        let mut groups: BTreeMap<(String, i32), Vec<MessageRow>> = BTreeMap::new();
        for row in claimed {
            groups
                .entry((row.shop_id.clone(), row.channel))
                .or_default()
                .push(row);
        }
        let mut sends = JoinSet::new();
        let mut done: Vec<(MessageRow, Outcome)> = Vec::with_capacity(n);
        for ((shop, channel), rows) in groups {
            let ids: Vec<String> = rows.iter().map(|r| r.customer_id.clone()).collect();
            let addresses = match self.contacts.addresses(&shop, channel, &ids).await {
                Ok(a) => a,
                Err(e) => {
                    for row in rows {
                        done.push((
                            row,
                            Outcome::Failed {
                                detail: format!("address lookup failed: {e}"),
                                permanent: false,
                            },
                        ));
                    }
                    continue;
                }
            };
            let Some(route) = self.routes.get(&channel).cloned() else {
                for row in rows {
                    done.push((
                        row,
                        Outcome::Failed {
                            detail: "no provider is configured for this channel".into(),
                            permanent: true,
                        },
                    ));
                }
                continue;
            };
            let (reachable, unreachable): (Vec<_>, Vec<_>) = rows
                .into_iter()
                .partition(|r| addresses.contains_key(&r.customer_id));
            for row in unreachable {
                done.push((row, Outcome::NoAddress));
            }
            let (allowed, next_second) = self
                .allowance(&shop, channel, route.per_shop_per_second, reachable.len())
                .await;
            for (i, row) in reachable.into_iter().enumerate() {
                if i >= allowed {
                    done.push((
                        row,
                        Outcome::Throttled {
                            until: next_second,
                            limit: route.per_shop_per_second,
                        },
                    ));
                    continue;
                }
                let Some(to) = addresses.get(&row.customer_id).cloned() else {
                    done.push((row, Outcome::NoAddress));
                    continue;
                };
                let route = route.clone();
                sends.spawn(async move {
                    let outcome = send_one(&route, &row, to).await;
                    (row, outcome)
                });
            }
        }
        while let Some(joined) = sends.join_next().await {
            match joined {
                Ok(pair) => done.push(pair),
                Err(e) => {
                    tracing::error!(error = %e, "a send task failed; its message is sent again after the lease")
                }
            }
        }
        let sent_in = started.elapsed();
        self.store.record_outcomes(done, jitter).await?;
        tracing::debug!(
            messages = n,
            claim_ms = claimed_in.as_millis() as u64,
            send_ms = (sent_in - claimed_in).as_millis() as u64,
            record_ms = (started.elapsed() - sent_in).as_millis() as u64,
            "dispatch pass"
        );
        Ok(n)
    }

    /// Passes until `stop`, resting `idle` when nothing is due.
    pub async fn run(self, idle: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let rest = match self.pass().await {
                Ok(n) if n >= self.batch => Duration::ZERO,
                Ok(_) => idle,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch pass failed");
                    idle * 4
                }
            };
            if rest.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(rest) => {}
            }
        }
    }
}

async fn send_one(route: &Providers, row: &MessageRow, to: String) -> Outcome {
    let message = Outgoing {
        id: row.id.clone(),
        shop_id: row.shop_id.clone(),
        customer_id: row.customer_id.clone(),
        channel: channel_name(row.channel),
        to,
        text: row.body.clone(),
        subject: row.subject.clone(),
        provider_template_id: row.provider_template_id.clone(),
        variables: if row.variables.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_str(&row.variables).unwrap_or_default()
        },
        attempt: row.attempts,
    };
    let first = route.first.send(&message).await;
    let failure = match first {
        Ok(id) => {
            return Outcome::Sent {
                provider: route.first.name().to_owned(),
                provider_message_id: id,
                fallback: false,
            };
        }
        Err(e) => e,
    };
    if let Some(fallback) = &route.fallback {
        match fallback.send(&message).await {
            Ok(id) => {
                return Outcome::Sent {
                    provider: fallback.name().to_owned(),
                    provider_message_id: id,
                    fallback: true,
                };
            }
            Err(second) => {
                // Final only when both refused for good.
                let permanent = matches!(
                    (&failure, &second),
                    (SendError::Permanent(_), SendError::Permanent(_))
                );
                return Outcome::Failed {
                    detail: format!(
                        "{}: {}; fallback {}: {}",
                        route.first.name(),
                        describe(&failure),
                        fallback.name(),
                        describe(&second)
                    ),
                    permanent,
                };
            }
        }
    }
    Outcome::Failed {
        detail: format!("{}: {}", route.first.name(), describe(&failure)),
        permanent: matches!(failure, SendError::Permanent(_)),
    }
}

fn describe(e: &SendError) -> &str {
    match e {
        SendError::Transient(s) | SendError::Permanent(s) => s,
    }
}
