//! Templates, their striped stock and their results.

use huitou_proto::coupon::v1 as pb;
use huitou_storage::{WriteTx, now_micros};
use prost::Message;
use sea_orm::{ConnectionTrait, FromQueryResult, Value};

use super::{Store, new_id, read_on};
use crate::domain::checkout::State;
use crate::error::CouponError;
use crate::template::Template;

/// Stripes a template's stock is split into (fewer when the stock is
/// smaller): enough that 64 concurrent issuers rarely queue on one row.
pub const STRIPES: i64 = 16;

/// When a template was created and last changed, µs.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// Created.
    pub created_at: i64,
    /// Last changed.
    pub updated_at: i64,
}

#[derive(FromQueryResult)]
struct TemplateRow {
    id: String,
    name: String,
    terms: Vec<u8>,
    agent_daily_budget: i32,
    active: i32,
    created_at: i64,
    updated_at: i64,
}

const TEMPLATE_COLUMNS: &str =
    "id, name, terms, agent_daily_budget, active, created_at, updated_at";

impl TemplateRow {
    fn into_template(self) -> Result<(Template, Times), CouponError> {
        let mut message = pb::CouponTemplate::decode(self.terms.as_slice()).map_err(|e| {
            CouponError::Storage(huitou_storage::StorageError::Other(format!(
                "template {} unreadable: {e}",
                self.id
            )))
        })?;
        message.template_id = self.id;
        message.name = self.name;
        message.agent_daily_budget = self.agent_daily_budget;
        message.active = self.active != 0;
        Ok((
            Template::from_message(message),
            Times {
                created_at: self.created_at,
                updated_at: self.updated_at,
            },
        ))
    }
}

/// How a stock of `stock` is split: one amount per stripe.
pub fn stripe_amounts(stock: Option<i64>) -> Vec<Option<i64>> {
    match stock {
        None => vec![None; STRIPES as usize],
        Some(stock) => {
            let n = stock.clamp(1, STRIPES);
            (0..n)
                .map(|i| Some(stock / n + i64::from(i < stock % n)))
                .collect()
        }
    }
}

/// A template's issued count and remaining stock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StockCount {
    /// Coupons issued.
    pub issued: i64,
    /// Coupons left; `None` without a stock limit.
    pub remaining: Option<i64>,
}

impl Store {
    /// A template with when it was made, if the shop has it.
    pub async fn load_template(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        id: &str,
    ) -> Result<Option<(Template, Times)>, CouponError> {
        let rows = read_on(
            conn,
            &self.db,
            &format!(
                "SELECT {TEMPLATE_COLUMNS} FROM coupon_templates WHERE shop_id = $1 AND id = $2"
            ),
            vec![shop_id.into(), id.into()],
        )
        .await?;
        match rows.first() {
            Some(r) => Ok(Some(
                TemplateRow::from_query_result(r, "")?.into_template()?,
            )),
            None => Ok(None),
        }
    }

    /// Stores a checked template and its stock stripes.
    pub async fn create_template(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        message: &pb::CouponTemplate,
    ) -> Result<(Template, Times), CouponError> {
        let id = new_id();
        let now = now_micros();
        tx.execute(
            "INSERT INTO coupon_templates (shop_id, id, name, terms, has_stock, agent_daily_budget, active, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)",
            vec![
                shop_id.into(),
                id.clone().into(),
                message.name.clone().into(),
                Value::Bytes(Some(message.encode_to_vec())),
                i32::from(message.stock.is_some()).into(),
                message.agent_daily_budget.into(),
                now.into(),
            ],
        )
        .await?;
        for (stripe, remaining) in stripe_amounts(message.stock).into_iter().enumerate() {
            tx.execute(
                "INSERT INTO template_stock (shop_id, template_id, stripe, remaining, issued) VALUES ($1, $2, $3, $4, 0)",
                vec![
                    shop_id.into(),
                    id.clone().into(),
                    (stripe as i32).into(),
                    remaining.into(),
                ],
            )
            .await?;
        }
        let mut stored = message.clone();
        stored.template_id = id;
        stored.active = true;
        let template = Template::from_message(stored);
        Ok((
            template,
            Times {
                created_at: now,
                updated_at: now,
            },
        ))
    }

    /// Changes what may change of a template: name, active, the agents'
    /// budget, more stock.
    pub async fn update_template(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        id: &str,
        change: &pb::UpdateTemplateRequest,
    ) -> Result<(Template, Times), CouponError> {
        let (before, _) = self
            .load_template(&**tx, shop_id, id)
            .await?
            .ok_or(CouponError::TemplateNotFound)?;
        if change.add_stock > 0 && !before.has_stock {
            return Err(huitou_runtime::Failure::invalid_field(
                "add_stock",
                "the template has no stock limit; nothing to add to",
            )
            .into());
        }
        let now = now_micros();
        tx.execute(
            "UPDATE coupon_templates SET name = COALESCE($3, name), active = COALESCE($4, active),
                 agent_daily_budget = COALESCE($5, agent_daily_budget), updated_at = $6
             WHERE shop_id = $1 AND id = $2",
            vec![
                shop_id.into(),
                id.into(),
                change.name.as_ref().map(|n| n.trim().to_owned()).into(),
                change.active.map(i32::from).into(),
                change.agent_daily_budget.into(),
                now.into(),
            ],
        )
        .await?;
        if change.add_stock > 0 {
            // Spread over the stripes that exist, as at creation.
            let stripes = read_on(
                &**tx,
                &self.db,
                "SELECT stripe FROM template_stock WHERE shop_id = $1 AND template_id = $2 ORDER BY stripe",
                vec![shop_id.into(), id.into()],
            )
            .await?;
            let n = stripes.len().max(1) as i64;
            for (i, row) in stripes.iter().enumerate() {
                let stripe: i32 = row.try_get("", "stripe")?;
                let share = change.add_stock / n + i64::from((i as i64) < change.add_stock % n);
                tx.execute(
                    "UPDATE template_stock SET remaining = remaining + $4
                     WHERE shop_id = $1 AND template_id = $2 AND stripe = $3",
                    vec![shop_id.into(), id.into(), stripe.into(), share.into()],
                )
                .await?;
            }
        }
        let after = self
            .load_template(&**tx, shop_id, id)
            .await?
            .ok_or(CouponError::TemplateNotFound)?;
        if let Ok(mut map) = self.templates.lock() {
            map.remove(&(shop_id.to_owned(), id.to_owned()));
        }
        Ok(after)
    }

    /// Templates newest first, after `after` (an id).
    pub async fn list_templates(
        &self,
        shop_id: &str,
        after: Option<&str>,
        active_only: bool,
        limit: usize,
    ) -> Result<Vec<(Template, Times)>, CouponError> {
        let mut sql = format!("SELECT {TEMPLATE_COLUMNS} FROM coupon_templates WHERE shop_id = $1");
        let mut values: Vec<Value> = vec![shop_id.into()];
        if active_only {
            sql.push_str(" AND active = 1");
        }
        if let Some(after) = after {
            values.push(after.into());
            sql.push_str(&format!(" AND id < ${}", values.len()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let rows = self.read(&sql, values).await?;
        rows.iter()
            .map(|r| TemplateRow::from_query_result(r, "")?.into_template())
            .collect()
    }

    /// Issued and remaining counts of a template.
    pub async fn stock_count(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        template: &Template,
    ) -> Result<StockCount, CouponError> {
        let rows = read_on(
            conn,
            &self.db,
            "SELECT CAST(COALESCE(SUM(issued), 0) AS BIGINT) AS issued, CAST(COALESCE(SUM(remaining), 0) AS BIGINT) AS remaining
             FROM template_stock WHERE shop_id = $1 AND template_id = $2",
            vec![shop_id.into(), template.id.clone().into()],
        )
        .await?;
        let Some(row) = rows.first() else {
            return Ok(StockCount::default());
        };
        Ok(StockCount {
            issued: sum(row, "issued")?,
            remaining: template
                .has_stock
                .then(|| sum(row, "remaining"))
                .transpose()?,
        })
    }

    /// Takes one unit of stock for an issue: a conditional decrement of a
    /// stripe picked from `seed`, then of any stripe with stock left.
    pub async fn take_stock(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        template_id: &str,
        seed: u32,
    ) -> Result<bool, CouponError> {
        const TAKE: &str =
            "UPDATE template_stock SET remaining = remaining - 1, issued = issued + 1
             WHERE shop_id = $1 AND template_id = $2 AND stripe = $3
               AND (remaining IS NULL OR remaining > 0)";
        let first = (i64::from(seed) % STRIPES) as i32;
        let taken = tx
            .execute(TAKE, vec![shop_id.into(), template_id.into(), first.into()])
            .await?;
        if taken == 1 {
            return Ok(true);
        }
        // That stripe is empty (or absent for a small stock): look for one
        // that is not. A stripe emptied meanwhile just fails its update.
        let left = tx
            .query_all(
                "SELECT stripe FROM template_stock
                 WHERE shop_id = $1 AND template_id = $2 AND (remaining IS NULL OR remaining > 0)",
                vec![shop_id.into(), template_id.into()],
            )
            .await?;
        let mut stripes = left
            .iter()
            .map(|r| r.try_get::<i32>("", "stripe"))
            .collect::<Result<Vec<_>, _>>()?;
        let n = stripes.len().max(1);
        stripes.rotate_left(seed as usize % n);
        for stripe in stripes {
            let taken = tx
                .execute(
                    TAKE,
                    vec![shop_id.into(), template_id.into(), stripe.into()],
                )
                .await?;
            if taken == 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What a template earned.
    pub async fn results(
        &self,
        shop_id: &str,
        template: &Template,
    ) -> Result<pb::TemplateResults, CouponError> {
        let stock = self.stock_count(self.db.conn(), shop_id, template).await?;
        let rows = self
            .read(
                "SELECT
                    CAST(COALESCE(SUM(CASE WHEN state = $3 THEN 1 ELSE 0 END), 0) AS BIGINT) AS redeemed,
                    CAST(COALESCE(SUM(CASE WHEN state = $4 THEN 1 ELSE 0 END), 0) AS BIGINT) AS expired,
                    CAST(COALESCE(SUM(CASE WHEN state = $3 THEN discount_fen ELSE 0 END), 0) AS BIGINT) AS cost,
                    CAST(COALESCE(SUM(CASE WHEN state = $3 THEN order_total_fen ELSE 0 END), 0) AS BIGINT) AS gmv,
                    CAST(COALESCE(SUM(CASE WHEN state = $3 AND redeemed_by <> '' THEN 1 ELSE 0 END), 0) AS BIGINT) AS friends
                 FROM coupons WHERE shop_id = $1 AND template_id = $2",
                vec![
                    shop_id.into(),
                    template.id.clone().into(),
                    State::Redeemed.as_i32().into(),
                    State::Expired.as_i32().into(),
                ],
            )
            .await?;
        let row = rows.first();
        let get = |c: &str| row.map_or(Ok(0), |r| sum(r, c));
        let redeemed = get("redeemed")?;
        Ok(pb::TemplateResults {
            template_id: template.id.clone(),
            issued: stock.issued,
            redeemed,
            expired: get("expired")?,
            redemption_per_mille: if stock.issued > 0 {
                (redeemed * 1000 / stock.issued) as i32
            } else {
                0
            },
            discount_cost_fen: get("cost")?,
            order_gmv_fen: get("gmv")?,
            redeemed_by_friends: get("friends")?,
        })
    }
}

/// A SUM column, cast to BIGINT in the query (PostgreSQL sums to NUMERIC).
fn sum(row: &sea_orm::QueryResult, column: &str) -> Result<i64, CouponError> {
    Ok(row.try_get::<i64>("", column)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_is_split_without_losing_a_unit() {
        for stock in [1, 2, 15, 16, 17, 100, 1_000_003] {
            let parts = stripe_amounts(Some(stock));
            assert_eq!(parts.iter().flatten().sum::<i64>(), stock);
            assert!(parts.len() as i64 <= STRIPES);
            assert!(parts.iter().all(|p| p.is_some_and(|p| p >= 1)));
        }
        assert_eq!(stripe_amounts(None).len() as i64, STRIPES);
    }
}
