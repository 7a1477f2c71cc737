//! Order rows and the moves that change them together with the buyer's
//! statistics and the outbox, in one transaction.

use std::collections::BTreeMap;

use huitou_storage::bulk::Col;
use huitou_storage::{WriteTx, now_micros, outbox};
use sea_orm::{ConnectionTrait, FromQueryResult, Statement, Value};

use super::customers::CustomerRecord;
use super::{Store, from_json, new_id, to_json};
use crate::domain::customer::ContactField;
use crate::domain::order::{Change, Order, OrderItem, OrderStatus, Refund, Review, Shipment, Step};
use crate::error::CustomerError;
use crate::events;

pub(crate) const COLUMNS: &str = "shop_id, id, order_no, customer_id, buyer_nick, status, items, goods_fen, \
    discount_fen, shipping_fen, payable_fen, refunded_fen, coupon_codes, shipment, review, refunds, created_at, \
    paid_at, shipped_at, received_at, closed_at, import_id, recorded_at, updated_at";
pub(crate) const COLUMN_COUNT: usize = 24;

/// [`COLUMNS`] with their stored types, for bulk writes.
pub(crate) const COLUMN_TYPES: [(&str, Col); COLUMN_COUNT] = [
    ("shop_id", Col::Text),
    ("id", Col::Text),
    ("order_no", Col::Text),
    ("customer_id", Col::Text),
    ("buyer_nick", Col::Text),
    ("status", Col::Int),
    ("items", Col::Text),
    ("goods_fen", Col::BigInt),
    ("discount_fen", Col::BigInt),
    ("shipping_fen", Col::BigInt),
    ("payable_fen", Col::BigInt),
    ("refunded_fen", Col::BigInt),
    ("coupon_codes", Col::Text),
    ("shipment", Col::Text),
    ("review", Col::Text),
    ("refunds", Col::Text),
    ("created_at", Col::BigInt),
    ("paid_at", Col::BigInt),
    ("shipped_at", Col::BigInt),
    ("received_at", Col::BigInt),
    ("closed_at", Col::BigInt),
    ("import_id", Col::Text),
    ("recorded_at", Col::BigInt),
    ("updated_at", Col::BigInt),
];

#[derive(Debug, FromQueryResult)]
struct OrderRow {
    id: String,
    order_no: String,
    customer_id: String,
    buyer_nick: String,
    status: i32,
    items: String,
    discount_fen: i64,
    shipping_fen: i64,
    refunded_fen: i64,
    coupon_codes: String,
    shipment: Option<String>,
    review: Option<String>,
    refunds: String,
    created_at: i64,
    paid_at: Option<i64>,
    shipped_at: Option<i64>,
    received_at: Option<i64>,
    closed_at: Option<i64>,
    import_id: Option<String>,
}

impl OrderRow {
    fn into_order(self) -> Result<Order, CustomerError> {
        Ok(Order {
            id: self.id,
            order_no: self.order_no,
            customer_id: self.customer_id,
            buyer_nick: self.buyer_nick,
            status: OrderStatus::from_i32(self.status).ok_or_else(|| {
                CustomerError::Storage(huitou_storage::StorageError::Other(
                    "bad order status".into(),
                ))
            })?,
            items: from_json("items", &self.items)?,
            discount_fen: self.discount_fen,
            shipping_fen: self.shipping_fen,
            refunded_fen: self.refunded_fen,
            coupon_codes: from_json("coupon_codes", &self.coupon_codes)?,
            shipment: self
                .shipment
                .map(|s| from_json::<Shipment>("shipment", &s))
                .transpose()?,
            review: self
                .review
                .map(|r| from_json::<Review>("review", &r))
                .transpose()?,
            refunds: from_json::<Vec<Refund>>("refunds", &self.refunds)?,
            created_at: self.created_at,
            paid_at: self.paid_at,
            shipped_at: self.shipped_at,
            received_at: self.received_at,
            closed_at: self.closed_at,
            import_id: self.import_id,
        })
    }
}

/// The stored values of an order, in [`COLUMNS`] order.
pub(crate) fn order_values(shop_id: &str, order: &Order, now: i64) -> Vec<Value> {
    vec![
        shop_id.into(),
        order.id.clone().into(),
        order.order_no.clone().into(),
        order.customer_id.clone().into(),
        order.buyer_nick.clone().into(),
        order.status.as_i32().into(),
        to_json(&order.items).into(),
        order.goods_fen().into(),
        order.discount_fen.into(),
        order.shipping_fen.into(),
        order.payable_fen().into(),
        order.refunded_fen.into(),
        to_json(&order.coupon_codes).into(),
        order.shipment.as_ref().map(to_json).into(),
        order.review.as_ref().map(to_json).into(),
        to_json(&order.refunds).into(),
        order.created_at.into(),
        order.paid_at.into(),
        order.shipped_at.into(),
        order.received_at.into(),
        order.closed_at.into(),
        order.import_id.clone().into(),
        now.into(),
        now.into(),
    ]
}

/// An order reported by a storefront.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Platform order number.
    pub order_no: String,
    /// The buyer.
    pub buyer_nick: String,
    /// Paid already (else created).
    pub paid: bool,
    /// Lines.
    pub items: Vec<OrderItem>,
    /// Discount, fen.
    pub discount_fen: i64,
    /// Shipping, fen.
    pub shipping_fen: i64,
    /// Coupon codes.
    pub coupon_codes: Vec<String>,
    /// Placed at, µs.
    pub created_at: i64,
    /// Paid at, µs (when paid).
    pub paid_at: Option<i64>,
    /// Receiver contact, normalised.
    pub receiver: BTreeMap<ContactField, String>,
}

impl NewOrder {
    /// The order as it will be stored (ids filled in when written).
    pub fn to_order(&self) -> Order {
        Order {
            id: String::new(),
            order_no: self.order_no.clone(),
            customer_id: String::new(),
            buyer_nick: self.buyer_nick.clone(),
            status: if self.paid {
                OrderStatus::Paid
            } else {
                OrderStatus::Created
            },
            items: self.items.clone(),
            discount_fen: self.discount_fen,
            shipping_fen: self.shipping_fen,
            refunded_fen: 0,
            coupon_codes: self.coupon_codes.clone(),
            shipment: None,
            review: None,
            refunds: Vec::new(),
            created_at: self.created_at,
            paid_at: self
                .paid
                .then(|| self.paid_at.unwrap_or(self.created_at).max(self.created_at)),
            shipped_at: None,
            received_at: None,
            closed_at: None,
            import_id: None,
        }
    }
}

impl Store {
    async fn order_where<C: ConnectionTrait>(
        &self,
        conn: &C,
        condition: &str,
        values: Vec<Value>,
        lock: bool,
    ) -> Result<Option<Order>, CustomerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM orders WHERE {condition}{}",
            if lock { self.lock_suffix() } else { "" }
        );
        let stmt = Statement::from_sql_and_values(self.db.backend(), self.db.sql(&sql), values);
        match conn.query_one_raw(stmt).await? {
            Some(row) => Ok(Some(OrderRow::from_query_result(&row, "")?.into_order()?)),
            None => Ok(None),
        }
    }

    /// Reads an order by number.
    pub async fn order_by_no(&self, shop_id: &str, order_no: &str) -> Result<Order, CustomerError> {
        self.order_where(
            self.db.conn(),
            "shop_id = $1 AND order_no = $2",
            vec![shop_id.into(), order_no.into()],
            false,
        )
        .await?
        .ok_or(CustomerError::OrderNotFound)
    }

    /// Reads an order by id.
    pub async fn order_by_id(&self, shop_id: &str, id: &str) -> Result<Order, CustomerError> {
        self.order_where(
            self.db.conn(),
            "shop_id = $1 AND id = $2",
            vec![shop_id.into(), id.into()],
            false,
        )
        .await?
        .ok_or(CustomerError::OrderNotFound)
    }

    /// A customer's orders, newest first, before `before` (an order id).
    pub async fn orders_of(
        &self,
        shop_id: &str,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Order>, CustomerError> {
        let mut values: Vec<Value> = vec![shop_id.into(), customer_id.into()];
        let mut condition = String::from("shop_id = $1 AND customer_id = $2");
        if let Some(b) = before {
            values.push(b.into());
            condition.push_str(" AND id < $3");
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM orders WHERE {condition} ORDER BY id DESC LIMIT {limit}"
        );
        let stmt = Statement::from_sql_and_values(self.db.backend(), self.db.sql(&sql), values);
        let rows = self.db.conn().query_all_raw(stmt).await?;
        rows.iter()
            .map(|r| OrderRow::from_query_result(r, "")?.into_order())
            .collect()
    }

    async fn insert_order(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        order: &Order,
    ) -> Result<(), CustomerError> {
        let placeholders: Vec<String> = (1..=COLUMN_COUNT).map(|i| format!("${i}")).collect();
        tx.execute(
            &format!(
                "INSERT INTO orders ({COLUMNS}) VALUES ({})",
                placeholders.join(", ")
            ),
            order_values(shop_id, order, now_micros()),
        )
        .await?;
        Ok(())
    }

    async fn update_order(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        order: &Order,
    ) -> Result<(), CustomerError> {
        tx.execute(
            "UPDATE orders SET status = $1, refunded_fen = $2, shipment = $3, review = $4, refunds = $5,
             paid_at = $6, shipped_at = $7, received_at = $8, closed_at = $9, updated_at = $10
             WHERE shop_id = $11 AND id = $12",
            vec![
                order.status.as_i32().into(),
                order.refunded_fen.into(),
                order.shipment.as_ref().map(to_json).into(),
                order.review.as_ref().map(to_json).into(),
                to_json(&order.refunds).into(),
                order.paid_at.into(),
                order.shipped_at.into(),
                order.received_at.into(),
                order.closed_at.into(),
                now_micros().into(),
                shop_id.into(),
                order.id.clone().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Records a new order (or returns the one already recorded under its
    /// number), creating the buyer when new; `true` when recorded now.
    pub async fn record_order(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        new: &NewOrder,
    ) -> Result<(Order, bool), CustomerError> {
        if let Some(existing) = self
            .order_where(
                &**tx,
                "shop_id = $1 AND order_no = $2",
                vec![shop_id.into(), new.order_no.clone().into()],
                true,
            )
            .await?
        {
            let same = existing.items == new.items
                && existing.discount_fen == new.discount_fen
                && existing.shipping_fen == new.shipping_fen
                && existing.buyer_nick == new.buyer_nick;
            if !same {
                return Err(CustomerError::OrderConflict(new.order_no.clone()));
            }
            if new.paid && existing.status == OrderStatus::Created {
                let order = self
                    .step_locked(
                        tx,
                        shop_id,
                        existing,
                        Step::Pay {
                            at: new.paid_at.unwrap_or_else(now_micros),
                        },
                    )
                    .await?;
                return Ok((order, false));
            }
            return Ok((existing, false));
        }

        let (mut customer, created_customer) = self
            .lock_or_create_by_nick(tx, shop_id, &new.buyer_nick)
            .await?;
        let mut order = Order {
            id: new_id(),
            order_no: new.order_no.clone(),
            customer_id: customer.customer.id.clone(),
            buyer_nick: new.buyer_nick.clone(),
            status: OrderStatus::Created,
            items: new.items.clone(),
            discount_fen: new.discount_fen,
            shipping_fen: new.shipping_fen,
            refunded_fen: 0,
            coupon_codes: new.coupon_codes.clone(),
            shipment: None,
            review: None,
            refunds: Vec::new(),
            created_at: new.created_at,
            paid_at: None,
            shipped_at: None,
            received_at: None,
            closed_at: None,
            import_id: None,
        };
        let mut pending_events = Vec::new();
        if created_customer {
            pending_events.push(events::customer_created(shop_id, &customer.customer));
        }
        pending_events.push(events::order_created(shop_id, &order));
        if new.paid {
            let change = order.apply(Step::Pay {
                at: new.paid_at.unwrap_or(new.created_at),
            })?;
            if let Some(change @ Change::Paid(delta)) = &change {
                customer.apply_stats(delta);
                pending_events.push(events::order_changed(
                    shop_id,
                    &order,
                    change,
                    customer.customer.stats.order_count,
                ));
            }
        }
        let filled = customer.fill_missing(&self.vault, &new.receiver)?;
        if !filled.is_empty() && !created_customer {
            pending_events.push(events::customer_updated(
                shop_id,
                &customer.customer,
                filled,
            ));
        }
        self.save_customer(tx, &mut customer, created_customer)
            .await?;
        self.insert_order(tx, shop_id, &order).await?;
        outbox::append_many(tx, pending_events).await?;
        Ok((order, true))
    }

    /// Moves an order by number.
    pub async fn step_order(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        order_no: &str,
        step: Step,
    ) -> Result<Order, CustomerError> {
        let order = self
            .order_where(
                &**tx,
                "shop_id = $1 AND order_no = $2",
                vec![shop_id.into(), order_no.into()],
                true,
            )
            .await?
            .ok_or(CustomerError::OrderNotFound)?;
        self.step_locked(tx, shop_id, order, step).await
    }

    async fn step_locked(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        mut order: Order,
        step: Step,
    ) -> Result<Order, CustomerError> {
        let Some(change) = order.apply(step)? else {
            return Ok(order);
        };
        self.update_order(tx, shop_id, &order).await?;
        let sequence = match &change {
            Change::Paid(delta) | Change::Refunded { delta, .. } => {
                let mut customer: CustomerRecord =
                    self.lock_customer(tx, shop_id, &order.customer_id).await?;
                customer.apply_stats(delta);
                self.save_customer(tx, &mut customer, false).await?;
                customer.customer.stats.order_count
            }
            _ => 0,
        };
        let sequence = if matches!(change, Change::Paid(_)) {
            sequence
        } else {
            0
        };
        outbox::append(
            tx,
            events::order_changed(shop_id, &order, &change, sequence),
        )
        .await?;
        Ok(order)
    }
}
