//! The periodic review run: requalify tiers that are due (announcing and
//! making drops as the downgrade policy says), expire points past their
//! date, and warn about points that will expire.
//!
//! It visits only due rows, through their indexes, a batch of members at a
//! time: each batch is one transaction that locks its members (in key
//! order), re-reads them, and writes with one bulk statement per table. A
//! member no longer due when locked is left alone, so the run is safe on
//! several replicas at once or twice in a row: a second visit finds
//! nothing due.

use std::collections::HashMap;

use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::events::v1::{PointsExpired, PointsExpiring};
use huitou_proto::loyalty::v1::EntryKind;
use huitou_proto::timestamp_from_micros;
use huitou_storage::{WriteTx, bulk, outbox};
use sea_orm::{FromQueryResult, Value};

use super::batch::{ENTRY_COLUMNS, standings};
use super::members::{TIER_CHANGE_COLUMNS, tier_step};
use super::{Store, event, new_id};
use crate::domain::days;
use crate::domain::program::Program;
use crate::domain::tiers::Decision;
use crate::error::LoyaltyError;

/// Who writes the run's entries.
pub const NIGHTLY_ACTOR: &str = "nightly";

/// Members per batch.
const BATCH: usize = 5_000;

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

impl NightlyReport {
    fn add(&mut self, o: NightlyReport) {
        self.members_requalified += o.members_requalified;
        self.tiers_dropped += o.tiers_dropped;
        self.drops_announced += o.drops_announced;
        self.members_expired += o.members_expired;
        self.points_expired += o.points_expired;
        self.expiry_warnings += o.expiry_warnings;
    }
}

#[derive(FromQueryResult)]
struct Due {
    shop_id: String,
    customer_id: String,
}

#[derive(FromQueryResult)]
struct DueLot {
    customer_id: String,
    id: String,
    remaining: i64,
    expire_at: i64,
}

impl Store {
    /// The next `BATCH` members after `after` with anything due at `now`:
    /// a requalification or drop, points past their date, or points to warn
    /// about. Walks the primary key, so a whole run reads each member once.
    async fn due(
        &self,
        now: i64,
        after: &Option<(String, String)>,
    ) -> Result<Vec<Due>, LoyaltyError> {
        let mut values: Vec<Value> = vec![now.into(), (now + days(MAX_WARNING_DAYS)).into()];
        let mut sql = String::from(
            "SELECT m.shop_id AS shop_id, m.customer_id AS customer_id FROM members m
             WHERE (m.requalify_at <= $1 OR m.drop_at <= $1 OR EXISTS (
                SELECT 1 FROM point_lots l
                WHERE l.shop_id = m.shop_id AND l.customer_id = m.customer_id AND l.remaining > 0
                  AND l.expire_at <= $2 AND (l.expire_at <= $1 OR l.expire_at > m.expiry_warned_until)))",
        );
        if let Some((shop, customer)) = after {
            values.push(shop.clone().into());
            values.push(customer.clone().into());
            // A row comparison, so the primary key index serves it.
            sql.push_str(" AND (m.shop_id, m.customer_id) > ($3, $4)");
        }
        sql.push_str(&format!(" ORDER BY m.shop_id, m.customer_id LIMIT {BATCH}"));
        let rows = self.read(&sql, values).await?;
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
        let mut after = None;
        loop {
            let batch = self.due(now, &after).await?;
            let mut start = 0;
            while start < batch.len() {
                let shop = batch[start].shop_id.clone();
                let end = batch[start..]
                    .iter()
                    .position(|d| d.shop_id != shop)
                    .map_or(batch.len(), |n| start + n);
                let customers: Vec<String> = batch[start..end]
                    .iter()
                    .map(|d| d.customer_id.clone())
                    .collect();
                start = end;
                let program = self.program_in_run(&mut programs, &shop).await?;
                let done = self
                    .transaction(|tx, store| {
                        let (program, shop, customers) =
                            (program.clone(), shop.clone(), customers.clone());
                        Box::pin(
                            async move { store.review(tx, &program, &shop, &customers, now).await },
                        )
                    })
                    .await?;
                report.add(done);
            }
            after = match batch.last() {
                Some(d) if batch.len() == BATCH => Some((d.shop_id.clone(), d.customer_id.clone())),
                _ => break,
            };
        }
        Ok(report)
    }

    /// Reviews a batch of one shop's members in one transaction.
    async fn review(
        &self,
        tx: &WriteTx,
        program: &Program,
        shop_id: &str,
        customers: &[String],
        now: i64,
    ) -> Result<NightlyReport, LoyaltyError> {
        let mut report = NightlyReport::default();
        let members = self.lock_members(tx, shop_id, customers).await?;
        let before = standings(&members);
        let tier_due: Vec<String> = members
            .values()
            .filter(|m| m.requalify_at <= now || m.drop_at.is_some_and(|d| d <= now))
            .map(|m| m.customer_id.clone())
            .collect();
        let windows = if tier_due.is_empty() {
            HashMap::new()
        } else {
            self.windows(&**tx, program, shop_id, &tier_due, now)
                .await?
        };
        let horizon = now + days(program.expiry_warning_days);
        let lots = self
            .lots_expiring(tx, shop_id, customers, None, horizon)
            .await?;
        let mut lots_of: HashMap<&str, Vec<&DueLot>> = HashMap::new();
        for l in &lots {
            lots_of.entry(&l.customer_id).or_default().push(l);
        }
        let (mut changes, mut entries, mut events, mut saved, mut emptied) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for mut m in members.into_values() {
            let mut changed = false;
            // Tiers: requalify, announce a drop, or drop.
            if m.requalify_at <= now || m.drop_at.is_some_and(|d| d <= now) {
                let window = windows.get(&m.customer_id).copied().unwrap_or_default();
                let step = tier_step(program, &mut m, window, now);
                report.members_requalified += 1;
                match step.decision {
                    Decision::Drop(_) => report.tiers_dropped += 1,
                    Decision::WillDrop(..) => report.drops_announced += 1,
                    Decision::Upgrade(_) | Decision::Requalified | Decision::Keep => {}
                }
                changed |= step.decision != Decision::Keep;
                changes.extend(step.change);
                events.extend(step.events);
            }
            let mine = lots_of.remove(m.customer_id.as_str()).unwrap_or_default();
            // Expiry: everything left in lots past their date.
            let expired: i64 = mine
                .iter()
                .filter(|l| l.expire_at <= now)
                .map(|l| l.remaining)
                .sum();
            if expired > 0 {
                m.balance -= expired;
                emptied.extend(
                    mine.iter()
                        .filter(|l| l.expire_at <= now)
                        .map(|l| l.id.clone()),
                );
                entries.push(vec![
                    shop_id.into(),
                    new_id().into(),
                    m.customer_id.clone().into(),
                    (EntryKind::Expired as i32).into(),
                    (-expired).into(),
                    m.balance.into(),
                    format!("{expired} points reached their expiry date").into(),
                    String::new().into(),
                    String::new().into(),
                    NIGHTLY_ACTOR.into(),
                    Option::<i64>::None.into(),
                    Option::<i64>::None.into(),
                    now.into(),
                ]);
                events.push(event(
                    shop_id,
                    Payload::PointsExpired(PointsExpired {
                        customer_id: m.customer_id.clone(),
                        points: expired,
                        balance_points: m.balance,
                    }),
                ));
                report.members_expired += 1;
                report.points_expired += expired;
                changed = true;
            }
            // Warnings: points expiring within the warning period that
            // nobody was told about yet.
            let soon: Vec<&&DueLot> = mine
                .iter()
                .filter(|l| l.expire_at > now && l.expire_at > m.expiry_warned_until)
                .collect();
            if let (Some(first), Some(last)) = (
                soon.iter().map(|l| l.expire_at).min(),
                soon.iter().map(|l| l.expire_at).max(),
            ) {
                m.expiry_warned_until = last;
                events.push(event(
                    shop_id,
                    Payload::PointsExpiring(PointsExpiring {
                        customer_id: m.customer_id.clone(),
                        points: soon.iter().map(|l| l.remaining).sum(),
                        expire_time: Some(timestamp_from_micros(first)),
                    }),
                ));
                report.expiry_warnings += 1;
                changed = true;
            }
            if changed {
                saved.push(m);
            }
        }
        self.empty_lots(tx, shop_id, &emptied).await?;
        bulk::insert(tx, "ledger_entries", &ENTRY_COLUMNS, entries, "").await?;
        bulk::insert(tx, "tier_changes", &TIER_CHANGE_COLUMNS, changes, "").await?;
        outbox::append_many(tx, events).await?;
        self.save_members(tx, saved, &before, now).await?;
        Ok(report)
    }
    /// Lots with points left of `customers` expiring in (`from`, `to`].
    async fn lots_expiring(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        customers: &[String],
        from: Option<i64>,
        to: i64,
    ) -> Result<Vec<DueLot>, LoyaltyError> {
        let rows = bulk::query_with_keys(
            &**tx,
            "SELECT customer_id, id, remaining, expire_at FROM point_lots
             WHERE shop_id = $1 AND remaining > 0 AND expire_at > $2 AND expire_at <= $3
               AND customer_id {keys}",
            vec![shop_id.into(), from.unwrap_or(i64::MIN).into(), to.into()],
            customers,
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| DueLot::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    /// Sets the lots `ids` to nothing left (their points were expired).
    async fn empty_lots(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        ids: &[String],
    ) -> Result<(), LoyaltyError> {
        bulk::execute_with_keys(
            &**tx,
            "UPDATE point_lots SET remaining = 0 WHERE shop_id = $1 AND id {keys}",
            vec![shop_id.into()],
            ids,
        )
        .await?;
        Ok(())
    }
}
