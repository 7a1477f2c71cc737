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
}

impl Store {
    /// Expires what closed by `now` and reminds of what closes within
    /// `remind_days`.
    pub async fn sweep(&self, now: i64, remind_days: i32) -> Result<SweepReport, CouponError> {
        let mut report = SweepReport::default();
        loop {
            let n = self.sweep_batch(now, None).await?;
            report.expired += n;
            if n < BATCH as u64 {
                break;
            }
        }
        if remind_days > 0 {
            loop {
                let n = self.sweep_batch(now, Some(remind_days)).await?;
                report.reminded += n;
                if n < BATCH as u64 {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// One batch: expiries when `remind_days` is `None`, else reminders.
    async fn sweep_batch(&self, now: i64, remind_days: Option<i32>) -> Result<u64, CouponError> {
        let skip_locked = if self.db.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let (filter, values): (&str, Vec<sea_orm::Value>) = match remind_days {
            None => ("state IN (1, 2) AND valid_until <= $1", vec![now.into()]),
            Some(days) => (
                "state = 1 AND reminded = 0 AND valid_from <= $1 AND valid_until > $1 AND valid_until <= $2",
                vec![now.into(), (now + i64::from(days) * DAY_MICROS).into()],
            ),
        };
        let sql = format!(
            "SELECT shop_id, code, customer_id, template_id, valid_until FROM coupons
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
                for d in &due {
                    let payload = match remind_days {
                        None => {
                            tx.execute(
                                "UPDATE coupons SET state = $3, hold_until = NULL, order_no = ''
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
                outbox::append_many(tx, events).await?;
                Ok(due.len() as u64)
            })
        })
        .await
    }
}
