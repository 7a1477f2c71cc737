//! Members: the row every change locks, their lots and ledger entries, the
//! qualification window, and tier changes.

use std::collections::HashMap;

use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::events::v1::{TierChanged, TierWillDrop};
use huitou_proto::timestamp_from_micros;
use huitou_storage::bulk::{self, Col};
use huitou_storage::{WriteTx, now_micros};
use sea_orm::{ConnectionTrait, FromQueryResult, Statement, Value};

use super::{Store, event, new_id};
use crate::domain::days;
use crate::domain::ledger::{Lot, Take};
use crate::domain::program::Program;
use crate::domain::tiers::{self, Decision, Standing, Window};
use crate::error::LoyaltyError;

/// The columns a member update writes: the key, then every mutable one.
pub(crate) const MEMBER_UPDATE_COLUMNS: [(&str, Col); 15] = [
    ("shop_id", Col::Text),
    ("customer_id", Col::Text),
    ("buyer_nick", Col::Text),
    ("birthday_month", Col::Int),
    ("tier_code", Col::Text),
    ("tier_since", Col::BigInt),
    ("requalify_at", Col::BigInt),
    ("drop_to", Col::Text),
    ("drop_at", Col::BigInt),
    ("balance", Col::BigInt),
    ("paid_order_count", Col::BigInt),
    ("last_check_in_day", Col::Int),
    ("expiry_warned_until", Col::BigInt),
    ("updated_at", Col::BigInt),
    ("profile_at", Col::BigInt),
];

/// A member's values in [`MEMBER_UPDATE_COLUMNS`] order.
pub(crate) fn update_values(m: &MemberRow) -> Vec<Value> {
    vec![
        m.shop_id.clone().into(),
        m.customer_id.clone().into(),
        m.buyer_nick.clone().into(),
        m.birthday_month.into(),
        m.tier_code.clone().into(),
        m.tier_since.into(),
        m.requalify_at.into(),
        m.drop_to.clone().into(),
        m.drop_at.into(),
        m.balance.into(),
        m.paid_order_count.into(),
        m.last_check_in_day.into(),
        m.expiry_warned_until.into(),
        m.updated_at.into(),
        m.profile_at.into(),
    ]
}

/// A member row.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct MemberRow {
    /// Shop.
    pub shop_id: String,
    /// Customer id.
    pub customer_id: String,
    /// Buyer nick; empty once erased or not yet known.
    pub buyer_nick: String,
    /// Birthday month, 0 when unknown.
    pub birthday_month: i32,
    /// Tier code.
    pub tier_code: String,
    /// When the tier was reached, µs.
    pub tier_since: i64,
    /// Next requalification, µs.
    pub requalify_at: i64,
    /// Pending drop target.
    pub drop_to: Option<String>,
    /// Pending drop time, µs.
    pub drop_at: Option<i64>,
    /// Sum of the ledger entries.
    pub balance: i64,
    /// Paid orders ever.
    pub paid_order_count: i64,
    /// Local day number of the last check-in.
    pub last_check_in_day: i32,
    /// Lots expiring up to here were already warned about, µs.
    pub expiry_warned_until: i64,
    /// Last change, µs; the version of cached copies.
    pub updated_at: i64,
    /// When the profile held (the birthday) was current, µs: an older
    /// `customer.updated`, delivered late, does not replace it.
    pub profile_at: i64,
}

/// The member columns, in [`MemberRow`] order.
pub const MEMBER_COLUMNS: &str = "shop_id, customer_id, buyer_nick, birthday_month, tier_code, tier_since, requalify_at, drop_to, drop_at, balance, paid_order_count, last_check_in_day, expiry_warned_until, updated_at, profile_at";

/// How a request names a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKey {
    /// By customer id.
    Id(String),
    /// By buyer nick.
    Nick(String),
}

/// A ledger entry about to be written.
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    /// `EntryKind` wire number.
    pub kind: i32,
    /// Signed points.
    pub points: i64,
    /// Why, in words.
    pub reason: String,
    /// The causing event.
    pub source_event_id: String,
    /// The order concerned.
    pub order_no: String,
    /// Who made it.
    pub actor: String,
    /// For earnings: when available, µs.
    pub available_at: Option<i64>,
    /// For earnings: when they expire, µs.
    pub expire_at: Option<i64>,
}

/// A stored ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct EntryRow {
    /// Id (time-ordered).
    pub id: String,
    /// `EntryKind` wire number.
    pub kind: i32,
    /// Signed points.
    pub points: i64,
    /// Balance after it.
    pub balance_after: i64,
    /// Why.
    pub reason: String,
    /// Causing event.
    pub source_event_id: String,
    /// Order concerned.
    pub order_no: String,
    /// Who made it.
    pub actor: String,
    /// When available, µs.
    pub available_at: Option<i64>,
    /// When they expire, µs.
    pub expire_at: Option<i64>,
    /// When written, µs.
    pub created_at: i64,
}

/// A stored tier change.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct TierChangeRow {
    /// Id (time-ordered).
    pub id: String,
    /// From.
    pub from_code: String,
    /// To.
    pub to_code: String,
    /// Why.
    pub reason: String,
    /// When, µs.
    pub created_at: i64,
}

/// A member with what is computed around it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// The row.
    pub row: MemberRow,
    /// Its lots with points left.
    pub lots: Vec<Lot>,
    /// Its qualification window at the time of reading.
    pub window: Window,
    /// The time of reading, µs.
    pub now: i64,
}

#[derive(FromQueryResult)]
struct LotRow {
    id: String,
    remaining: i64,
    available_at: i64,
    expire_at: Option<i64>,
}

#[derive(FromQueryResult)]
struct WindowRow {
    customer_id: String,
    spend: Option<i64>,
    orders: Option<i64>,
}

impl Store {
    fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.db.backend(), self.db.sql(sql), values)
    }

    /// The member `key` names, read through `conn` (locked when `lock`).
    pub async fn find_member(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        key: &MemberKey,
        lock: bool,
    ) -> Result<MemberRow, LoyaltyError> {
        let (column, value) = match key {
            MemberKey::Id(id) => ("customer_id", id),
            MemberKey::Nick(nick) => ("buyer_nick", nick),
        };
        let suffix = if lock { self.lock_suffix() } else { "" };
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM members WHERE shop_id = $1 AND {column} = $2{suffix}"
        );
        let row = conn
            .query_one_raw(self.stmt(&sql, vec![shop_id.into(), value.into()]))
            .await?
            .ok_or(LoyaltyError::MemberNotFound)?;
        Ok(MemberRow::from_query_result(&row, "")?)
    }

    /// Writes the member's mutable columns; once committed, the checkout
    /// cache holds the new standing.
    pub async fn save_member(&self, tx: &WriteTx, m: &mut MemberRow) -> Result<(), LoyaltyError> {
        // Versions must grow even within one microsecond.
        m.updated_at = now_micros().max(m.updated_at + 1);
        bulk::update(
            tx,
            "members",
            &MEMBER_UPDATE_COLUMNS,
            2,
            vec![update_values(m)],
        )
        .await?;
        let (cache, row) = (self.checkout.clone(), m.clone());
        tx.after_commit(Box::pin(async move { cache.remember(&row).await }));
        Ok(())
    }

    /// The member's lots with points left.
    pub async fn lots(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        customer_id: &str,
    ) -> Result<Vec<Lot>, LoyaltyError> {
        let rows = conn
            .query_all_raw(self.stmt(
                "SELECT id, remaining, available_at, expire_at FROM point_lots
                 WHERE shop_id = $1 AND customer_id = $2 AND remaining > 0",
                vec![shop_id.into(), customer_id.into()],
            ))
            .await?;
        rows.iter()
            .map(|r| {
                let l = LotRow::from_query_result(r, "")?;
                Ok(Lot {
                    id: l.id,
                    remaining: l.remaining,
                    available_at: l.available_at,
                    expire_at: l.expire_at,
                })
            })
            .collect()
    }

    /// The qualification windows of `customers` ending at `now`: paid
    /// spend net of refunds, and orders not fully refunded. Members with no
    /// order in the window are absent.
    pub async fn windows(
        &self,
        conn: &impl ConnectionTrait,
        program: &Program,
        shop_id: &str,
        customers: &[String],
        now: i64,
    ) -> Result<HashMap<String, Window>, LoyaltyError> {
        let from = now - days(program.qualification_window_days);
        let rows = bulk::query_with_keys(
            conn,
            // PostgreSQL sums BIGINT as NUMERIC: cast back.
            "SELECT customer_id,
                    CAST(SUM(paid_fen - refunded_fen) AS BIGINT) AS spend,
                    CAST(SUM(CASE WHEN refunded_fen < paid_fen THEN 1 ELSE 0 END) AS BIGINT) AS orders
             FROM member_orders WHERE shop_id = $1 AND paid_at > $2 AND customer_id {keys}
             GROUP BY customer_id",
            vec![shop_id.into(), from.into()],
            customers,
        )
        .await?;
        let mut out = HashMap::new();
        for r in &rows {
            let w = WindowRow::from_query_result(r, "")?;
            out.insert(
                w.customer_id,
                Window {
                    spend_fen: w.spend.unwrap_or(0).max(0),
                    order_count: w.orders.unwrap_or(0),
                },
            );
        }
        Ok(out)
    }

    /// The member with lots and window, read at `now`.
    pub async fn member_view(
        &self,
        conn: &impl ConnectionTrait,
        program: &Program,
        row: MemberRow,
        now: i64,
    ) -> Result<MemberView, LoyaltyError> {
        let lots = self.lots(conn, &row.shop_id, &row.customer_id).await?;
        let window = self
            .windows(
                conn,
                program,
                &row.shop_id,
                std::slice::from_ref(&row.customer_id),
                now,
            )
            .await?
            .remove(&row.customer_id)
            .unwrap_or_default();
        Ok(MemberView {
            row,
            lots,
            window,
            now,
        })
    }

    /// Appends an entry for the locked `member`, opening a lot for earned
    /// points and taking `takes` from lots for negative ones. The member's
    /// balance moves with it; the caller saves the member.
    pub async fn append_entry(
        &self,
        tx: &WriteTx,
        member: &mut MemberRow,
        entry: NewEntry,
        takes: &[Take],
    ) -> Result<EntryRow, LoyaltyError> {
        debug_assert!(
            entry.points >= 0 || -entry.points == takes.iter().map(|t| t.points).sum::<i64>()
        );
        let id = new_id();
        let now = now_micros();
        member.balance += entry.points;
        tx.execute(
            "INSERT INTO ledger_entries (shop_id, id, customer_id, kind, points, balance_after, reason,
                source_event_id, order_no, actor, available_at, expire_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            vec![
                member.shop_id.clone().into(),
                id.clone().into(),
                member.customer_id.clone().into(),
                entry.kind.into(),
                entry.points.into(),
                member.balance.into(),
                entry.reason.clone().into(),
                entry.source_event_id.clone().into(),
                entry.order_no.clone().into(),
                entry.actor.clone().into(),
                entry.available_at.into(),
                entry.expire_at.into(),
                now.into(),
            ],
        )
        .await?;
        if entry.points > 0 {
            tx.execute(
                "INSERT INTO point_lots (shop_id, id, customer_id, remaining, available_at, expire_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    member.shop_id.clone().into(),
                    id.clone().into(),
                    member.customer_id.clone().into(),
                    entry.points.into(),
                    entry.available_at.unwrap_or(now).into(),
                    entry.expire_at.into(),
                ],
            )
            .await?;
        }
        for t in takes {
            tx.execute(
                "UPDATE point_lots SET remaining = remaining - $1 WHERE shop_id = $2 AND id = $3",
                vec![
                    t.points.into(),
                    member.shop_id.clone().into(),
                    t.lot_id.clone().into(),
                ],
            )
            .await?;
        }
        Ok(EntryRow {
            id,
            kind: entry.kind,
            points: entry.points,
            balance_after: member.balance,
            reason: entry.reason,
            source_event_id: entry.source_event_id,
            order_no: entry.order_no,
            actor: entry.actor,
            available_at: entry.available_at,
            expire_at: entry.expire_at,
            created_at: now,
        })
    }

    /// A member's ledger entries, newest first, before `before`.
    pub async fn entries(
        &self,
        shop_id: &str,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EntryRow>, LoyaltyError> {
        let mut sql = String::from(
            "SELECT id, kind, points, balance_after, reason, source_event_id, order_no, actor,
                    available_at, expire_at, created_at
             FROM ledger_entries WHERE shop_id = $1 AND customer_id = $2",
        );
        let mut values: Vec<Value> = vec![shop_id.into(), customer_id.into()];
        if let Some(b) = before {
            values.push(b.into());
            sql.push_str(" AND id < $3");
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let rows = self.read(&sql, values).await?;
        Ok(rows
            .iter()
            .map(|r| EntryRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    /// A member's tier changes, newest first, before `before`.
    pub async fn tier_changes(
        &self,
        shop_id: &str,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TierChangeRow>, LoyaltyError> {
        let mut sql = String::from(
            "SELECT id, from_code, to_code, reason, created_at
             FROM tier_changes WHERE shop_id = $1 AND customer_id = $2",
        );
        let mut values: Vec<Value> = vec![shop_id.into(), customer_id.into()];
        if let Some(b) = before {
            values.push(b.into());
            sql.push_str(" AND id < $3");
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let rows = self.read(&sql, values).await?;
        Ok(rows
            .iter()
            .map(|r| TierChangeRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }
}

/// Columns of `tier_changes`, for bulk inserts.
pub const TIER_CHANGE_COLUMNS: [(&str, Col); 7] = [
    ("shop_id", Col::Text),
    ("id", Col::Text),
    ("customer_id", Col::Text),
    ("from_code", Col::Text),
    ("to_code", Col::Text),
    ("reason", Col::Text),
    ("created_at", Col::BigInt),
];

/// What one tier evaluation decided and must write.
pub struct TierStep {
    /// The decision.
    pub decision: Decision,
    /// A `tier_changes` row, when the tier moved.
    pub change: Option<Vec<Value>>,
    /// Events to send (tier changed, tier will drop).
    pub events: Vec<huitou_proto::events::v1::EventEnvelope>,
}

/// Evaluates `member` against `window` at `now`, updating the row in
/// memory; the rows and events to write come back.
pub fn tier_step(program: &Program, member: &mut MemberRow, window: Window, now: i64) -> TierStep {
    let standing = standing_of(program, member);
    let decision = tiers::evaluate(program, &standing, window, now);
    let after = tiers::apply(program, &standing, decision, now);
    let from = member.tier_code.clone();
    member.tier_code = program.tiers[after.tier].code.clone();
    member.tier_since = after.since;
    member.requalify_at = after.requalify_at;
    member.drop_to = after.drop.map(|(t, _)| program.tiers[t].code.clone());
    member.drop_at = after.drop.map(|(_, at)| at);
    let mut step = TierStep {
        decision,
        change: None,
        events: Vec::new(),
    };
    let window_text = || {
        format!(
            "{} 元 and {} orders in {} days",
            yuan(window.spend_fen),
            window.order_count,
            program.qualification_window_days
        )
    };
    let (reason, upgrade) = match decision {
        Decision::Upgrade(_) => (format!("qualified by {}", window_text()), true),
        Decision::Drop(_) => (format!("requalification failed: {}", window_text()), false),
        Decision::WillDrop(to, at) => {
            step.events.push(event(
                &member.shop_id,
                Payload::TierWillDrop(TierWillDrop {
                    customer_id: member.customer_id.clone(),
                    tier_code: from,
                    drop_to_tier_code: program.tiers[to].code.clone(),
                    drop_time: Some(timestamp_from_micros(at)),
                }),
            ));
            return step;
        }
        Decision::Keep | Decision::Requalified => return step,
    };
    step.change = Some(vec![
        member.shop_id.clone().into(),
        new_id().into(),
        member.customer_id.clone().into(),
        from.clone().into(),
        member.tier_code.clone().into(),
        reason.clone().into(),
        now.into(),
    ]);
    step.events.push(event(
        &member.shop_id,
        Payload::TierChanged(TierChanged {
            customer_id: member.customer_id.clone(),
            from_tier_code: from,
            to_tier_code: member.tier_code.clone(),
            upgrade,
            reason,
        }),
    ));
    step
}

/// The member's standing in `program` terms.
pub fn standing_of(program: &Program, m: &MemberRow) -> Standing {
    Standing {
        tier: program.tier_or_base(&m.tier_code),
        since: m.tier_since,
        requalify_at: m.requalify_at,
        drop: match (&m.drop_to, m.drop_at) {
            (Some(to), Some(at)) => Some((program.tier_or_base(to), at)),
            _ => None,
        },
    }
}

/// Fen as yuan with two decimals.
pub fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, (fen % 100).abs())
}
