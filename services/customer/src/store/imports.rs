//! Orders new to a shop, written in batches: history imports, and the
//! orders storefronts record as they happen (gathered by the order intake).
//! Buyers are created or updated and events written in bulk.

use std::collections::{BTreeMap, HashMap, HashSet};

use huitou_storage::{WriteTx, bulk, now_micros, outbox};
use sea_orm::{ConnectionTrait, FromQueryResult, Statement, Value};

use super::customers::{self, CustomerRecord};
use super::orders::{COLUMN_TYPES as ORDER_COLUMN_TYPES, order_values};
use super::{Store, new_id};
use crate::domain::customer::ContactField;
use crate::domain::order::{Order, StatsDelta};
use crate::error::CustomerError;
use crate::events;

/// One valid row of an import.
#[derive(Debug, Clone)]
pub struct ImportRow {
    /// Its number in the export.
    pub row_number: i64,
    /// The order in its final state (id and customer filled in here).
    pub order: Order,
    /// Receiver contact, normalised.
    pub receiver: BTreeMap<ContactField, String>,
    /// W3C trace context (traceparent, tracestate) of the call that sent
    /// the row, when it is not the current span's: orders recorded by the
    /// intake's writer carry their caller's, so their events join the
    /// caller's trace.
    pub trace: Option<(String, String)>,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// New orders written.
    pub imported: i64,
    /// Rows whose order number was already recorded.
    pub skipped: i64,
}

/// An import's progress.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct ImportProgress {
    /// Import id.
    pub id: String,
    /// New orders written.
    pub rows_imported: i64,
    /// Rows skipped as already recorded.
    pub rows_skipped: i64,
    /// Rows refused.
    pub rows_rejected: i64,
    /// Highest row number committed.
    pub last_row_number: i64,
    /// Started, µs.
    pub created_at: i64,
    /// Last commit, µs.
    pub updated_at: i64,
}

/// Where new orders come from: what their events say.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A history import: one `order.imported` event per order.
    Import(&'a str),
    /// Storefronts recording orders as they happen: `order.created`, and
    /// `order.paid` for paid ones.
    Live,
}

/// What [`Store::write_new_orders`] did.
#[derive(Debug, Default)]
pub struct Written {
    /// The orders written, in the order given.
    pub orders: Vec<Order>,
    /// Order numbers left alone because they were already recorded (or
    /// repeated in the batch).
    pub skipped: Vec<String>,
}

impl Store {
    /// Writes a batch of orders new to the shop in one go: buyers created
    /// or locked (in nick order, so concurrent batches cannot deadlock),
    /// statistics applied, orders, buyers and events written in bulk, and
    /// the buyers' cache entries refreshed after commit.
    pub async fn write_new_orders(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        rows: Vec<ImportRow>,
        origin: Origin<'_>,
    ) -> Result<Written, CustomerError> {
        let mut written = Written::default();

        // Order numbers already recorded, and repeats inside the batch.
        let mut existing: HashSet<String> = HashSet::new();
        let numbers: Vec<String> = rows.iter().map(|r| r.order.order_no.clone()).collect();
        for row in bulk::rows_with_keys(
            tx, "order_no", "orders", "order_no", shop_id, &numbers, false,
        )
        .await?
        {
            existing.insert(row.try_get::<String>("", "order_no")?);
        }
        let mut fresh: Vec<ImportRow> = Vec::with_capacity(rows.len());
        for row in rows {
            if existing.insert(row.order.order_no.clone()) {
                fresh.push(row);
            } else {
                written.skipped.push(row.order.order_no);
            }
        }
        if fresh.is_empty() {
            return Ok(written);
        }
        // The buyers, locked, and the new ones.
        let mut nicks: Vec<String> = fresh.iter().map(|r| r.order.buyer_nick.clone()).collect();
        nicks.sort();
        nicks.dedup();
        let mut buyers: HashMap<String, (CustomerRecord, bool)> = HashMap::new();
        let lock = self.db.is_postgres();
        for row in bulk::rows_with_keys(
            tx,
            customers::COLUMNS,
            "customers",
            "buyer_nick",
            shop_id,
            &nicks,
            lock,
        )
        .await?
        {
            let record = CustomerRecord::from_query(&row)?;
            buyers.insert(record.customer.buyer_nick.clone(), (record, false));
        }
        for nick in &nicks {
            buyers
                .entry(nick.clone())
                .or_insert_with(|| (CustomerRecord::new(shop_id, nick), true));
        }
        // Apply every row to its buyer.
        let mut pending_events = Vec::with_capacity(fresh.len() * 2 + buyers.len());
        for nick in &nicks {
            if let Some((record, true)) = buyers.get(nick) {
                pending_events.push(events::customer_created(shop_id, &record.customer));
            }
        }
        // Where each new buyer's `customer.created` sits, to give it the
        // trace of the buyer's first order.
        let mut created_at: HashMap<String, usize> = pending_events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match &e.payload {
                Some(huitou_proto::events::v1::event_envelope::Payload::CustomerCreated(c)) => {
                    Some((c.buyer_nick.clone(), i))
                }
                _ => None,
            })
            .collect();
        for mut row in fresh {
            let first_event = pending_events.len();
            let trace = row.trace.take();
            let Some((buyer, created)) = buyers.get_mut(&row.order.buyer_nick) else {
                continue;
            };
            row.order.id = new_id();
            row.order.customer_id = buyer.customer.id.clone();
            if let Origin::Import(import_id) = origin {
                row.order.import_id = Some(import_id.to_owned());
            }
            let mut sequence = 0;
            if row.order.paid_at.is_some() {
                let mut delta = row.order.paid_delta();
                delta.merge(&StatsDelta {
                    spent_fen: -row.order.refunded_fen,
                    refunded_fen: row.order.refunded_fen,
                    ..StatsDelta::default()
                });
                buyer.apply_stats(&delta);
                sequence = buyer.customer.stats.order_count;
            }
            let filled = buyer.fill_missing(&self.vault, &row.receiver)?;
            match origin {
                Origin::Import(import_id) => {
                    pending_events.push(events::order_imported(
                        shop_id, &row.order, import_id, sequence,
                    ));
                }
                Origin::Live => {
                    let mut placed = row.order.clone();
                    placed.status = crate::domain::order::OrderStatus::Created;
                    placed.paid_at = None;
                    pending_events.push(events::order_created(shop_id, &placed));
                    if row.order.paid_at.is_some() {
                        let change = crate::domain::order::Change::Paid(row.order.paid_delta());
                        pending_events.push(events::order_changed(
                            shop_id, &row.order, &change, sequence,
                        ));
                    }
                    if !filled.is_empty() && !*created {
                        pending_events.push(events::customer_updated(
                            shop_id,
                            &buyer.customer,
                            filled,
                        ));
                    }
                }
            }
            if let Some((parent, state)) = trace {
                let created = created_at.remove(&row.order.buyer_nick);
                let indexes = (first_event..pending_events.len()).chain(created);
                for i in indexes {
                    if let Some(event) = pending_events.get_mut(i) {
                        event.traceparent = parent.clone();
                        event.tracestate = state.clone();
                    }
                }
            }
            written.orders.push(row.order);
        }
        // Buyers: new ones inserted, known ones upserted; then the orders.
        let now = now_micros();
        let updates: Vec<String> = customers::COLUMN_TYPES
            .iter()
            .skip(2)
            .map(|(c, _)| format!("{c} = excluded.{c}"))
            .collect();
        let (mut new_rows, mut known_rows): (Vec<Vec<Value>>, Vec<Vec<Value>>) =
            (Vec::new(), Vec::new());
        for (record, created) in buyers.values_mut() {
            // Strictly increasing: the update time versions cache entries.
            record.customer.updated_at = now.max(record.customer.updated_at + 1);
            let v = record.values();
            if *created {
                new_rows.push(v)
            } else {
                known_rows.push(v)
            }
        }
        bulk::insert(tx, "customers", &customers::COLUMN_TYPES, new_rows, "").await?;
        bulk::insert(
            tx,
            "customers",
            &customers::COLUMN_TYPES,
            known_rows,
            &format!(
                "ON CONFLICT (shop_id, id) DO UPDATE SET {}",
                updates.join(", ")
            ),
        )
        .await?;
        let order_rows: Vec<Vec<Value>> = written
            .orders
            .iter()
            .map(|o| order_values(shop_id, o, now))
            .collect();
        bulk::insert(tx, "orders", &ORDER_COLUMN_TYPES, order_rows, "").await?;
        outbox::append_many(tx, pending_events).await?;
        let refreshed: Vec<_> = buyers
            .into_values()
            .map(|(record, _)| record.customer)
            .collect();
        let (cache, shop) = (self.cache.clone(), shop_id.to_owned());
        tx.after_commit(Box::pin(async move {
            for customer in &refreshed {
                cache.remember(&shop, customer).await;
            }
        }));
        Ok(written)
    }

    /// Writes one batch of valid import rows and the import's progress;
    /// `rejected` and `last_row_number` account for the whole message,
    /// refused rows included.
    pub async fn import_batch(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        import_id: &str,
        rows: Vec<ImportRow>,
        rejected: i64,
        last_row_number: i64,
    ) -> Result<BatchOutcome, CustomerError> {
        let written = self
            .write_new_orders(tx, shop_id, rows, Origin::Import(import_id))
            .await?;
        let outcome = BatchOutcome {
            imported: written.orders.len() as i64,
            skipped: written.skipped.len() as i64,
        };
        let now = now_micros();
        tx.execute(
            "INSERT INTO order_imports (shop_id, id, rows_imported, rows_skipped, rows_rejected, last_row_number, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (shop_id, id) DO UPDATE SET
               rows_imported = order_imports.rows_imported + excluded.rows_imported,
               rows_skipped = order_imports.rows_skipped + excluded.rows_skipped,
               rows_rejected = order_imports.rows_rejected + excluded.rows_rejected,
               last_row_number = CASE WHEN excluded.last_row_number > order_imports.last_row_number
                                      THEN excluded.last_row_number ELSE order_imports.last_row_number END,
               updated_at = excluded.updated_at",
            vec![
                shop_id.into(),
                import_id.into(),
                outcome.imported.into(),
                outcome.skipped.into(),
                rejected.into(),
                last_row_number.into(),
                now.into(),
            ],
        )
        .await?;
        Ok(outcome)
    }

    /// An import's progress.
    pub async fn import_progress(
        &self,
        shop_id: &str,
        import_id: &str,
    ) -> Result<ImportProgress, CustomerError> {
        let stmt = Statement::from_sql_and_values(
            self.db.backend(),
            self.db.sql(
                "SELECT id, rows_imported, rows_skipped, rows_rejected, last_row_number, created_at, updated_at
                 FROM order_imports WHERE shop_id = $1 AND id = $2",
            ),
            vec![shop_id.into(), import_id.into()],
        );
        let row = self
            .db
            .conn()
            .query_one_raw(stmt)
            .await?
            .ok_or(CustomerError::ImportNotFound)?;
        Ok(ImportProgress::from_query_result(&row, "")?)
    }
}
