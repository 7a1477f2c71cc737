//! Points moves: earning on paid orders, taking back on refunds, review and
//! referral bonuses, check-ins, adjustments and spends. Each runs inside
//! the caller's transaction with the member row locked.

use chrono::{Datelike, TimeZone};
use huitou_proto::events::v1::OrderSnapshot;
use huitou_proto::loyalty::v1::EntryKind;
use huitou_storage::{WriteTx, now_micros};
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::Store;
use super::members::{EntryRow, MemberKey, MemberRow, NewEntry, yuan};
use crate::domain::days;
use crate::domain::ledger;
use crate::domain::program::Program;
use crate::error::LoyaltyError;

/// Who wrote an entry because an event arrived.
pub const EVENT_ACTOR: &str = "event";

#[derive(FromQueryResult)]
struct OrderRow {
    paid_fen: i64,
    refunded_fen: i64,
    earned_points: i64,
    reversed_points: i64,
    lot_id: Option<String>,
    reviewed: i32,
}

/// The local calendar day number (days since 1970-01-01 in `zone`) and month of `micros`.
pub fn local_day(program: &Program, micros: i64) -> (i32, u32) {
    let zone = program.zone();
    let utc = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
    let local = zone.from_utc_datetime(&utc.naive_utc());
    let day = local.date_naive().num_days_from_ce() - 719_163;
    (day, local.month())
}

impl Store {
    async fn member_order(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        order_id: &str,
    ) -> Result<Option<OrderRow>, LoyaltyError> {
        let row = tx
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                self.db.backend(),
                self.db.sql(&format!(
                    "SELECT paid_fen, refunded_fen, earned_points, reversed_points, lot_id, reviewed
                     FROM member_orders WHERE shop_id = $1 AND order_id = $2{}",
                    self.lock_suffix()
                )),
                vec![shop_id.into(), order_id.into()],
            ))
            .await?;
        Ok(match row {
            Some(r) => Some(OrderRow::from_query_result(&r, "")?),
            None => None,
        })
    }

    /// The paid order a later change (refund, review) applies to, locked.
    /// When the change arrives before the order's `order.paid` or
    /// `order.imported` (the relay retries a failed delivery after later
    /// events have gone, decision 0004), the payment is applied first from
    /// the change's snapshot, as the order stood when paid: the change then
    /// meets what it changes, and the late event finds the order known and
    /// changes nothing. `None` for an order never paid.
    /// Locks the member before any of its orders' rows, as a paid order
    /// does: a refund or review that locked the order first could wait for
    /// the member while a delivery holding the member waits for the order
    /// (decision 0014). A member not made yet is made, and locked, by the
    /// paid order that follows.
    async fn lock_member_first(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        customer_id: &str,
    ) -> Result<(), LoyaltyError> {
        let key = MemberKey::Id(customer_id.to_owned());
        match self.find_member(&**tx, shop_id, &key, true).await {
            Ok(_) | Err(LoyaltyError::MemberNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn paid_order(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        event_id: &str,
        order: &OrderSnapshot,
    ) -> Result<Option<OrderRow>, LoyaltyError> {
        if let Some(row) = self.member_order(tx, shop_id, &order.order_id).await? {
            return Ok(Some(row));
        }
        if order.pay_time.is_none() {
            return Ok(None);
        }
        let when_paid = OrderSnapshot {
            status: "PAID".into(),
            refunded_fen: 0,
            ..order.clone()
        };
        let arrival = super::batch::Arrival::Paid {
            event_id,
            order: &when_paid,
            earn: !order.imported,
        };
        self.apply_arrivals(tx, shop_id, &[arrival]).await?;
        self.member_order(tx, shop_id, &order.order_id).await
    }

    /// An order was paid (or imported in a paid state, when `earn` is
    /// false: history counts for tiers but earns no points). Records it
    /// once, earns its points as pending until the return window closes,
    /// then upgrades the tier if the window now qualifies.
    pub async fn order_paid(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        event_id: &str,
        order: &OrderSnapshot,
        earn: bool,
    ) -> Result<(), LoyaltyError> {
        let arrival = super::batch::Arrival::Paid {
            event_id,
            order,
            earn,
        };
        self.apply_arrivals(tx, shop_id, &[arrival]).await
    }

    /// Money was refunded: the order's points are taken back in proportion
    /// (all of them for a full refund). The tier only changes at
    /// requalification, as the downgrade policy says.
    pub async fn order_refunded(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        event_id: &str,
        order: &OrderSnapshot,
    ) -> Result<(), LoyaltyError> {
        self.lock_member_first(tx, shop_id, &order.customer_id)
            .await?;
        let Some(row) = self.paid_order(tx, shop_id, event_id, order).await? else {
            // Never paid: nothing was earned, nothing to take back.
            return Ok(());
        };
        let refunded = order.refunded_fen.max(row.refunded_fen);
        let target = ledger::reversed_share(row.earned_points, row.paid_fen, refunded);
        let points = target - row.reversed_points;
        let mut member = self
            .find_member(
                &**tx,
                shop_id,
                &MemberKey::Id(order.customer_id.clone()),
                true,
            )
            .await?;
        let mut taken = 0;
        if points > 0 {
            let now = now_micros();
            let lots = self.lots(&**tx, shop_id, &member.customer_id).await?;
            let (takes, short) =
                ledger::take_for_reversal(&lots, row.lot_id.as_deref(), points, now);
            taken = takes.iter().map(|t| t.points).sum::<i64>();
            let mut reason = format!(
                "order {} refunded {} of {} 元",
                order.order_no,
                yuan(refunded),
                yuan(row.paid_fen)
            );
            if short > 0 {
                reason.push_str(&format!(
                    "; {short} points were already spent and are not taken back"
                ));
            }
            if taken > 0 || short > 0 {
                self.append_entry(
                    tx,
                    &mut member,
                    NewEntry {
                        kind: EntryKind::RefundReversed as i32,
                        points: -taken,
                        reason,
                        source_event_id: event_id.into(),
                        order_no: order.order_no.clone(),
                        actor: EVENT_ACTOR.into(),
                        ..NewEntry::default()
                    },
                    &takes,
                )
                .await?;
            }
            taken += short;
        }
        tx.execute(
            "UPDATE member_orders SET refunded_fen = $1, reversed_points = reversed_points + $2
             WHERE shop_id = $3 AND order_id = $4",
            vec![
                refunded.into(),
                taken.into(),
                shop_id.into(),
                order.order_id.clone().into(),
            ],
        )
        .await?;
        self.save_member(tx, &mut member).await
    }

    /// The buyer reviewed a paid order: the review bonus, once per order.
    /// Every genuine review counts, whatever its rating.
    pub async fn order_reviewed(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        event_id: &str,
        order: &OrderSnapshot,
    ) -> Result<(), LoyaltyError> {
        self.lock_member_first(tx, shop_id, &order.customer_id)
            .await?;
        let Some(row) = self.paid_order(tx, shop_id, event_id, order).await? else {
            return Ok(());
        };
        let (program, _) = self.load_program(&**tx, shop_id).await?;
        let bonus = program.earning.review_points;
        // Whether the order was wholly refunded when reviewed is the
        // review's own snapshot: a refund delivered before the review
        // (though made after it) must not take the bonus away.
        let refunded_when_reviewed =
            order.payable_fen > 0 && order.refunded_fen >= order.payable_fen;
        if row.reviewed != 0 || bonus == 0 || refunded_when_reviewed {
            return Ok(());
        }
        let mut member = self
            .find_member(
                &**tx,
                shop_id,
                &MemberKey::Id(order.customer_id.clone()),
                true,
            )
            .await?;
        self.earn(
            tx,
            &program,
            &mut member,
            EntryKind::ReviewEarned,
            bonus,
            format!("review of order {}", order.order_no),
            event_id,
            &order.order_no,
            EVENT_ACTOR,
        )
        .await?;
        tx.execute(
            "UPDATE member_orders SET reviewed = 1 WHERE shop_id = $1 AND order_id = $2",
            vec![shop_id.into(), order.order_id.clone().into()],
        )
        .await?;
        self.save_member(tx, &mut member).await
    }

    /// Earns `points` available at once (bonuses, check-ins, adjustments).
    #[allow(clippy::too_many_arguments)]
    pub async fn earn(
        &self,
        tx: &WriteTx,
        program: &Program,
        member: &mut MemberRow,
        kind: EntryKind,
        points: i64,
        reason: String,
        event_id: &str,
        order_no: &str,
        actor: &str,
    ) -> Result<EntryRow, LoyaltyError> {
        let now = now_micros();
        let expire_at =
            (program.points_lifetime_days > 0).then(|| now + days(program.points_lifetime_days));
        self.append_entry(
            tx,
            member,
            NewEntry {
                kind: kind as i32,
                points,
                reason,
                source_event_id: event_id.into(),
                order_no: order_no.into(),
                actor: actor.into(),
                available_at: Some(now),
                expire_at,
            },
            &[],
        )
        .await
    }

    /// Spends `points` of the locked member's available points, soonest
    /// expiring first; never below zero.
    pub async fn spend(
        &self,
        tx: &WriteTx,
        member: &mut MemberRow,
        kind: EntryKind,
        points: i64,
        reason: String,
        actor: &str,
    ) -> Result<EntryRow, LoyaltyError> {
        let now = now_micros();
        let lots = self
            .lots(&**tx, &member.shop_id, &member.customer_id)
            .await?;
        let takes = ledger::take_for_spend(&lots, points, now).map_err(|s| {
            LoyaltyError::NotEnoughPoints {
                needed: points,
                available: s.available,
            }
        })?;
        self.append_entry(
            tx,
            member,
            NewEntry {
                kind: kind as i32,
                points: -points,
                reason,
                actor: actor.into(),
                ..NewEntry::default()
            },
            &takes,
        )
        .await
    }
}
