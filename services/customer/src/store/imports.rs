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

/// An import's batch still being written when the next one starts. The
/// two share no buyer and no order number, so neither waits on the other's
/// rows; the next one waits for it only before recording progress.
#[derive(Clone)]
pub struct EarlierBatch(tokio::sync::watch::Receiver<Option<bool>>);

impl EarlierBatch {
    /// A batch's outcome to send (`true` once committed, `false` when it
    /// failed for good), and the handle the next batch waits on.
    pub fn new() -> (tokio::sync::watch::Sender<Option<bool>>, Self) {
        let (outcome, waiting) = tokio::sync::watch::channel(None);
        (outcome, Self(waiting))
    }

    /// Waits for the batch; an error when it did not commit (or its task
    /// is gone), so the next one rolls back instead of committing after a
    /// gap.
    pub async fn committed(&self) -> Result<(), CustomerError> {
        let mut outcome = self.0.clone();
        match outcome.wait_for(Option::is_some).await.map(|o| *o) {
            Ok(Some(true)) => Ok(()),
            _ => Err(CustomerError::Storage(huitou_storage::StorageError::Other(
                "the import's previous batch was not written".into(),
            ))),
        }
    }
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
    /// the buyers' cache entries refreshed after commit. `last_lookup`
    /// says no lookup follows in this transaction (another shop's batch
    /// would), so the writes may reuse their plans (decision 0011).
    pub async fn write_new_orders(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        rows: Vec<ImportRow>,
        origin: Origin<'_>,
        last_lookup: bool,
    ) -> Result<Written, CustomerError> {
        let mut written = Written::default();

        // Repeats inside the batch are left alone; numbers already recorded
        // are found by the insert below.
        let mut seen: HashSet<String> = HashSet::new();
        let mut fresh: Vec<ImportRow> = Vec::with_capacity(rows.len());
        for row in rows {
            if seen.insert(row.order.order_no.clone()) {
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
        // With `last_lookup`, only writes follow in this transaction: they
        // may reuse their plans (decision 0011).
        let lookup = bulk::KeyedLookup {
            table: "customers",
            columns: customers::COLUMNS,
            key_column: "buyer_nick",
            shop_id,
            keys: &nicks,
        };
        for row in bulk::rows_to_write(tx, lookup, last_lookup).await? {
            let record = CustomerRecord::from_query(&row)?;
            buyers.insert(record.customer.buyer_nick.clone(), (record, false));
        }
        for nick in &nicks {
            buyers
                .entry(nick.clone())
                .or_insert_with(|| (CustomerRecord::new(shop_id, nick), true));
        }
        // The orders. No batch looks numbers up first. An import copies its
        // orders in (COPY, on PostgreSQL); when a number was recorded before
        // (resuming re-sends rows), the copy is undone and an insert skips
        // the recorded numbers and says which rows went in. Orders recorded live are
        // new but for a rare retry: they are written with the buyers and
        // events in one statement below, and if any number turns out taken
        // the batch fails as a whole and its orders go one by one.
        let now = now_micros();
        for row in &mut fresh {
            row.order.id = new_id();
            if let Some((buyer, _)) = buyers.get(&row.order.buyer_nick) {
                row.order.customer_id = buyer.customer.id.clone();
            }
            if let Origin::Import(import_id) = origin {
                row.order.import_id = Some(import_id.to_owned());
            }
        }
        let order_rows: Vec<Vec<Value>> = fresh
            .iter()
            .map(|r| order_values(shop_id, &r.order, now))
            .collect();
        let mut writes = bulk::Inserts::default();
        let expected_orders = fresh.len() as u64;
        let live = matches!(origin, Origin::Live);
        if live {
            writes.add(
                "orders",
                &ORDER_COLUMN_TYPES,
                order_rows,
                "ON CONFLICT (shop_id, order_no) DO NOTHING",
            );
        } else if bulk::copy_new(tx, "orders", &ORDER_COLUMN_TYPES, &order_rows)
            .await?
            .is_none()
        {
            // Some number was recorded before (a resumed import sends rows
            // again): the insert skips those and says which went in.
            let mut inserted: HashSet<String> = HashSet::with_capacity(fresh.len());
            for row in bulk::insert_returning(
                tx,
                "orders",
                &ORDER_COLUMN_TYPES,
                order_rows,
                "ON CONFLICT (shop_id, order_no) DO NOTHING",
                "order_no",
            )
            .await?
            {
                inserted.insert(row.try_get::<String>("", "order_no")?);
            }
            let (kept, recorded_before): (Vec<ImportRow>, Vec<ImportRow>) = fresh
                .into_iter()
                .partition(|r| inserted.contains(&r.order.order_no));
            written
                .skipped
                .extend(recorded_before.into_iter().map(|r| r.order.order_no));
            fresh = kept;
        }
        // Only buyers with an order written change.
        let touched: HashSet<&str> = fresh.iter().map(|r| r.order.buyer_nick.as_str()).collect();
        buyers.retain(|nick, _| touched.contains(nick.as_str()));
        nicks.retain(|nick| buyers.contains_key(nick));
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
        // Known buyers given a contact they lacked: their rows are written
        // whole, like new buyers'; the others' statistics alone.
        let mut contact_filled: HashSet<String> = HashSet::new();
        for mut row in fresh {
            let first_event = pending_events.len();
            let trace = row.trace.take();
            let Some((buyer, created)) = buyers.get_mut(&row.order.buyer_nick) else {
                continue;
            };
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
            if !filled.is_empty() {
                contact_filled.insert(row.order.buyer_nick.clone());
            }
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
        // Buyers in the same statement: rows written whole (new buyers, and
        // known ones given a contact) and known buyers' statistics alone,
        // a third of the columns and none of the sealed contacts, tags or
        // consents to encode again. Both are upserts on the id: a known
        // buyer's is taken (and locked), so its row is updated.
        let (mut whole_rows, mut stats_rows) = (Vec::new(), Vec::new());
        for (nick, (record, created)) in buyers.iter_mut() {
            // Strictly increasing: the update time versions cache entries.
            record.customer.updated_at = now.max(record.customer.updated_at + 1);
            if *created || contact_filled.contains(nick) {
                whole_rows.push(record.values());
            } else {
                stats_rows.push(record.stats_values());
            }
        }
        let set_excluded = |columns: &[(&str, bulk::Col)], skip: &[&str]| {
            let set: Vec<String> = columns
                .iter()
                .filter(|(c, _)| !skip.contains(c))
                .map(|(c, _)| format!("{c} = excluded.{c}"))
                .collect();
            format!("ON CONFLICT (shop_id, id) DO UPDATE SET {}", set.join(", "))
        };
        writes.add(
            "customers",
            &customers::COLUMN_TYPES,
            whole_rows,
            set_excluded(&customers::COLUMN_TYPES, &["shop_id", "id"]),
        );
        writes.add(
            "customers",
            &customers::STATS_COLUMN_TYPES,
            stats_rows,
            set_excluded(
                &customers::STATS_COLUMN_TYPES,
                &["shop_id", "id", "buyer_nick", "created_at"],
            ),
        );
        writes.add(
            "outbox_events",
            &outbox::ROW_COLUMNS,
            outbox::rows_of(pending_events),
            "",
        );
        let counts = writes.run(tx).await?;
        if live && counts.first() != Some(&expected_orders) {
            return Err(CustomerError::Storage(
                huitou_storage::StorageError::Conflict(
                    "an order number of the batch was recorded before".into(),
                ),
            ));
        }
        let refreshed: Vec<_> = buyers
            .into_values()
            .map(|(record, _)| record.customer)
            .collect();
        let (cache, shop) = (self.cache.clone(), shop_id.to_owned());
        tx.after_commit(Box::pin(async move {
            cache.remember_all(&shop, &refreshed).await;
        }));
        Ok(written)
    }

    /// Writes one batch of valid import rows and the import's progress;
    /// `rejected` and `last_row_number` account for the whole message,
    /// refused rows included. With `earlier`, the import's previous batch
    /// is still being written, and the buyers named with it share rows with
    /// the batches in flight: this one writes its other buyers' orders
    /// meanwhile, and those buyers' orders and the import's progress only
    /// once that batch committed. So progress never runs past a row that is
    /// not written, and this batch never waits on a row a batch in flight
    /// holds (which would deadlock should that one wait for this one).
    #[allow(clippy::too_many_arguments)]
    pub async fn import_batch(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        import_id: &str,
        rows: Vec<ImportRow>,
        rejected: i64,
        last_row_number: i64,
        earlier: Option<(&EarlierBatch, &HashSet<String>)>,
    ) -> Result<BatchOutcome, CustomerError> {
        let origin = Origin::Import(import_id);
        let (later, now): (Vec<ImportRow>, Vec<ImportRow>) = match earlier {
            Some((_, shared)) => rows
                .into_iter()
                .partition(|r| shared.contains(&r.order.buyer_nick)),
            None => (Vec::new(), rows),
        };
        let mut written = self
            .write_new_orders(tx, shop_id, now, origin, later.is_empty())
            .await?;
        if let Some((earlier, _)) = earlier {
            earlier.committed().await?;
        }
        if !later.is_empty() {
            let after = self
                .write_new_orders(tx, shop_id, later, origin, true)
                .await?;
            written.orders.extend(after.orders);
            written.skipped.extend(after.skipped);
        }
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
