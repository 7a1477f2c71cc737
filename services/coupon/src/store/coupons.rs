//! Issued coupons: issue within every limit, then hold, redeem and give
//! back, each a conditional update that only one writer can win.

use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::events::v1::{CouponIssued, CouponRedeemed, CouponReleased};
use huitou_proto::timestamp_from_micros;
use huitou_storage::{WriteTx, outbox};
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::{Store, event, read_on};
use crate::domain::checkout::{self, Attempt, Refusal, Standing, State};
use crate::domain::code;
use crate::domain::rules::{self, Buyer, NotEligible};
use crate::error::CouponError;
use crate::template::Template;

/// A coupon as stored. It is also its own cache entry (see `cached`),
/// hence the protobuf tags.
#[derive(Clone, PartialEq, Eq, FromQueryResult, prost::Message)]
pub struct CouponRow {
    /// Code, canonical form.
    #[prost(string, tag = "1")]
    pub code: String,
    /// Template.
    #[prost(string, tag = "2")]
    pub template_id: String,
    /// Holder.
    #[prost(string, tag = "3")]
    pub customer_id: String,
    /// `State` number.
    #[prost(int32, tag = "4")]
    pub state: i32,
    /// First usable moment, µs.
    #[prost(int64, tag = "5")]
    pub valid_from: i64,
    /// End of the window, µs.
    #[prost(int64, tag = "6")]
    pub valid_until: i64,
    /// Why it was issued.
    #[prost(string, tag = "7")]
    pub issue_reason: String,
    /// Issued, µs.
    #[prost(int64, tag = "8")]
    pub issued_at: i64,
    /// Holding or using order.
    #[prost(string, tag = "9")]
    pub order_no: String,
    /// Hold lapses, µs.
    #[prost(int64, optional, tag = "10")]
    pub hold_until: Option<i64>,
    /// Discount given, fen.
    #[prost(int64, tag = "11")]
    pub discount_fen: i64,
    /// The order's items before the discount, fen.
    #[prost(int64, tag = "12")]
    pub order_total_fen: i64,
    /// Redeemed, µs.
    #[prost(int64, optional, tag = "13")]
    pub redeemed_at: Option<i64>,
    /// The friend who redeemed it; empty when the holder did.
    #[prost(string, tag = "14")]
    pub redeemed_by: String,
    /// Bumped by every change of the row, in the statement that makes it:
    /// a change conditioned on the version it read wins only if nothing
    /// changed in between, and the cache keeps the highest version.
    #[prost(int64, tag = "15")]
    pub version: i64,
}

/// The columns of [`CouponRow`].
pub const COUPON_COLUMNS: &str = "code, template_id, customer_id, state, valid_from, valid_until, issue_reason, issued_at, order_no, hold_until, discount_fen, order_total_fen, redeemed_at, redeemed_by, version";

impl CouponRow {
    /// Its state.
    pub fn state(&self) -> State {
        State::from_i32(self.state).unwrap_or(State::Expired)
    }

    /// What checkout needs of it.
    pub fn standing(&self) -> Standing<'_> {
        Standing {
            state: self.state(),
            customer_id: &self.customer_id,
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            order_no: &self.order_no,
            hold_until: self.hold_until,
        }
    }
}

/// How an issue came about.
#[derive(Debug, Clone)]
pub struct IssueSpec<'a> {
    /// Makes the issue happen once: a request, an event, a bulk run entry.
    pub key: String,
    /// Why, for the record.
    pub reason: &'a str,
    /// The agent issuing it mid-chat, counted against the agent's budget.
    pub agent: Option<&'a str>,
}

/// What an issue produced.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The coupon.
    pub coupon: CouponRow,
    /// False when the key had already issued it.
    pub new: bool,
}

/// A checkout action on a coupon.
#[derive(Debug, Clone, Copy)]
pub enum Claim {
    /// Hold it for the order until the moment given, µs.
    Hold(i64),
    /// Redeem it for the order; the order's items came to this much, fen.
    Redeem(i64),
}

/// What a hold or redemption produced.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The coupon after it.
    pub coupon: CouponRow,
    /// The discount, fen.
    pub discount_fen: i64,
}

impl Store {
    /// A coupon by canonical code.
    pub async fn find_coupon(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        code: &str,
    ) -> Result<Option<CouponRow>, CouponError> {
        let rows = read_on(
            conn,
            &self.db,
            &format!("SELECT {COUPON_COLUMNS} FROM coupons WHERE shop_id = $1 AND code = $2"),
            vec![shop_id.into(), code.into()],
        )
        .await?;
        Ok(rows
            .first()
            .map(|r| CouponRow::from_query_result(r, ""))
            .transpose()?)
    }

    /// A customer's coupons, newest first, after the code `after`.
    pub async fn list_coupons(
        &self,
        shop_id: &str,
        customer_id: &str,
        after: Option<(i64, String)>,
        usable_at: Option<i64>,
        limit: usize,
    ) -> Result<Vec<CouponRow>, CouponError> {
        let mut sql =
            format!("SELECT {COUPON_COLUMNS} FROM coupons WHERE shop_id = $1 AND customer_id = $2");
        let mut values: Vec<sea_orm::Value> = vec![shop_id.into(), customer_id.into()];
        if let Some((at, code)) = after {
            values.push(at.into());
            values.push(code.into());
            sql.push_str(&format!(
                " AND (issued_at < ${0} OR (issued_at = ${0} AND code < ${1}))",
                values.len() - 1,
                values.len()
            ));
        }
        if let Some(now) = usable_at {
            values.push(now.into());
            sql.push_str(&format!(
                " AND state IN (1, 2) AND valid_from <= ${0} AND valid_until > ${0}",
                values.len()
            ));
        }
        sql.push_str(&format!(
            " ORDER BY issued_at DESC, code DESC LIMIT {limit}"
        ));
        let rows = self.read(&sql, values).await?;
        Ok(rows
            .iter()
            .map(|r| CouponRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }

    /// Issues one coupon of `template` to `customer_id` at `now`, within
    /// the audience, the per-customer limit, the agent's budget and the
    /// stock. A refused issue leaves nothing behind in `tx`, so a bulk run
    /// can go on with the next customer in the same transaction.
    pub async fn issue(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        template: &Template,
        customer_id: &str,
        spec: &IssueSpec<'_>,
        now: i64,
    ) -> Result<Issued, CouponError> {
        if !template.active {
            return Err(CouponError::TemplatePaused);
        }
        let buyer = self.buyer(&**tx, shop_id, customer_id).await?;
        rules::eligible(
            &template.audience,
            Buyer {
                paid_orders: buyer.paid_orders,
                tier_code: &buyer.tier_code,
            },
        )
        .map_err(CouponError::NotEligible)?;
        let code = code::generate()
            .map_err(|e| huitou_runtime::Failure::internal(format!("no randomness: {e}")))?;
        let (from, until) = template.window(now);
        let inserted = tx
            .execute(
                "INSERT INTO coupons (shop_id, code, template_id, customer_id, state, valid_from, valid_until,
                     issue_key, issue_reason, issued_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (shop_id, template_id, issue_key) DO NOTHING",
                vec![
                    shop_id.into(),
                    code.clone().into(),
                    template.id.clone().into(),
                    customer_id.into(),
                    State::Active.as_i32().into(),
                    from.into(),
                    until.into(),
                    spec.key.clone().into(),
                    spec.reason.into(),
                    now.into(),
                ],
            )
            .await?;
        if inserted == 0 {
            let rows = tx
                .query_all(
                    &format!(
                        "SELECT {COUPON_COLUMNS} FROM coupons
                         WHERE shop_id = $1 AND template_id = $2 AND issue_key = $3"
                    ),
                    vec![
                        shop_id.into(),
                        template.id.clone().into(),
                        spec.key.clone().into(),
                    ],
                )
                .await?;
            let row = rows.first().ok_or_else(|| {
                huitou_storage::StorageError::Retry("issued coupon vanished".into())
            })?;
            return Ok(Issued {
                coupon: CouponRow::from_query_result(row, "")?,
                new: false,
            });
        }
        // From here each refusal undoes what came before it.
        let undo_coupon = || async {
            tx.execute(
                "DELETE FROM coupons WHERE shop_id = $1 AND code = $2",
                vec![shop_id.into(), code.clone().into()],
            )
            .await
        };
        let limited = template.per_customer_limit > 0;
        if limited
            && !self
                .count_holding(
                    tx,
                    shop_id,
                    &template.id,
                    customer_id,
                    template.per_customer_limit,
                )
                .await?
        {
            undo_coupon().await?;
            return Err(CouponError::NotEligible(NotEligible::LimitReached));
        }
        let undo_holding = || async {
            if limited {
                self.uncount_holding(tx, shop_id, &template.id, customer_id)
                    .await?;
            }
            Ok::<(), CouponError>(())
        };
        let day = template.day_of(now);
        if let Some(agent) = spec.agent {
            let counted = template.agent_daily_budget > 0
                && tx
                    .execute(
                        "INSERT INTO agent_budgets (shop_id, template_id, agent_id, day, issued) VALUES ($1, $2, $3, $4, 1)
                         ON CONFLICT (shop_id, template_id, agent_id, day) DO UPDATE
                         SET issued = agent_budgets.issued + 1 WHERE agent_budgets.issued < $5",
                        vec![
                            shop_id.into(),
                            template.id.clone().into(),
                            agent.into(),
                            day.into(),
                            template.agent_daily_budget.into(),
                        ],
                    )
                    .await?
                    == 1;
            if !counted {
                undo_coupon().await?;
                undo_holding().await?;
                return Err(CouponError::AgentBudgetSpent {
                    agent: agent.to_owned(),
                    budget: template.agent_daily_budget,
                });
            }
        }
        // The stock last: its row is the one other issuers wait on, so it
        // is locked for as short a time as the transaction allows.
        let seed = u32::from_le_bytes([
            code.as_bytes()[0],
            code.as_bytes()[1],
            code.as_bytes()[2],
            code.as_bytes()[3],
        ]);
        if !self.take_stock(tx, shop_id, &template.id, seed).await? {
            undo_coupon().await?;
            undo_holding().await?;
            if let Some(agent) = spec.agent {
                tx.execute(
                    "UPDATE agent_budgets SET issued = issued - 1
                     WHERE shop_id = $1 AND template_id = $2 AND agent_id = $3 AND day = $4",
                    vec![
                        shop_id.into(),
                        template.id.clone().into(),
                        agent.into(),
                        day.into(),
                    ],
                )
                .await?;
            }
            return Err(CouponError::OutOfStock);
        }
        let coupon = CouponRow {
            code,
            template_id: template.id.clone(),
            customer_id: customer_id.to_owned(),
            state: State::Active.as_i32(),
            valid_from: from,
            valid_until: until,
            issue_reason: spec.reason.to_owned(),
            issued_at: now,
            order_no: String::new(),
            hold_until: None,
            discount_fen: 0,
            order_total_fen: 0,
            redeemed_at: None,
            redeemed_by: String::new(),
            version: 0,
        };
        // A coupon just given is likely checked at the next checkout.
        self.remember_after_commit(tx, shop_id, &coupon);
        outbox::append(
            tx,
            event(
                shop_id,
                Payload::CouponIssued(CouponIssued {
                    customer_id: customer_id.to_owned(),
                    code: coupon.code.clone(),
                    template_id: template.id.clone(),
                    template_name: template.name.clone(),
                    valid_until_time: Some(timestamp_from_micros(until)),
                    issue_reason: spec.reason.to_owned(),
                }),
            ),
        )
        .await?;
        Ok(Issued { coupon, new: true })
    }

    /// Counts one more coupon of a template for a customer unless they
    /// have `limit` already; false when they have.
    async fn count_holding(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        template_id: &str,
        customer_id: &str,
        limit: i64,
    ) -> Result<bool, CouponError> {
        Ok(tx
            .execute(
                "INSERT INTO coupon_holdings (shop_id, template_id, customer_id, received) VALUES ($1, $2, $3, 1)
                 ON CONFLICT (shop_id, template_id, customer_id) DO UPDATE
                 SET received = coupon_holdings.received + 1 WHERE coupon_holdings.received < $4",
                vec![
                    shop_id.into(),
                    template_id.into(),
                    customer_id.into(),
                    limit.into(),
                ],
            )
            .await?
            == 1)
    }

    async fn uncount_holding(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        template_id: &str,
        customer_id: &str,
    ) -> Result<(), CouponError> {
        tx.execute(
            "UPDATE coupon_holdings SET received = received - 1
             WHERE shop_id = $1 AND template_id = $2 AND customer_id = $3 AND received > 0",
            vec![shop_id.into(), template_id.into(), customer_id.into()],
        )
        .await?;
        Ok(())
    }

    /// Whether `customer_id` already has as many coupons of `template` as
    /// its limit allows (for a friend about to use a shared coupon).
    pub async fn at_limit(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        template: &Template,
        customer_id: &str,
    ) -> Result<bool, CouponError> {
        if template.per_customer_limit == 0 {
            return Ok(false);
        }
        let rows = read_on(
            conn,
            &self.db,
            "SELECT received FROM coupon_holdings WHERE shop_id = $1 AND template_id = $2 AND customer_id = $3",
            vec![shop_id.into(), template.id.clone().into(), customer_id.into()],
        )
        .await?;
        let received: i64 = match rows.first() {
            Some(r) => r.try_get("", "received")?,
            None => 0,
        };
        Ok(received >= template.per_customer_limit)
    }

    /// Holds or redeems `coupon` for `attempt.order_no`. The update only
    /// matches the coupon as it was read, so of two racing orders one wins
    /// and the other is refused; a retry by the winning order gets the
    /// first answer.
    pub async fn claim(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        template: &Template,
        attempt: &Attempt<'_>,
        claim: Claim,
    ) -> Result<Claimed, CouponError> {
        let code = attempt.code;
        let coupon = self
            .find_coupon(&**tx, shop_id, code)
            .await?
            .ok_or(CouponError::CouponNotFound)?;
        let own = coupon.order_no == attempt.order_no;
        if own && coupon.state() == State::Redeemed {
            // A retry of this order's redemption (or a hold asked after it).
            return Ok(Claimed {
                discount_fen: coupon.discount_fen,
                coupon,
            });
        }
        let friend = coupon.customer_id != attempt.customer_id;
        let at_limit = friend
            && self
                .at_limit(&**tx, shop_id, template, attempt.customer_id)
                .await?;
        let discount = match checkout::evaluate(
            &template.terms,
            &coupon.standing(),
            &Attempt {
                friend_at_limit: at_limit,
                ..*attempt
            },
        ) {
            Ok(discount) => discount,
            Err(refusal) => {
                // The row read here is committed: it corrects a checkout
                // cache entry that missed a change made through another
                // replica, so validation stops offering what was refused.
                self.remember_coupon(shop_id, &coupon).await;
                return Err(CouponError::Refused(refusal));
            }
        };
        let spec = match claim {
            Claim::Hold(until) => After {
                state: State::Held,
                order_no: attempt.order_no,
                hold_until: Some(until),
                discount_fen: 0,
                order_total_fen: 0,
                redeemed_at: None,
                redeemed_by: "",
            },
            Claim::Redeem(total) => After {
                state: State::Redeemed,
                order_no: attempt.order_no,
                hold_until: None,
                discount_fen: discount,
                order_total_fen: total,
                redeemed_at: Some(attempt.now),
                redeemed_by: if friend { attempt.customer_id } else { "" },
            },
        };
        let (sql, values) = claim_update(shop_id, &coupon, &spec);
        if tx.execute(sql, values).await? == 0 {
            // The coupon changed between the read and the update (another
            // order got there, or a release): the write runs again and
            // decides on what that change left.
            return Err(huitou_storage::StorageError::Retry(
                "coupon changed under the claim".into(),
            )
            .into());
        }
        if friend
            && matches!(claim, Claim::Redeem(_))
            && template.per_customer_limit > 0
            && !self
                .count_holding(
                    tx,
                    shop_id,
                    &template.id,
                    attempt.customer_id,
                    template.per_customer_limit,
                )
                .await?
        {
            return Err(CouponError::Refused(Refusal::LimitReached));
        }
        let after = spec.applied_to(&coupon);
        self.remember_after_commit(tx, shop_id, &after);
        if let Claim::Redeem(total) = claim {
            outbox::append(
                tx,
                redeemed_event(
                    shop_id,
                    template,
                    &after,
                    attempt.customer_id,
                    discount,
                    total,
                ),
            )
            .await?;
            tx.after_commit(Box::pin(async move {
                huitou_runtime::metrics::record_redemption(discount)
            }));
        }
        Ok(Claimed {
            coupon: after,
            discount_fen: discount,
        })
    }

    /// Redeems `coupon` (as read a moment ago, by its holder) in one
    /// statement with its event, when it is still exactly as read: the
    /// common checkout, two round trips on PostgreSQL in all. `None` when
    /// it is not (raced, refused on the read, or used by a friend): the
    /// caller then takes the transactional path, which decides afresh.
    pub async fn redeem_at_once(
        &self,
        shop_id: &str,
        template: &Template,
        coupon: &CouponRow,
        attempt: &Attempt<'_>,
        total: i64,
    ) -> Result<Option<Claimed>, CouponError> {
        if coupon.customer_id != attempt.customer_id || coupon.state() == State::Redeemed {
            return Ok(None);
        }
        let Ok(discount) = checkout::evaluate(&template.terms, &coupon.standing(), attempt) else {
            return Ok(None);
        };
        let after = After {
            state: State::Redeemed,
            order_no: attempt.order_no,
            hold_until: None,
            discount_fen: discount,
            order_total_fen: total,
            redeemed_at: Some(attempt.now),
            redeemed_by: "",
        };
        let row = after.applied_to(coupon);
        let mut event = redeemed_event(
            shop_id,
            template,
            &row,
            attempt.customer_id,
            discount,
            total,
        );
        // The intake's writer runs in its own task: the event carries the
        // caller's trace from here.
        (event.traceparent, event.tracestate) = huitou_runtime::telemetry::current_trace_headers();
        let redemption = super::redemptions::Redemption {
            shop_id: shop_id.to_owned(),
            code: coupon.code.clone(),
            version: coupon.version,
            order_no: attempt.order_no.to_owned(),
            discount_fen: discount,
            order_total_fen: total,
            redeemed_at: attempt.now,
            event,
        };
        if !self.redemptions().redeem(redemption).await? {
            return Ok(None);
        }
        self.outbox.notify();
        self.remember_coupon(shop_id, &row).await;
        huitou_runtime::metrics::record_redemption(discount);
        Ok(Some(Claimed {
            coupon: row,
            discount_fen: discount,
        }))
    }

    /// Gives back a coupon held or used by `order_no`: usable again when
    /// still in its window, else expired. Giving back twice changes nothing
    /// the second time.
    pub async fn release(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        code: &str,
        order_no: &str,
        reason: &str,
        now: i64,
    ) -> Result<CouponRow, CouponError> {
        let coupon = self
            .find_coupon(&**tx, shop_id, code)
            .await?
            .ok_or(CouponError::CouponNotFound)?;
        let state = coupon.state();
        if !matches!(state, State::Held | State::Redeemed) || coupon.order_no != order_no {
            if coupon.order_no.is_empty() || !matches!(state, State::Held | State::Redeemed) {
                // Already given back (or never used): nothing to do.
                return Ok(coupon);
            }
            return Err(CouponError::NotThisOrder(order_no.to_owned()));
        }
        let back = if now < coupon.valid_until {
            State::Active
        } else {
            State::Expired
        };
        if tx
            .execute(
                "UPDATE coupons SET state = $3, order_no = '', hold_until = NULL, discount_fen = 0,
                     order_total_fen = 0, redeemed_at = NULL, redeemed_by = '', version = version + 1
                 WHERE shop_id = $1 AND code = $2 AND version = $4",
                vec![
                    shop_id.into(),
                    code.into(),
                    back.as_i32().into(),
                    coupon.version.into(),
                ],
            )
            .await?
            == 0
        {
            return Err(
                huitou_storage::StorageError::Retry("coupon changed under the release".into())
                    .into(),
            );
        }
        if state == State::Redeemed {
            if !coupon.redeemed_by.is_empty() {
                self.uncount_holding(tx, shop_id, &coupon.template_id, &coupon.redeemed_by)
                    .await?;
            }
            outbox::append(
                tx,
                event(
                    shop_id,
                    Payload::CouponReleased(CouponReleased {
                        customer_id: coupon.customer_id.clone(),
                        code: code.to_owned(),
                        template_id: coupon.template_id.clone(),
                        order_no: order_no.to_owned(),
                        usable_again: back == State::Active,
                        reason: reason.to_owned(),
                    }),
                ),
            )
            .await?;
        }
        let back = CouponRow {
            state: back.as_i32(),
            order_no: String::new(),
            hold_until: None,
            discount_fen: 0,
            order_total_fen: 0,
            redeemed_at: None,
            redeemed_by: String::new(),
            version: coupon.version + 1,
            ..coupon
        };
        self.remember_after_commit(tx, shop_id, &back);
        Ok(back)
    }

    /// Gives back every coupon `codes` names that `order_no` holds or
    /// used, when the order is closed or fully refunded.
    pub async fn release_for_order(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        codes: &[String],
        order_no: &str,
        reason: &str,
        now: i64,
    ) -> Result<(), CouponError> {
        for typed in codes {
            let Ok(code) = code::parse(typed) else {
                continue;
            };
            match self
                .release(tx, shop_id, &code, order_no, reason, now)
                .await
            {
                Ok(_) | Err(CouponError::CouponNotFound) | Err(CouponError::NotThisOrder(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A claim's update: the new state, matching only the coupon as it was
/// read (its version), so one of two racing writers wins.
const CLAIM_SQL: &str =
    "UPDATE coupons SET state = $3, order_no = $4, hold_until = $5, discount_fen = $6,
         order_total_fen = $7, redeemed_at = $8, redeemed_by = $9, version = version + 1
     WHERE shop_id = $1 AND code = $2 AND version = $10";

/// What a claim writes.
struct After<'a> {
    state: State,
    order_no: &'a str,
    hold_until: Option<i64>,
    discount_fen: i64,
    order_total_fen: i64,
    redeemed_at: Option<i64>,
    redeemed_by: &'a str,
}

impl After<'_> {
    fn applied_to(&self, coupon: &CouponRow) -> CouponRow {
        CouponRow {
            state: self.state.as_i32(),
            order_no: self.order_no.to_owned(),
            hold_until: self.hold_until,
            discount_fen: self.discount_fen,
            order_total_fen: self.order_total_fen,
            redeemed_at: self.redeemed_at,
            redeemed_by: self.redeemed_by.to_owned(),
            version: coupon.version + 1,
            ..coupon.clone()
        }
    }
}

fn claim_update(
    shop_id: &str,
    coupon: &CouponRow,
    after: &After<'_>,
) -> (&'static str, Vec<sea_orm::Value>) {
    (
        CLAIM_SQL,
        vec![
            shop_id.into(),
            coupon.code.clone().into(),
            after.state.as_i32().into(),
            after.order_no.into(),
            after.hold_until.into(),
            after.discount_fen.into(),
            after.order_total_fen.into(),
            after.redeemed_at.into(),
            after.redeemed_by.into(),
            coupon.version.into(),
        ],
    )
}

/// The event of a redemption; `user` is who redeemed it.
fn redeemed_event(
    shop_id: &str,
    template: &Template,
    coupon: &CouponRow,
    user: &str,
    discount: i64,
    total: i64,
) -> huitou_proto::events::v1::EventEnvelope {
    let friend = coupon.customer_id != user;
    event(
        shop_id,
        Payload::CouponRedeemed(CouponRedeemed {
            customer_id: user.to_owned(),
            code: coupon.code.clone(),
            template_id: template.id.clone(),
            order_no: coupon.order_no.clone(),
            discount_fen: discount,
            order_total_fen: total,
            shared_by_customer_id: if friend {
                coupon.customer_id.clone()
            } else {
                String::new()
            },
        }),
    )
}
