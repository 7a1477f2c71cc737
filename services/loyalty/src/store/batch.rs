//! New customers and paid orders, many at once.
//!
//! The relay delivers events in batches; most are `customer.created` and
//! `order.paid`. Applying them one statement at a time costs a dozen round
//! trips per event, so a run of them is applied together: members created
//! and locked (in key order) with one statement each, known orders found
//! with one, the qualification windows summed with one, then every order is
//! worked through in memory in event order — points, ledger entry, lot,
//! tier — exactly as one at a time would, and the rows written with one
//! bulk statement per table.

use std::collections::{HashMap, HashSet};

use huitou_proto::events::v1::OrderSnapshot;
use huitou_proto::loyalty::v1::EntryKind;
use huitou_proto::micros_from_timestamp;
use huitou_storage::bulk::{self, Col};
use huitou_storage::{WriteTx, now_micros, outbox};
use sea_orm::{FromQueryResult, Value};

use super::checkout::Standing as CheckoutStanding;
use super::members::{
    MEMBER_COLUMNS, MEMBER_UPDATE_COLUMNS, MemberRow, TIER_CHANGE_COLUMNS, tier_step,
    update_values, yuan,
};
use super::points::{EVENT_ACTOR, local_day};
use super::{Store, new_id};
use crate::domain::days;
use crate::domain::ledger;
use crate::domain::program::Program;
use crate::domain::tiers::Standing;
use crate::error::LoyaltyError;

/// One event of a run.
#[derive(Debug, Clone, Copy)]
pub enum Arrival<'a> {
    /// A customer was created.
    Customer {
        /// Customer id.
        customer_id: &'a str,
        /// Buyer nick.
        buyer_nick: &'a str,
        /// When, µs.
        at: i64,
    },
    /// An order was paid (`earn`) or imported paid (history: no points).
    Paid {
        /// The event.
        event_id: &'a str,
        /// The order.
        order: &'a OrderSnapshot,
        /// Whether it earns points.
        earn: bool,
    },
}

const NEW_MEMBER_COLUMNS: [(&str, Col); 8] = [
    ("shop_id", Col::Text),
    ("customer_id", Col::Text),
    ("buyer_nick", Col::Text),
    ("tier_code", Col::Text),
    ("tier_since", Col::BigInt),
    ("requalify_at", Col::BigInt),
    ("created_at", Col::BigInt),
    ("updated_at", Col::BigInt),
];

pub(crate) const ENTRY_COLUMNS: [(&str, Col); 13] = [
    ("shop_id", Col::Text),
    ("id", Col::Text),
    ("customer_id", Col::Text),
    ("kind", Col::Int),
    ("points", Col::BigInt),
    ("balance_after", Col::BigInt),
    ("reason", Col::Text),
    ("source_event_id", Col::Text),
    ("order_no", Col::Text),
    ("actor", Col::Text),
    ("available_at", Col::BigInt),
    ("expire_at", Col::BigInt),
    ("created_at", Col::BigInt),
];

const LOT_COLUMNS: [(&str, Col); 6] = [
    ("shop_id", Col::Text),
    ("id", Col::Text),
    ("customer_id", Col::Text),
    ("remaining", Col::BigInt),
    ("available_at", Col::BigInt),
    ("expire_at", Col::BigInt),
];

const ORDER_COLUMNS: [(&str, Col); 9] = [
    ("shop_id", Col::Text),
    ("order_id", Col::Text),
    ("customer_id", Col::Text),
    ("order_no", Col::Text),
    ("paid_fen", Col::BigInt),
    ("refunded_fen", Col::BigInt),
    ("paid_at", Col::BigInt),
    ("earned_points", Col::BigInt),
    ("lot_id", Col::Text),
];

#[derive(FromQueryResult)]
struct KnownOrder {
    order_id: String,
}

/// What an order earns, with its explanation.
struct Earning {
    points: i64,
    reason: String,
    available_at: i64,
    expire_at: Option<i64>,
}

fn earning(
    program: &Program,
    member: &MemberRow,
    order: &OrderSnapshot,
    paid_at: i64,
) -> Option<Earning> {
    let paid_fen = (order.payable_fen - order.refunded_fen).max(0);
    let tier = &program.tiers[program.tier_or_base(&member.tier_code)];
    let birthday =
        member.birthday_month > 0 && local_day(program, paid_at).1 == member.birthday_month as u32;
    let points = ledger::order_points(program, tier, paid_fen, birthday);
    if points <= 0 {
        return None;
    }
    let available_at = paid_at + days(program.return_window_days);
    let mut reason = format!(
        "order {} paid {} 元 at {} x{}.{:02}",
        order.order_no,
        yuan(paid_fen),
        tier.code,
        tier.points_multiplier_percent / 100,
        tier.points_multiplier_percent % 100
    );
    if birthday {
        reason.push_str(" (birthday month)");
    }
    Some(Earning {
        points,
        reason,
        available_at,
        expire_at: (program.points_lifetime_days > 0)
            .then(|| available_at + days(program.points_lifetime_days)),
    })
}

/// The checkout standings of locked members, to tell later which changed.
pub fn standings(members: &HashMap<String, MemberRow>) -> HashMap<String, CheckoutStanding> {
    members
        .iter()
        .map(|(id, m)| (id.clone(), CheckoutStanding::from(m)))
        .collect()
}

fn paid_at(order: &OrderSnapshot) -> i64 {
    order
        .pay_time
        .as_ref()
        .and_then(micros_from_timestamp)
        .unwrap_or_else(now_micros)
}

impl Store {
    /// Writes many locked members at once (their mutable columns, with
    /// fresh versions). Once committed, the checkout cache holds those
    /// whose standing changed from `before`; the others' cached standings
    /// are still right (a cache write per member would cost more than the
    /// update itself in a review run over every member).
    pub async fn save_members(
        &self,
        tx: &WriteTx,
        members: Vec<MemberRow>,
        before: &HashMap<String, CheckoutStanding>,
        now: i64,
    ) -> Result<(), LoyaltyError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut saved = Vec::new();
        let mut rows = Vec::with_capacity(members.len());
        for mut m in members {
            m.updated_at = now.max(m.updated_at + 1);
            rows.push(update_values(&m));
            if before.get(&m.customer_id) != Some(&CheckoutStanding::from(&m)) {
                saved.push(m);
            }
        }
        bulk::update(tx, "members", &MEMBER_UPDATE_COLUMNS, 2, rows).await?;
        let checkout = self.checkout.clone();
        tx.after_commit(Box::pin(async move {
            checkout.remember_all(&saved).await;
        }));
        Ok(())
    }

    /// Locks and reads the members `customers` (sorted) of a shop.
    pub async fn lock_members(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        customers: &[String],
    ) -> Result<HashMap<String, MemberRow>, LoyaltyError> {
        let mut members = HashMap::new();
        let lookup = bulk::KeyedLookup {
            table: "members",
            columns: MEMBER_COLUMNS,
            key_column: "customer_id",
            shop_id,
            keys: customers,
        };
        for r in bulk::rows_with_keys(tx, lookup, true).await? {
            let m = MemberRow::from_query_result(&r, "")?;
            members.insert(m.customer_id.clone(), m);
        }
        Ok(members)
    }

    /// Applies a run of arrivals for one shop, in order, as one would one
    /// at a time.
    pub async fn apply_arrivals(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        arrivals: &[Arrival<'_>],
    ) -> Result<(), LoyaltyError> {
        if arrivals.is_empty() {
            return Ok(());
        }
        let (program, _) = self.load_program(&**tx, shop_id).await?;
        let now = now_micros();

        // Every member the run touches exists, then is locked and read.
        let mut first_seen: HashMap<&str, (&str, i64)> = HashMap::new();
        for a in arrivals {
            let (id, nick, at) = match a {
                Arrival::Customer {
                    customer_id,
                    buyer_nick,
                    at,
                } => (*customer_id, *buyer_nick, *at),
                Arrival::Paid { order, .. } => (order.customer_id.as_str(), "", paid_at(order)),
            };
            let seen = first_seen.entry(id).or_insert((nick, at));
            if seen.0.is_empty() {
                seen.0 = nick;
            }
        }
        let mut customers: Vec<String> = first_seen.keys().map(|c| (*c).to_owned()).collect();
        customers.sort();
        let new_rows: Vec<Vec<Value>> = customers
            .iter()
            .map(|c| {
                let (nick, at) = first_seen[c.as_str()];
                let standing = Standing::new_member(&program, at);
                vec![
                    shop_id.into(),
                    c.clone().into(),
                    nick.into(),
                    program.tiers[0].code.clone().into(),
                    standing.since.into(),
                    standing.requalify_at.into(),
                    now.into(),
                    now.into(),
                ]
            })
            .collect();
        bulk::insert(
            tx,
            "members",
            &NEW_MEMBER_COLUMNS,
            new_rows,
            "ON CONFLICT (shop_id, customer_id) DO NOTHING",
        )
        .await?;
        let mut members = self.lock_members(tx, shop_id, &customers).await?;
        let before = standings(&members);

        // Orders already applied (a redelivery, or paid and imported both).
        let order_ids: Vec<String> = arrivals
            .iter()
            .filter_map(|a| match a {
                Arrival::Paid { order, .. } => Some(order.order_id.clone()),
                Arrival::Customer { .. } => None,
            })
            .collect();
        let mut known: HashSet<String> = HashSet::new();
        let lookup = bulk::KeyedLookup {
            table: "member_orders",
            columns: "order_id",
            key_column: "order_id",
            shop_id,
            keys: &order_ids,
        };
        for r in bulk::rows_with_keys(tx, lookup, false).await? {
            known.insert(KnownOrder::from_query_result(&r, "")?.order_id);
        }
        let paying: Vec<String> = {
            let mut p: Vec<String> = arrivals
                .iter()
                .filter_map(|a| match a {
                    Arrival::Paid { order, .. } if !known.contains(&order.order_id) => {
                        Some(order.customer_id.clone())
                    }
                    _ => None,
                })
                .collect();
            p.sort();
            p.dedup();
            p
        };
        let mut windows = if paying.is_empty() {
            HashMap::new()
        } else {
            self.windows(&**tx, &program, shop_id, &paying, now).await?
        };

        let window_from = now - days(program.qualification_window_days);
        let (mut entries, mut lots, mut orders, mut changes, mut events) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut touched: HashSet<String> = HashSet::new();
        for a in arrivals {
            match a {
                Arrival::Customer {
                    customer_id,
                    buyer_nick,
                    ..
                } => {
                    if let Some(m) = members.get_mut(*customer_id)
                        && m.buyer_nick.is_empty()
                        && !buyer_nick.is_empty()
                    {
                        m.buyer_nick = (*buyer_nick).to_owned();
                        touched.insert(m.customer_id.clone());
                    }
                }
                Arrival::Paid {
                    event_id,
                    order,
                    earn,
                } => {
                    if !known.insert(order.order_id.clone()) {
                        continue;
                    }
                    let Some(m) = members.get_mut(&order.customer_id) else {
                        continue;
                    };
                    touched.insert(m.customer_id.clone());
                    let paid_at = paid_at(order);
                    let mut earned = 0;
                    let mut lot_id: Option<String> = None;
                    if *earn && let Some(e) = earning(&program, m, order, paid_at) {
                        let id = new_id();
                        m.balance += e.points;
                        earned = e.points;
                        entries.push(vec![
                            shop_id.into(),
                            id.clone().into(),
                            m.customer_id.clone().into(),
                            (EntryKind::OrderEarned as i32).into(),
                            e.points.into(),
                            m.balance.into(),
                            e.reason.into(),
                            (*event_id).into(),
                            order.order_no.clone().into(),
                            EVENT_ACTOR.into(),
                            Some(e.available_at).into(),
                            e.expire_at.into(),
                            now.into(),
                        ]);
                        lots.push(vec![
                            shop_id.into(),
                            id.clone().into(),
                            m.customer_id.clone().into(),
                            e.points.into(),
                            e.available_at.into(),
                            e.expire_at.into(),
                        ]);
                        lot_id = Some(id);
                    }
                    orders.push(vec![
                        shop_id.into(),
                        order.order_id.clone().into(),
                        m.customer_id.clone().into(),
                        order.order_no.clone().into(),
                        order.payable_fen.into(),
                        order.refunded_fen.into(),
                        paid_at.into(),
                        earned.into(),
                        lot_id.into(),
                    ]);
                    m.paid_order_count += 1;
                    let window = windows.entry(m.customer_id.clone()).or_default();
                    if paid_at > window_from {
                        window.spend_fen += (order.payable_fen - order.refunded_fen).max(0);
                        if order.refunded_fen < order.payable_fen {
                            window.order_count += 1;
                        }
                    }
                    let step = tier_step(&program, m, *window, now);
                    changes.extend(step.change);
                    events.extend(step.events);
                }
            }
        }

        bulk::insert(tx, "ledger_entries", &ENTRY_COLUMNS, entries, "").await?;
        bulk::insert(tx, "point_lots", &LOT_COLUMNS, lots, "").await?;
        bulk::insert(tx, "member_orders", &ORDER_COLUMNS, orders, "").await?;
        bulk::insert(tx, "tier_changes", &TIER_CHANGE_COLUMNS, changes, "").await?;
        outbox::append_many(tx, events).await?;
        let saved: Vec<MemberRow> = touched.iter().filter_map(|id| members.remove(id)).collect();
        self.save_members(tx, saved, &before, now).await?;
        Ok(())
    }
}
