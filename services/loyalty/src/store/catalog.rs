//! The old-customer zone prices, the rewards catalog, exchanges and gift
//! fulfilment tasks.

use huitou_proto::events::v1::RewardExchanged;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::loyalty::v1::{EntryKind, RewardKind};
use huitou_storage::{WriteTx, bulk, now_micros, outbox};
use sea_orm::{ConnectionTrait, FromQueryResult, Statement, Value};

use super::members::{EntryRow, MemberKey, MemberRow};
use super::{Store, event, new_id};
use crate::error::LoyaltyError;

/// An old-customer zone price as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct PriceRow {
    /// SKU.
    pub sku: String,
    /// Price, fen.
    pub price_fen: i64,
    /// 1 when only for returning customers.
    pub returning_only: i32,
    /// Label.
    pub label: String,
    /// Lowest tier code; empty for all.
    pub min_tier_code: String,
}

/// A reward as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct RewardRow {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// `RewardKind` wire number.
    pub kind: i32,
    /// Cost.
    pub points_cost: i64,
    /// Units left; `None` for unlimited.
    pub stock: Option<i64>,
    /// Coupon template, for coupons.
    pub coupon_template_id: String,
    /// Orders covered, for free-shipping cards.
    pub free_shipping_orders: i32,
    /// 1 when exchangeable.
    pub active: i32,
}

/// A fulfilment task as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct TaskRow {
    /// Id.
    pub id: String,
    /// Member.
    pub customer_id: String,
    /// Reward code.
    pub reward_code: String,
    /// Reward name.
    pub reward_name: String,
    /// Exchange.
    pub exchange_id: String,
    /// 1 when shipped.
    pub done: i32,
    /// Carrier.
    pub carrier: String,
    /// Tracking number.
    pub tracking_number: String,
    /// Created, µs.
    pub created_at: i64,
    /// Shipped, µs.
    pub done_at: Option<i64>,
}

/// What an exchange produced.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Exchange id.
    pub id: String,
    /// The spend entry.
    pub entry: EntryRow,
    /// Gift task id.
    pub task_id: String,
    /// Free-shipping card id.
    pub card_id: String,
}

const TASK_COLUMNS: &str = "id, customer_id, reward_code, reward_name, exchange_id, done, carrier, tracking_number, created_at, done_at";

impl Store {
    /// The zone prices of `skus`.
    pub async fn prices_for(
        &self,
        shop_id: &str,
        skus: &[String],
    ) -> Result<Vec<PriceRow>, LoyaltyError> {
        let rows = bulk::query_with_keys(
            self.db.conn(),
            "SELECT sku, price_fen, returning_only, label, min_tier_code FROM member_prices
             WHERE shop_id = $1 AND sku {keys}",
            vec![shop_id.into()],
            skus,
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| PriceRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    /// Zone prices by SKU after `after`.
    pub async fn list_prices(
        &self,
        shop_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PriceRow>, LoyaltyError> {
        let mut sql = String::from(
            "SELECT sku, price_fen, returning_only, label, min_tier_code FROM member_prices WHERE shop_id = $1",
        );
        let mut values: Vec<Value> = vec![shop_id.into()];
        if let Some(a) = after {
            values.push(a.into());
            sql.push_str(" AND sku > $2");
        }
        sql.push_str(&format!(" ORDER BY sku LIMIT {limit}"));
        let rows = self.read(&sql, values).await?;
        Ok(rows
            .iter()
            .map(|r| PriceRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    /// Sets and removes zone prices; returns (set, removed).
    pub async fn set_prices(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        set: &[PriceRow],
        remove: &[String],
    ) -> Result<(i32, i32), LoyaltyError> {
        let now = now_micros();
        for p in set {
            tx.execute(
                "INSERT INTO member_prices (shop_id, sku, price_fen, returning_only, label, min_tier_code, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (shop_id, sku) DO UPDATE SET price_fen = excluded.price_fen,
                    returning_only = excluded.returning_only, label = excluded.label,
                    min_tier_code = excluded.min_tier_code, updated_at = excluded.updated_at",
                vec![
                    shop_id.into(),
                    p.sku.clone().into(),
                    p.price_fen.into(),
                    p.returning_only.into(),
                    p.label.clone().into(),
                    p.min_tier_code.clone().into(),
                    now.into(),
                ],
            )
            .await?;
        }
        let (checkout, shop) = (self.checkout.clone(), shop_id.to_owned());
        tx.after_commit(Box::pin(async move { checkout.drop_zone(&shop) }));
        let mut removed = 0;
        for sku in remove {
            removed += tx
                .execute(
                    "DELETE FROM member_prices WHERE shop_id = $1 AND sku = $2",
                    vec![shop_id.into(), sku.clone().into()],
                )
                .await?;
        }
        Ok((set.len() as i32, removed as i32))
    }

    /// Adds or replaces a reward.
    pub async fn upsert_reward(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        r: &RewardRow,
    ) -> Result<(), LoyaltyError> {
        tx.execute(
            "INSERT INTO rewards (shop_id, code, name, kind, points_cost, stock, coupon_template_id,
                free_shipping_orders, active, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (shop_id, code) DO UPDATE SET name = excluded.name, kind = excluded.kind,
                points_cost = excluded.points_cost, stock = excluded.stock,
                coupon_template_id = excluded.coupon_template_id,
                free_shipping_orders = excluded.free_shipping_orders, active = excluded.active,
                updated_at = excluded.updated_at",
            vec![
                shop_id.into(),
                r.code.clone().into(),
                r.name.clone().into(),
                r.kind.into(),
                r.points_cost.into(),
                r.stock.into(),
                r.coupon_template_id.clone().into(),
                r.free_shipping_orders.into(),
                r.active.into(),
                now_micros().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The catalog by code.
    pub async fn rewards(
        &self,
        shop_id: &str,
        active_only: bool,
    ) -> Result<Vec<RewardRow>, LoyaltyError> {
        let filter = if active_only { " AND active = 1" } else { "" };
        let rows = self
            .read(
                &format!(
                    "SELECT code, name, kind, points_cost, stock, coupon_template_id, free_shipping_orders, active
                     FROM rewards WHERE shop_id = $1{filter} ORDER BY code"
                ),
                vec![shop_id.into()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RewardRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    /// Exchanges the locked member's points for the reward `code`: the
    /// stock is taken, the points spent and the reward granted in the
    /// caller's transaction, so either all happen or none.
    pub async fn exchange(
        &self,
        tx: &WriteTx,
        member: &mut MemberRow,
        code: &str,
        actor: &str,
    ) -> Result<Exchange, LoyaltyError> {
        let shop_id = member.shop_id.clone();
        let row = tx
            .query_one_raw(Statement::from_sql_and_values(
                self.db.backend(),
                self.db.sql(&format!(
                    "SELECT code, name, kind, points_cost, stock, coupon_template_id, free_shipping_orders, active
                     FROM rewards WHERE shop_id = $1 AND code = $2{}",
                    self.lock_suffix()
                )),
                vec![shop_id.clone().into(), code.into()],
            ))
            .await?
            .ok_or(LoyaltyError::RewardNotFound)?;
        let reward = RewardRow::from_query_result(&row, "")?;
        if reward.active == 0 {
            return Err(huitou_runtime::Failure::failed_precondition(
                "REWARD_INACTIVE",
                format!("reward {code} is not offered now"),
            )
            .into());
        }
        if reward.stock.is_some_and(|s| s <= 0) {
            return Err(huitou_runtime::Failure::failed_precondition(
                "REWARD_OUT_OF_STOCK",
                format!("reward {code} is out of stock"),
            )
            .into());
        }
        if reward.stock.is_some() {
            tx.execute(
                "UPDATE rewards SET stock = stock - 1 WHERE shop_id = $1 AND code = $2",
                vec![shop_id.clone().into(), code.into()],
            )
            .await?;
        }
        let exchange_id = new_id();
        let entry = self
            .spend(
                tx,
                member,
                EntryKind::Spent,
                reward.points_cost,
                format!("exchanged for {} ({})", reward.name, reward.code),
                actor,
            )
            .await?;
        let now = now_micros();
        tx.execute(
            "INSERT INTO exchanges (shop_id, id, customer_id, reward_code, points, entry_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            vec![
                shop_id.clone().into(),
                exchange_id.clone().into(),
                member.customer_id.clone().into(),
                code.into(),
                reward.points_cost.into(),
                entry.id.clone().into(),
                now.into(),
            ],
        )
        .await?;
        let (mut task_id, mut card_id) = (String::new(), String::new());
        let kind_name = if reward.kind == RewardKind::Coupon as i32 {
            // The coupon service issues it from the event below, once per
            // exchange; if it cannot, it says so and the points come back
            // (`return_exchange`).
            "COUPON"
        } else if reward.kind == RewardKind::Gift as i32 {
            task_id = new_id();
            tx.execute(
                "INSERT INTO fulfilment_tasks (shop_id, id, customer_id, reward_code, reward_name, exchange_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                vec![
                    shop_id.clone().into(),
                    task_id.clone().into(),
                    member.customer_id.clone().into(),
                    code.into(),
                    reward.name.clone().into(),
                    exchange_id.clone().into(),
                    now.into(),
                ],
            )
            .await?;
            "GIFT"
        } else {
            card_id = new_id();
            tx.execute(
                "INSERT INTO free_shipping_cards (shop_id, id, customer_id, orders_left, exchange_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    shop_id.clone().into(),
                    card_id.clone().into(),
                    member.customer_id.clone().into(),
                    reward.free_shipping_orders.into(),
                    exchange_id.clone().into(),
                    now.into(),
                ],
            )
            .await?;
            "FREE_SHIPPING_CARD"
        };
        outbox::append(
            tx,
            event(
                &shop_id,
                Payload::RewardExchanged(RewardExchanged {
                    customer_id: member.customer_id.clone(),
                    exchange_id: exchange_id.clone(),
                    reward_code: code.into(),
                    reward_kind: kind_name.into(),
                    points: reward.points_cost,
                    coupon_template_id: reward.coupon_template_id.clone(),
                }),
            ),
        )
        .await?;
        Ok(Exchange {
            id: exchange_id,
            entry,
            task_id,
            card_id,
        })
    }

    /// Gives back the points of an exchange whose reward could not be
    /// delivered, and its unit of stock; `why` goes into the ledger.
    pub async fn return_exchange(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        exchange_id: &str,
        event_id: &str,
        why: &str,
    ) -> Result<(), LoyaltyError> {
        let rows = tx
            .query_all(
                "SELECT customer_id, reward_code, points FROM exchanges WHERE shop_id = $1 AND id = $2",
                vec![shop_id.into(), exchange_id.into()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let customer: String = row.try_get("", "customer_id")?;
        let code: String = row.try_get("", "reward_code")?;
        let points: i64 = row.try_get("", "points")?;
        let mut member = self
            .find_member(&**tx, shop_id, &MemberKey::Id(customer), true)
            .await?;
        let (program, _) = self.load_program(&**tx, shop_id).await?;
        self.earn(
            tx,
            &program,
            &mut member,
            EntryKind::ExchangeReturned,
            points,
            format!("returned: reward {code} could not be delivered ({why})"),
            event_id,
            "",
            "coupon service",
        )
        .await?;
        self.save_member(tx, &mut member).await?;
        tx.execute(
            "UPDATE rewards SET stock = stock + 1 WHERE shop_id = $1 AND code = $2 AND stock IS NOT NULL",
            vec![shop_id.into(), code.into()],
        )
        .await?;
        Ok(())
    }

    /// Fulfilment tasks oldest first after `after`.
    pub async fn tasks(
        &self,
        shop_id: &str,
        include_done: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, LoyaltyError> {
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM fulfilment_tasks WHERE shop_id = $1");
        let mut values: Vec<Value> = vec![shop_id.into()];
        if !include_done {
            sql.push_str(" AND done = 0");
        }
        if let Some(a) = after {
            values.push(a.into());
            sql.push_str(&format!(" AND id > ${}", values.len()));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {limit}"));
        let rows = self.read(&sql, values).await?;
        Ok(rows
            .iter()
            .map(|r| TaskRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    /// Marks a task shipped; shipping it again with the same tracking
    /// number is harmless.
    pub async fn complete_task(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        task_id: &str,
        carrier: &str,
        tracking: &str,
    ) -> Result<TaskRow, LoyaltyError> {
        let row = tx
            .query_one_raw(Statement::from_sql_and_values(
                self.db.backend(),
                self.db.sql(&format!(
                    "SELECT {TASK_COLUMNS} FROM fulfilment_tasks WHERE shop_id = $1 AND id = $2{}",
                    self.lock_suffix()
                )),
                vec![shop_id.into(), task_id.into()],
            ))
            .await?
            .ok_or(LoyaltyError::TaskNotFound)?;
        let mut task = TaskRow::from_query_result(&row, "")?;
        if task.done != 0 {
            if task.carrier == carrier && task.tracking_number == tracking {
                return Ok(task);
            }
            return Err(huitou_runtime::Failure::failed_precondition(
                "TASK_ALREADY_DONE",
                "the task was already shipped with another tracking number",
            )
            .into());
        }
        let now = now_micros();
        tx.execute(
            "UPDATE fulfilment_tasks SET done = 1, carrier = $1, tracking_number = $2, done_at = $3
             WHERE shop_id = $4 AND id = $5",
            vec![
                carrier.into(),
                tracking.into(),
                now.into(),
                shop_id.into(),
                task_id.into(),
            ],
        )
        .await?;
        task.done = 1;
        task.carrier = carrier.into();
        task.tracking_number = tracking.into();
        task.done_at = Some(now);
        Ok(task)
    }
}
