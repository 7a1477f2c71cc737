//! The redemption intake: checkout redemptions of coupons as just read,
//! gathered and written together.
//!
//! A storefront's RedeemCoupon of a coupon that is still exactly as read
//! (its version) is one conditional update and one event. Alone, it is one
//! statement (`outbox::change_with_event`). When many arrive at once, one
//! writer takes whatever is queued and writes it in a single transaction:
//! one update of every coupon in the batch, each conditioned on its own
//! version, and one outbox row for all their events (decision 0017) — one
//! commit, one flush to disk (batches gathered as `write::next_batch`
//! does: no timer). A coupon whose version moved, or that appears
//! twice in a batch, is answered "not redeemed here" and its caller takes
//! the transactional path, which decides afresh (decision 0015).

use huitou_proto::events::v1::EventEnvelope;
use huitou_storage::{Database, StorageError, WriteTx, outbox};
use sea_orm::Value;
use sea_orm::sea_query::ArrayType;
use tokio::sync::{mpsc, oneshot};

/// Most redemptions written in one transaction.
pub const MAX_BATCH: usize = 128;

/// One redemption: the coupon's key and the version it was read at, what
/// the update writes, and its event.
pub struct Redemption {
    /// Shop.
    pub shop_id: String,
    /// Coupon code.
    pub code: String,
    /// The version read; the update applies only to it.
    pub version: i64,
    /// The order it is used on.
    pub order_no: String,
    /// Discount, fen.
    pub discount_fen: i64,
    /// The order's items before the discount, fen.
    pub order_total_fen: i64,
    /// When, µs.
    pub redeemed_at: i64,
    /// Its `coupon.redeemed` event.
    pub event: EventEnvelope,
}

struct Job {
    redemption: Redemption,
    reply: oneshot::Sender<Result<bool, StorageError>>,
}

/// The queue of redemptions to write.
#[derive(Clone)]
pub struct RedemptionIntake {
    queue: mpsc::Sender<Job>,
}

impl RedemptionIntake {
    /// Starts the writer over `db`; it stops when the last handle is dropped.
    pub fn start(db: Database) -> Self {
        let (queue, jobs) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(writer(db, jobs));
        Self { queue }
    }

    /// Writes `redemption`: true when the coupon was still as read and is
    /// now redeemed (committed), false when the caller must decide afresh.
    pub async fn redeem(&self, redemption: Redemption) -> Result<bool, StorageError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StorageError::Unavailable("the redemption intake stopped".into());
        self.queue
            .send(Job { redemption, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn writer(db: Database, mut jobs: mpsc::Receiver<Job>) {
    while let Some(batch) = huitou_storage::write::next_batch(&mut jobs, MAX_BATCH).await {
        write_batch(&db, batch).await;
    }
}

/// The update of one coupon as read; `$1…$8` as [`one_values`] orders them.
const REDEEM_SQL: &str =
    "UPDATE coupons SET state = $3, order_no = $4, hold_until = NULL, discount_fen = $5,
         order_total_fen = $6, redeemed_at = $7, redeemed_by = '', version = version + 1
     WHERE shop_id = $1 AND code = $2 AND version = $8";

/// The state a redemption writes.
fn redeemed_state() -> i32 {
    crate::domain::checkout::State::Redeemed.as_i32()
}

fn one_values(r: &Redemption) -> Vec<Value> {
    vec![
        r.shop_id.clone().into(),
        r.code.clone().into(),
        redeemed_state().into(),
        r.order_no.clone().into(),
        r.discount_fen.into(),
        r.order_total_fen.into(),
        r.redeemed_at.into(),
        r.version.into(),
    ]
}

/// Every coupon of the batch in one statement on PostgreSQL: each row of
/// the arrays updates its own coupon if still at its version.
const REDEEM_MANY_SQL: &str = "UPDATE coupons AS c SET state = $8, order_no = u.order_no, hold_until = NULL,
         discount_fen = u.discount_fen, order_total_fen = u.order_total_fen,
         redeemed_at = u.redeemed_at, redeemed_by = '', version = c.version + 1
     FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[])
          AS u(shop_id, code, version, order_no, discount_fen, order_total_fen, redeemed_at)
     WHERE c.shop_id = u.shop_id AND c.code = u.code AND c.version = u.version
     RETURNING c.shop_id, c.code";

async fn write_batch(db: &Database, batch: Vec<Job>) {
    // A coupon twice in one batch: the first goes in, the others decide
    // afresh on the transactional path (one row, one answer per update).
    let mut seen = std::collections::HashSet::new();
    let mut jobs = Vec::with_capacity(batch.len());
    for job in batch {
        let key = (job.redemption.shop_id.clone(), job.redemption.code.clone());
        if seen.insert(key) {
            jobs.push(job);
        } else {
            let _ = job.reply.send(Ok(false));
        }
    }
    if let [_] = jobs.as_slice() {
        let Some(job) = jobs.pop() else { return };
        let r = job.redemption;
        let answer =
            outbox::change_with_event(db, REDEEM_SQL, one_values(&r), r.event.clone()).await;
        let _ = job.reply.send(answer);
        return;
    }
    match write_together(db, &jobs).await {
        Ok(redeemed) => {
            for (job, done) in jobs.into_iter().zip(redeemed) {
                let _ = job.reply.send(Ok(done));
            }
        }
        Err(e) => {
            // The batch as a whole failed: each caller decides afresh on
            // the transactional path, which reports what is wrong.
            tracing::debug!(error = %e, redemptions = jobs.len(), "redemption batch failed");
            for job in jobs {
                let _ = job.reply.send(Ok(false));
            }
        }
    }
}

/// Writes `jobs` in one transaction; which of them were redeemed.
async fn write_together(db: &Database, jobs: &[Job]) -> Result<Vec<bool>, StorageError> {
    let tx = db.begin().await?;
    // A failure is rolled back before the callers decide afresh, one by
    // one: they would otherwise wait on these coupons' rows.
    let redeemed = redeem_in(&tx, db, jobs).await;
    tx.finish(redeemed).await
}

/// [`write_together`]'s statements inside its transaction.
async fn redeem_in(tx: &WriteTx, db: &Database, jobs: &[Job]) -> Result<Vec<bool>, StorageError> {
    let mut redeemed = vec![false; jobs.len()];
    if db.is_postgres() {
        let column = |f: &dyn Fn(&Redemption) -> Value, kind: ArrayType| {
            let items: Vec<Value> = jobs.iter().map(|j| f(&j.redemption)).collect();
            Value::Array(kind, Some(Box::new(items)))
        };
        let values = vec![
            column(&|r| r.shop_id.clone().into(), ArrayType::String),
            column(&|r| r.code.clone().into(), ArrayType::String),
            column(&|r| r.version.into(), ArrayType::BigInt),
            column(&|r| r.order_no.clone().into(), ArrayType::String),
            column(&|r| r.discount_fen.into(), ArrayType::BigInt),
            column(&|r| r.order_total_fen.into(), ArrayType::BigInt),
            column(&|r| r.redeemed_at.into(), ArrayType::BigInt),
            redeemed_state().into(),
        ];
        let rows = tx.query_all(REDEEM_MANY_SQL, values).await?;
        let mut changed = std::collections::HashSet::new();
        for row in rows {
            let shop: String = row.try_get("", "shop_id").map_err(StorageError::from)?;
            let code: String = row.try_get("", "code").map_err(StorageError::from)?;
            changed.insert((shop, code));
        }
        for (done, job) in redeemed.iter_mut().zip(jobs) {
            let r = &job.redemption;
            *done = changed.contains(&(r.shop_id.clone(), r.code.clone()));
        }
    } else {
        for (done, job) in redeemed.iter_mut().zip(jobs) {
            *done = tx.execute(REDEEM_SQL, one_values(&job.redemption)).await? == 1;
        }
    }
    let events: Vec<EventEnvelope> = jobs
        .iter()
        .zip(&redeemed)
        .filter(|(_, done)| **done)
        .map(|(job, _)| job.redemption.event.clone())
        .collect();
    if !events.is_empty() {
        outbox::append_many(tx, events).await?;
    }
    Ok(redeemed)
}
