//! What the coupon service knows of buyers, kept from the customer and
//! loyalty services' events, and the shop's issue rules.

use huitou_proto::coupon::v1::{IssueRule, IssueTrigger};
use huitou_storage::{WriteTx, now_micros};
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::{Store, read_on};
use crate::error::CouponError;

/// A buyer as the coupon service knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, FromQueryResult)]
pub struct BuyerRow {
    /// Paid orders (including imported history).
    pub paid_orders: i64,
    /// Loyalty tier code; empty when not known.
    pub tier_code: String,
    /// Birthday month, 1-12; 0 when unknown.
    pub birthday_month: i32,
    /// Birthday day, 1-31; 0 when unknown.
    pub birthday_day: i32,
}

/// A change to a buyer from an event.
#[derive(Debug, Clone, Copy)]
pub enum BuyerChange<'a> {
    /// One more paid order; the order's place among the buyer's paid
    /// orders when the customer service knows it.
    Paid {
        /// 1 for the first paid order, 2 for the second…; 0 when unknown.
        sequence: i64,
    },
    /// A new tier, decided at `at` (µs). A change older than the tier held
    /// arrived late (the relay retried it after later ones) and is ignored.
    Tier {
        /// The tier's code.
        code: &'a str,
        /// When loyalty decided it.
        at: i64,
    },
    /// The birthday in the customer's profile as of `at` (µs); 0, 0 when
    /// unknown. Older profiles, and any after an erasure, are ignored.
    Birthday {
        /// Month, 1-12, or 0.
        month: i32,
        /// Day, 1-31, or 0.
        day: i32,
        /// When the profile changed.
        at: i64,
    },
    /// The customer was erased: the birthday is forgotten for good.
    Erased,
}

impl Store {
    /// The buyer, or a new buyer when no event has named them yet.
    pub async fn buyer(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        customer_id: &str,
    ) -> Result<BuyerRow, CouponError> {
        let rows = read_on(
            conn,
            &self.db,
            "SELECT paid_orders, tier_code, birthday_month, birthday_day FROM buyers
             WHERE shop_id = $1 AND customer_id = $2",
            vec![shop_id.into(), customer_id.into()],
        )
        .await?;
        Ok(match rows.first() {
            Some(r) => BuyerRow::from_query_result(r, "")?,
            None => BuyerRow::default(),
        })
    }

    /// Applies one event's change to a buyer.
    pub async fn change_buyer(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        customer_id: &str,
        change: BuyerChange<'_>,
    ) -> Result<(), CouponError> {
        let (sql, value): (&str, sea_orm::Value) = match change {
            // The sequence, when known, is exact; redelivery cannot count an
            // order twice (the inbox drops repeats anyway).
            BuyerChange::Paid { sequence } => (
                "INSERT INTO buyers (shop_id, customer_id, paid_orders) VALUES ($1, $2, MAX($3, 1))
                 ON CONFLICT (shop_id, customer_id) DO UPDATE
                 SET paid_orders = CASE WHEN $3 > 0 THEN MAX(buyers.paid_orders, $3) ELSE buyers.paid_orders + 1 END",
                sequence.into(),
            ),
            BuyerChange::Tier { code, at } => {
                tx.execute(
                    "INSERT INTO buyers (shop_id, customer_id, tier_code, tier_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (shop_id, customer_id) DO UPDATE
                     SET tier_code = excluded.tier_code, tier_at = excluded.tier_at
                     WHERE buyers.tier_at <= excluded.tier_at",
                    vec![shop_id.into(), customer_id.into(), code.into(), at.into()],
                )
                .await?;
                return Ok(());
            }
            BuyerChange::Birthday { month, day, at } => {
                tx.execute(
                    "INSERT INTO buyers (shop_id, customer_id, birthday_month, birthday_day, profile_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (shop_id, customer_id) DO UPDATE
                     SET birthday_month = excluded.birthday_month, birthday_day = excluded.birthday_day,
                         profile_at = excluded.profile_at
                     WHERE buyers.profile_at <= excluded.profile_at AND buyers.erased = 0",
                    vec![
                        shop_id.into(),
                        customer_id.into(),
                        month.into(),
                        day.into(),
                        at.into(),
                    ],
                )
                .await?;
                return Ok(());
            }
            BuyerChange::Erased => {
                tx.execute(
                    "INSERT INTO buyers (shop_id, customer_id, erased) VALUES ($1, $2, 1)
                     ON CONFLICT (shop_id, customer_id) DO UPDATE
                     SET erased = 1, birthday_month = 0, birthday_day = 0",
                    vec![shop_id.into(), customer_id.into()],
                )
                .await?;
                return Ok(());
            }
        };
        let sql = if self.db.is_postgres() {
            sql.replace("MAX(", "GREATEST(")
        } else {
            sql.to_owned()
        };
        tx.execute(&sql, vec![shop_id.into(), customer_id.into(), value])
            .await?;
        Ok(())
    }

    /// Issues every shop's birthday coupon to the buyers whose birthday
    /// is today in the template's time zone: once per buyer and year,
    /// however often it runs. Returns the coupons issued.
    pub async fn birthday_gifts(&self, now: i64) -> Result<u64, CouponError> {
        use chrono::{Datelike, TimeZone};
        let rules = self
            .read(
                "SELECT shop_id, template_id FROM issue_rules WHERE trigger_kind = $1 AND active = 1",
                vec![(IssueTrigger::Birthday as i32).into()],
            )
            .await?;
        let mut issued = 0;
        for rule in &rules {
            let shop: String = rule.try_get("", "shop_id")?;
            let template_id: String = rule.try_get("", "template_id")?;
            let Some((template, _)) = self
                .load_template(self.db.conn(), &shop, &template_id)
                .await?
            else {
                continue;
            };
            let Some(today) = template.time_zone.timestamp_micros(now).single() else {
                continue;
            };
            let mut after = String::new();
            loop {
                let rows = self
                    .read(
                        "SELECT customer_id FROM buyers
                         WHERE shop_id = $1 AND birthday_month = $2 AND birthday_day = $3 AND customer_id > $4
                         ORDER BY customer_id LIMIT 500",
                        vec![
                            shop.clone().into(),
                            (today.month() as i32).into(),
                            (today.day() as i32).into(),
                            after.clone().into(),
                        ],
                    )
                    .await?;
                let customers = rows
                    .iter()
                    .map(|r| r.try_get::<String>("", "customer_id"))
                    .collect::<Result<Vec<_>, _>>()?;
                let Some(last) = customers.last() else { break };
                after = last.clone();
                let (shop, template, year) = (shop.clone(), template.clone(), today.year());
                issued += self
                    .transaction(move |tx, store| {
                        let (shop, template, customers) =
                            (shop.clone(), template.clone(), customers.clone());
                        Box::pin(async move {
                            let mut n = 0;
                            for customer in &customers {
                                let spec = super::coupons::IssueSpec {
                                    key: format!("birthday:{year}:{customer}"),
                                    reason: "birthday",
                                    agent: None,
                                };
                                match store
                                    .issue(tx, &shop, &template, customer, &spec, now)
                                    .await
                                {
                                    Ok(i) if i.new => n += 1,
                                    Ok(_)
                                    | Err(CouponError::NotEligible(_))
                                    | Err(CouponError::OutOfStock)
                                    | Err(CouponError::TemplatePaused) => {}
                                    Err(e) => return Err(e),
                                }
                            }
                            Ok(n)
                        })
                    })
                    .await?;
            }
        }
        Ok(issued)
    }

    /// Replaces the shop's rule for the rule's trigger.
    pub async fn set_rule(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        rule: &IssueRule,
    ) -> Result<(), CouponError> {
        tx.execute(
            "INSERT INTO issue_rules (shop_id, trigger_kind, template_id, active, positive_reviews_only, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (shop_id, trigger_kind) DO UPDATE SET template_id = excluded.template_id,
                 active = excluded.active, positive_reviews_only = excluded.positive_reviews_only,
                 updated_at = excluded.updated_at",
            vec![
                shop_id.into(),
                rule.trigger.into(),
                rule.template_id.clone().into(),
                i32::from(rule.active).into(),
                i32::from(rule.positive_reviews_only).into(),
                now_micros().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The shop's rules, by trigger.
    pub async fn rules(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
    ) -> Result<Vec<IssueRule>, CouponError> {
        let rows = read_on(
            conn,
            &self.db,
            "SELECT trigger_kind, template_id, active, positive_reviews_only FROM issue_rules
             WHERE shop_id = $1 ORDER BY trigger_kind",
            vec![shop_id.into()],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(IssueRule {
                    trigger: r.try_get("", "trigger_kind")?,
                    template_id: r.try_get("", "template_id")?,
                    active: r.try_get::<i32>("", "active")? != 0,
                    positive_reviews_only: r.try_get::<i32>("", "positive_reviews_only")? != 0,
                })
            })
            .collect()
    }

    /// The active rule for `trigger`, if the shop has one.
    pub async fn rule_for(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        trigger: IssueTrigger,
    ) -> Result<Option<IssueRule>, CouponError> {
        Ok(self
            .rules(conn, shop_id)
            .await?
            .into_iter()
            .find(|r| r.active && r.trigger == trigger as i32))
    }
}
