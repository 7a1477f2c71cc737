//! The expiry sweeper: coupons whose window closed become expired, and
//! coupons about to close get one "expires soon" event, in batches that
//! several replicas can run at once.

use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::events::v1::{CouponExpired, CouponExpiringSoon};
use huitou_proto::timestamp_from_micros;
use huitou_storage::outbox;
use sea_orm::FromQueryResult;

use super::{Store, event};
use crate::domain::checkout::State;
use crate::domain::rules::DAY_MICROS;
use crate::error::CouponError;

/// Coupons changed per transaction.
const BATCH: usize = 1000;

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Coupons expired.
    pub expired: u64,
    /// "Expires soon" events sent.
    pub reminded: u64,
}

#[derive(FromQueryResult)]
struct Due {
    shop_id: String,
    code: String,
    customer_id: String,
    template_id: String,
    valid_until: i64,
    state: i32,
}

/// What one batch did.
struct Batch {
    /// Coupons looked at (a full batch means there may be more).
    seen: usize,
    /// Coupons expired or reminded.
    changed: u64,
}

impl Store {
    /// Expires what closed by `now` and reminds of what closes within
    /// `remind_days`.
    pub async fn sweep(&self, now: i64, remind_days: i32) -> Result<SweepReport, CouponError> {
        let mut report = SweepReport::default();
        loop {
            let b = self.sweep_batch(now, None).await?;
            report.expired += b.changed;
            if b.seen < BATCH {
                break;
            }
        }
        if remind_days > 0 {
            loop {
                let b = self.sweep_batch(now, Some(remind_days)).await?;
                report.reminded += b.changed;
                if b.seen < BATCH {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// One batch: expiries when `remind_days` is `None`, else reminders.
    ///
    /// Expiry looks at every coupon whose window closed and is not yet
    /// `swept`: one still open (active or held) expires; one already used
    /// or expired is only marked swept. The index it walks covers unswept
    /// coupons alone, and no redemption changes a column it covers, so
    /// redemptions stay HOT updates (decision 0015).
    async fn sweep_batch(&self, now: i64, remind_days: Option<i32>) -> Result<Batch, CouponError> {
        let skip_locked = if self.db.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let (filter, values): (&str, Vec<sea_orm::Value>) = match remind_days {
            None => ("swept = 0 AND valid_until <= $1", vec![now.into()]),
            Some(days) => (
                "swept = 0 AND state = 1 AND reminded = 0 AND valid_from <= $1 AND valid_until > $1 AND valid_until <= $2",
                vec![now.into(), (now + i64::from(days) * DAY_MICROS).into()],
            ),
        };
        let sql = format!(
            "SELECT shop_id, code, customer_id, template_id, valid_until, state FROM coupons
             WHERE {filter} LIMIT {BATCH}{skip_locked}"
        );
        self.transaction(move |tx, store| {
            let (sql, values) = (sql.clone(), values.clone());
            Box::pin(async move {
                let rows = tx.query_all(&sql, values).await?;
                let due = rows
                    .iter()
                    .map(|r| Due::from_query_result(r, ""))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut events = Vec::with_capacity(due.len());
                let mut expired = Vec::new();
                for d in &due {
                    let open =
                        matches!(State::from_i32(d.state), Some(State::Active | State::Held));
                    if remind_days.is_none() && !open {
                        tx.execute(
                            "UPDATE coupons SET swept = 1 WHERE shop_id = $1 AND code = $2",
                            vec![d.shop_id.clone().into(), d.code.clone().into()],
                        )
                        .await?;
                        continue;
                    }
                    let payload = match remind_days {
                        None => {
                            expired.push((d.shop_id.clone(), d.code.clone()));
                            tx.execute(
                                "UPDATE coupons SET state = $3, hold_until = NULL, order_no = '',
                                     swept = 1, version = version + 1
                                 WHERE shop_id = $1 AND code = $2",
                                vec![
                                    d.shop_id.clone().into(),
                                    d.code.clone().into(),
                                    State::Expired.as_i32().into(),
                                ],
                            )
                            .await?;
                            Payload::CouponExpired(CouponExpired {
                                customer_id: d.customer_id.clone(),
                                code: d.code.clone(),
                                template_id: d.template_id.clone(),
                            })
                        }
                        Some(_) => {
                            tx.execute(
                                "UPDATE coupons SET reminded = 1 WHERE shop_id = $1 AND code = $2",
                                vec![d.shop_id.clone().into(), d.code.clone().into()],
                            )
                            .await?;
                            let name = match store.template(&d.shop_id, &d.template_id).await {
                                Ok(t) => t.name.clone(),
                                Err(_) => String::new(),
                            };
                            Payload::CouponExpiringSoon(CouponExpiringSoon {
                                customer_id: d.customer_id.clone(),
                                code: d.code.clone(),
                                template_id: d.template_id.clone(),
                                template_name: name,
                                valid_until_time: Some(timestamp_from_micros(d.valid_until)),
                            })
                        }
                    };
                    events.push(event(&d.shop_id, payload));
                }
                let changed = events.len() as u64;
                outbox::append_many(tx, events).await?;
                if !expired.is_empty() {
                    let store = store.clone();
                    tx.after_commit(Box::pin(async move {
                        store.forget_coupons(&expired).await;
                    }));
                }
                Ok(Batch {
                    seen: due.len(),
                    changed,
                })
            })
        })
        .await
    }
}
