//! The order intake: orders that storefronts record as they happen are
//! gathered and written together.
//!
//! Every `RecordOrder` without a request id joins a queue. The intake takes
//! whatever is queued (up to [`MAX_BATCH`]) and writes the new orders in a
//! single transaction — one commit, one flush to disk, a handful of bulk
//! statements for all of them — then answers each caller. Nobody waits for
//! a timer: under light load a batch is one order; under heavy load the
//! batch grows by itself while the previous one is being written. The next
//! batch starts while the previous one commits (`write::pipeline`), and
//! two batches in flight never hold the same buyer. An order
//! number already recorded, a repeat inside the batch, or a batch that
//! fails as a whole (a concurrent writer on another replica got in first)
//! goes through the one-order path, which handles repeats, payments of
//! known orders, conflicts and retries. Callers are answered only after
//! their order is committed.

use std::collections::HashMap;

use huitou_storage::write::Committing;
use tokio::sync::{mpsc, oneshot};

use crate::domain::order::Order;
use crate::error::CustomerError;
use crate::store::Store;
use crate::store::imports::{ImportRow, Origin};
use crate::store::orders::NewOrder;

/// Most orders written in one transaction.
pub const MAX_BATCH: usize = 256;

type Answer = Result<(Order, bool), CustomerError>;

struct Job {
    shop_id: String,
    order: NewOrder,
    /// The caller's trace context: the writer runs in its own task.
    trace: (String, String),
    reply: oneshot::Sender<Answer>,
}

/// The queue of orders to record.
#[derive(Clone)]
pub struct OrderIntake {
    queue: mpsc::Sender<Job>,
}

impl OrderIntake {
    /// Starts the intake over `store`; it stops when the last handle is
    /// dropped.
    pub fn start(store: Store) -> Self {
        let (queue, jobs) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(huitou_storage::write::pipeline(
            jobs,
            MAX_BATCH,
            // One buyer's orders never sit in two batches in flight at once:
            // batches never wait on each other's locks, and a buyer created
            // by one is seen by the next.
            |job: &Job| (job.shop_id.clone(), job.order.buyer_nick.clone()),
            move |batch, committing| {
                let store = store.clone();
                Box::pin(async move { write_batch(&store, batch, committing).await })
            },
        ));
        Self { queue }
    }

    /// Records `order` for `shop_id`: the order as stored, and whether this
    /// call recorded it.
    pub async fn record(&self, shop_id: &str, order: NewOrder) -> Answer {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            shop_id: shop_id.to_owned(),
            order,
            trace: huitou_runtime::telemetry::current_trace_headers(),
            reply,
        };
        let gone = || {
            CustomerError::Storage(huitou_storage::StorageError::Unavailable(
                "the order intake stopped".into(),
            ))
        };
        self.queue.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn write_batch(store: &Store, batch: Vec<Job>, mut committing: Committing) {
    let mut by_shop: HashMap<&str, Vec<ImportRow>> = HashMap::new();
    for job in &batch {
        by_shop
            .entry(job.shop_id.as_str())
            .or_default()
            .push(ImportRow {
                row_number: 0,
                order: job.order.to_order(),
                receiver: job.order.receiver.clone(),
                trace: Some(job.trace.clone()).filter(|(parent, _)| !parent.is_empty()),
            });
    }
    let written: Result<HashMap<(String, String), Order>, CustomerError> = async {
        let tx = store.db.begin().await?;
        let written = async {
            let mut written = HashMap::new();
            let shops = by_shop.len();
            for (i, (shop, rows)) in by_shop.into_iter().enumerate() {
                // Only the last shop's writes may reuse plans: a lookup after
                // the switch would be planned generically (decision 0011).
                let last = i + 1 == shops;
                for order in store
                    .write_new_orders(&tx, shop, rows, Origin::Live, last)
                    .await?
                    .orders
                {
                    written.insert((shop.to_owned(), order.order_no.clone()), order);
                }
            }
            Ok::<_, CustomerError>(written)
        }
        .await;
        if written.is_ok() {
            committing.now();
        }
        // A failed batch is rolled back before its orders go one by one:
        // they would otherwise wait on its buyers.
        let written = tx.finish(written).await?;
        store.outbox.notify();
        Ok(written)
    }
    .await;
    let mut written = match written {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, orders = batch.len(), "order batch failed; recording one by one");
            HashMap::new()
        }
    };
    // The rest go one by one, together; the batch (and its buyers) is
    // finished only when they are.
    let mut one_by_one = tokio::task::JoinSet::new();
    for job in batch {
        match written.remove(&(job.shop_id.clone(), job.order.order_no.clone())) {
            Some(order) => {
                let _ = job.reply.send(Ok((order, true)));
            }
            None => {
                let store = store.clone();
                one_by_one.spawn(async move {
                    let (shop, order) = (job.shop_id, job.order);
                    let answer = store
                        .write_answer(move |tx, store| {
                            let (shop, order) = (shop.clone(), order.clone());
                            Box::pin(async move { store.record_order(tx, &shop, &order).await })
                        })
                        .await;
                    let _ = job.reply.send(answer);
                });
            }
        }
    }
    while one_by_one.join_next().await.is_some() {}
}
