//! The periodic run: requalify tiers that are due (announcing and making
//! drops as the downgrade policy says), expire points past their date, and
//! warn about points that will expire. It visits only due rows through
//! their indexes, and handles each member in its own transaction with the
//! member row locked, so it is safe to run on several replicas at once or
//! twice in a row: a second visit finds nothing due.

use std::collections::HashMap;

use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::events::v1::{PointsExpired, PointsExpiring};
use huitou_proto::loyalty::v1::EntryKind;
use huitou_proto::timestamp_from_micros;
use huitou_storage::outbox;
use sea_orm::{FromQueryResult, Value};

use super::members::{MemberKey, NewEntry};
use super::{Store, event};
use crate::domain::days;
use crate::domain::ledger;
use crate::domain::program::Program;
use crate::domain::tiers::Decision;
use crate::error::LoyaltyError;

/// Who writes the run's entries.
pub const NIGHTLY_ACTOR: &str = "nightly";

/// Members fetched per step.
const BATCH: usize = 500;

/// The longest warning period a program may set, in days.
const MAX_WARNING_DAYS: i32 = 90;

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NightlyReport {
    /// Members whose tier was due and evaluated.
    pub members_requalified: u64,
    /// Tiers that dropped.
    pub tiers_dropped: u64,
    /// Drops announced.
    pub drops_announced: u64,
    /// Members whose points expired.
    pub members_expired: u64,
    /// Points expired.
    pub points_expired: i64,
    /// Expiry warnings sent.
    pub expiry_warnings: u64,
}

#[derive(FromQueryResult)]
struct Due {
    shop_id: String,
    customer_id: String,
}

impl Store {
    async fn due(
        &self,
        sql: &str,
        now: i64,
        after: &Option<(String, String)>,
    ) -> Result<Vec<Due>, LoyaltyError> {
        let mut values: Vec<Value> = vec![now.into()];
        let mut text = sql.to_owned();
        if let Some((shop, customer)) = after {
            values.push(shop.clone().into());
            values.push(customer.clone().into());
            text.push_str(" AND (shop_id > $2 OR (shop_id = $2 AND customer_id > $3))");
        }
        text.push_str(&format!(" ORDER BY shop_id, customer_id LIMIT {BATCH}"));
        let rows = self.read(&text, values).await?;
        Ok(rows
            .iter()
            .map(|r| Due::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    async fn program_in_run(
        &self,
        programs: &mut HashMap<String, Program>,
        shop: &str,
    ) -> Result<Program, LoyaltyError> {
        if let Some(p) = programs.get(shop) {
            return Ok(p.clone());
        }
        let (p, _) = self.load_program(self.db.conn(), shop).await?;
        programs.insert(shop.to_owned(), p.clone());
        Ok(p)
    }

    /// Runs the periodic work as of `now`.
    pub async fn nightly(&self, now: i64) -> Result<NightlyReport, LoyaltyError> {
        let mut report = NightlyReport::default();
        let mut programs: HashMap<String, Program> = HashMap::new();

        // Tiers due for requalification or a drop.
        let mut after = None;
        loop {
            let batch = self.due(
            "SELECT shop_id, customer_id FROM members WHERE (requalify_at <= $1 OR drop_at <= $1)",
            now,
            &after,
        )
        .await?;
            for Due {
                shop_id: shop,
                customer_id: customer,
            } in &batch
            {
                let program = self.program_in_run(&mut programs, shop).await?;
                let decision = self
                    .transaction(|tx, store| {
                        let (program, shop, customer) =
                            (program.clone(), shop.clone(), customer.clone());
                        Box::pin(async move {
                            let mut m = store
                                .find_member(&**tx, &shop, &MemberKey::Id(customer), true)
                                .await?;
                            let d = store.evaluate_tier(tx, &program, &mut m, now).await?;
                            store.save_member(tx, &mut m).await?;
                            Ok(d)
                        })
                    })
                    .await?;
                report.members_requalified += 1;
                match decision {
                    Decision::Drop(_) => report.tiers_dropped += 1,
                    Decision::WillDrop(..) => report.drops_announced += 1,
                    _ => {}
                }
            }
            after = match batch.last() {
                Some(d) if batch.len() == BATCH => Some((d.shop_id.clone(), d.customer_id.clone())),
                _ => break,
            };
        }

        // Points past their date.
        let mut after = None;
        loop {
            let batch = self.due(
            "SELECT DISTINCT shop_id, customer_id FROM point_lots WHERE expire_at <= $1 AND remaining > 0",
            now,
            &after,
        )
        .await?;
            for Due {
                shop_id: shop,
                customer_id: customer,
            } in &batch
            {
                let expired = self
                    .transaction(|tx, store| {
                        let (shop, customer) = (shop.clone(), customer.clone());
                        Box::pin(async move {
                            let mut m = store
                                .find_member(&**tx, &shop, &MemberKey::Id(customer.clone()), true)
                                .await?;
                            let lots = store.lots(&**tx, &shop, &customer).await?;
                            let takes = ledger::expired(&lots, now);
                            let points: i64 = takes.iter().map(|t| t.points).sum();
                            if points == 0 {
                                return Ok(0);
                            }
                            store
                                .append_entry(
                                    tx,
                                    &mut m,
                                    NewEntry {
                                        kind: EntryKind::Expired as i32,
                                        points: -points,
                                        reason: format!(
                                            "{points} points reached their expiry date"
                                        ),
                                        actor: NIGHTLY_ACTOR.into(),
                                        ..NewEntry::default()
                                    },
                                    &takes,
                                )
                                .await?;
                            store.save_member(tx, &mut m).await?;
                            outbox::append(
                                tx,
                                event(
                                    &shop,
                                    Payload::PointsExpired(PointsExpired {
                                        customer_id: customer,
                                        points,
                                        balance_points: m.balance,
                                    }),
                                ),
                            )
                            .await?;
                            Ok(points)
                        })
                    })
                    .await?;
                if expired > 0 {
                    report.members_expired += 1;
                    report.points_expired += expired;
                }
            }
            after = match batch.last() {
                Some(d) if batch.len() == BATCH => Some((d.shop_id.clone(), d.customer_id.clone())),
                _ => break,
            };
        }

        // Warnings for points expiring soon that nobody was warned about.
        let warn_sql = format!(
            "SELECT shop_id, customer_id FROM (
                SELECT DISTINCT l.shop_id AS shop_id, l.customer_id AS customer_id
                FROM point_lots l JOIN members m ON m.shop_id = l.shop_id AND m.customer_id = l.customer_id
                WHERE l.remaining > 0 AND l.expire_at > $1 AND l.expire_at <= $1 + {}
                  AND l.expire_at > m.expiry_warned_until) AS w WHERE 1 = 1",
            days(MAX_WARNING_DAYS)
        );
        let mut after = None;
        loop {
            let batch = self.due(&warn_sql, now, &after).await?;
            for Due {
                shop_id: shop,
                customer_id: customer,
            } in &batch
            {
                let program = self.program_in_run(&mut programs, shop).await?;
                let horizon = now + days(program.expiry_warning_days);
                let sent = self
                    .transaction(|tx, store| {
                        let (shop, customer) = (shop.clone(), customer.clone());
                        Box::pin(async move {
                            let mut m = store
                                .find_member(&**tx, &shop, &MemberKey::Id(customer.clone()), true)
                                .await?;
                            let lots = store.lots(&**tx, &shop, &customer).await?;
                            let soon: Vec<_> = lots
                                .iter()
                                .filter(|l| {
                                    l.expire_at.is_some_and(|e| {
                                        e > now && e <= horizon && e > m.expiry_warned_until
                                    })
                                })
                                .collect();
                            let points: i64 = soon.iter().map(|l| l.remaining).sum();
                            let (Some(first), Some(last)) = (
                                soon.iter().filter_map(|l| l.expire_at).min(),
                                soon.iter().filter_map(|l| l.expire_at).max(),
                            ) else {
                                return Ok(false);
                            };
                            m.expiry_warned_until = last;
                            store.save_member(tx, &mut m).await?;
                            outbox::append(
                                tx,
                                event(
                                    &shop,
                                    Payload::PointsExpiring(PointsExpiring {
                                        customer_id: customer,
                                        points,
                                        expire_time: Some(timestamp_from_micros(first)),
                                    }),
                                ),
                            )
                            .await?;
                            Ok(true)
                        })
                    })
                    .await?;
                if sent {
                    report.expiry_warnings += 1;
                }
            }
            after = match batch.last() {
                Some(d) if batch.len() == BATCH => Some((d.shop_id.clone(), d.customer_id.clone())),
                _ => break,
            };
        }
        Ok(report)
    }
}
