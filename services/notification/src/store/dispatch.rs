//! Taking due messages to send and recording how sending went. The rules
//! that can stop a message (window, template paused, consent, opt-out,
//! complaint, caps, duplicates) are decided again at this moment, in the
//! transaction that marks the message SENDING, with the customer's row
//! locked: an opt-out recorded a moment ago stops the next send, and two
//! workers cannot both pass a cap for one customer.

use std::collections::HashMap;

use huitou_storage::{WriteTx, now_micros};
use sea_orm::FromQueryResult;

use super::messages::{COLUMNS, MessageRow, describe_time, status};
use super::{ShopSettings, Store};
use crate::domain::rules::{
    DAY_MICROS, Suppression, admit, fits_caps, is_duplicate, retry_delay_micros,
};
use crate::error::NotificationError;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A provider took it.
    Sent {
        /// The provider's name.
        provider: String,
        /// The provider's id for it.
        provider_message_id: String,
        /// Whether the channel's fallback provider sent it.
        fallback: bool,
    },
    /// It did not go. `permanent` failures are not retried.
    Failed {
        /// What the provider or the network said.
        detail: String,
        /// Retrying cannot help (a refused number, a bad template).
        permanent: bool,
    },
    /// The customer has no address on the channel.
    NoAddress,
}

enum Step {
    Send(String),
    Defer(i64, String),
    Suppress(Suppression),
    Fail(String, String),
}

impl Store {
    /// Takes up to `limit` due messages and marks those that may leave
    /// SENDING for `lease_micros`; the others are deferred, suppressed or
    /// dead-lettered on the way. The messages to send now, attempts counted.
    pub async fn claim_due(
        &self,
        now: i64,
        limit: usize,
        lease_micros: i64,
    ) -> Result<Vec<MessageRow>, NotificationError> {
        self.transaction(move |tx, store| {
            Box::pin(async move { store.claim_in(tx, now, limit, lease_micros).await })
        })
        .await
    }

    async fn claim_in(
        &self,
        tx: &WriteTx,
        now: i64,
        limit: usize,
        lease_micros: i64,
    ) -> Result<Vec<MessageRow>, NotificationError> {
        let skip = if self.db.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let rows = tx
            .query_all(
                &format!(
                    "SELECT {COLUMNS} FROM messages WHERE status IN (1, 2, 4, 8) AND due_at <= $1
                     ORDER BY due_at LIMIT $2{skip}"
                ),
                vec![now.into(), (limit as i64).into()],
            )
            .await?;
        let mut active: HashMap<(String, String), bool> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut row = MessageRow::from_query_result(r, "")?;
            let settings = self.shop_settings(&row.shop_id).await?;
            let key = (row.shop_id.clone(), row.template_id.clone());
            let template_active = match active.get(&key) {
                Some(a) => *a,
                None => {
                    let a = match self
                        .load_template(&**tx, &row.shop_id, &row.template_id)
                        .await
                    {
                        Ok(t) => t.active,
                        Err(NotificationError::TemplateNotFound) => false,
                        Err(e) => return Err(e),
                    };
                    active.insert(key, a);
                    a
                }
            };
            let step = self
                .decide(tx, &settings, &row, template_active, now)
                .await?;
            let (new_status, due_at, reason, detail) = match step {
                Step::Send(detail) => (status::SENDING, now + lease_micros, String::new(), detail),
                Step::Defer(at, detail) => (status::DEFERRED, at, String::new(), detail),
                Step::Suppress(why) => (
                    status::SUPPRESSED,
                    now,
                    why.code().to_owned(),
                    why.describe(),
                ),
                Step::Fail(reason, detail) => (status::FAILED, now, reason, detail),
            };
            let attempts = row.attempts + i32::from(new_status == status::SENDING);
            tx.execute(
                "UPDATE messages SET status = $3, due_at = $4, status_reason = $5, attempts = $6, updated_at = $7
                 WHERE shop_id = $1 AND id = $2",
                vec![
                    row.shop_id.clone().into(),
                    row.id.clone().into(),
                    new_status.into(),
                    due_at.into(),
                    reason.clone().into(),
                    attempts.into(),
                    now.into(),
                ],
            )
            .await?;
            match new_status {
                status::SENDING => {
                    tx.execute(
                        "INSERT INTO sent_log (shop_id, customer_id, channel, message_id, template_id, marketing, sent_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (shop_id, customer_id, channel, message_id) DO NOTHING",
                        vec![
                            row.shop_id.clone().into(),
                            row.customer_id.clone().into(),
                            row.channel.into(),
                            row.id.clone().into(),
                            row.template_id.clone().into(),
                            i32::from(row.is_marketing()).into(),
                            now.into(),
                        ],
                    )
                    .await?;
                }
                status::FAILED => self.give_back_slot(tx, &row).await?,
                _ => {}
            }
            // A message waiting for a window is looked at again when the
            // window opens; only a new place in time is worth a history line.
            if !(row.status == status::DEFERRED
                && new_status == status::DEFERRED
                && row.due_at == due_at)
            {
                self.record_history(
                    tx,
                    &row.shop_id,
                    &[(row.id.as_str(), new_status, detail.as_str())],
                    now,
                )
                .await?;
            }
            if new_status == status::SENDING {
                row.status = new_status;
                row.attempts = attempts;
                row.due_at = due_at;
                out.push(row);
            }
        }
        Ok(out)
    }

    async fn decide(
        &self,
        tx: &WriteTx,
        settings: &ShopSettings,
        row: &MessageRow,
        template_active: bool,
        now: i64,
    ) -> Result<Step, NotificationError> {
        let max = settings.policy.max_attempts;
        if row.status == status::SENDING {
            // The last sender stopped without recording an answer. The
            // provider gets the same idempotency key, so a gateway that took
            // the first attempt drops this one.
            if row.attempts >= max {
                return Ok(Step::Fail(
                    "DEAD_LETTER: no answer recorded".into(),
                    format!(
                        "failed: dead-lettered after {} attempts without an answer",
                        row.attempts
                    ),
                ));
            }
            return Ok(Step::Send(format!(
                "sending again (attempt {}): the last attempt ended without an answer",
                row.attempts + 1
            )));
        }
        if !template_active {
            return Ok(Step::Suppress(Suppression::TemplatePaused));
        }
        let marketing = row.is_marketing();
        // Only urgent transactional messages skip the windows.
        if row.urgent == 0 || marketing {
            let aim = marketing && settings.policy.aim_last_hour;
            match settings.calendar.next_open(now, aim) {
                Some(at) if at == now => {}
                Some(at) => {
                    return Ok(Step::Defer(
                        at,
                        format!(
                            "deferred to the next send window, {}",
                            describe_time(settings, at)
                        ),
                    ));
                }
                None => {
                    return Ok(Step::Defer(
                        now + DAY_MICROS,
                        "deferred: no send window opens within a year; change the policy".into(),
                    ));
                }
            }
        }
        let standing = self
            .standing(&**tx, &row.shop_id, &row.customer_id, row.channel, true)
            .await?;
        if let Err(why) = admit(standing, marketing) {
            return Ok(Step::Suppress(why));
        }
        if marketing {
            let policy = &settings.policy;
            let longest = policy
                .caps
                .iter()
                .map(|c| c.days)
                .chain([policy.duplicate_days])
                .max()
                .unwrap_or(0);
            let since = now - i64::from(longest) * DAY_MICROS;
            let sent = tx
                .query_all(
                    "SELECT template_id, sent_at FROM sent_log
                     WHERE shop_id = $1 AND customer_id = $2 AND channel = $3 AND marketing = 1
                       AND sent_at > $4 AND message_id <> $5",
                    vec![
                        row.shop_id.clone().into(),
                        row.customer_id.clone().into(),
                        row.channel.into(),
                        since.into(),
                        row.id.clone().into(),
                    ],
                )
                .await?;
            let mut times = Vec::with_capacity(sent.len());
            let mut last_same: Option<i64> = None;
            for s in &sent {
                let at: i64 = s.try_get("", "sent_at")?;
                let template: String = s.try_get("", "template_id")?;
                if template == row.template_id {
                    last_same = Some(last_same.map_or(at, |l| l.max(at)));
                }
                times.push(at);
            }
            if is_duplicate(last_same, policy.duplicate_days, now) {
                return Ok(Step::Suppress(Suppression::Duplicate));
            }
            if let Err(why) = fits_caps(&policy.caps, &times, now) {
                return Ok(Step::Suppress(why));
            }
        }
        Ok(Step::Send(format!(
            "sending (attempt {})",
            row.attempts + 1
        )))
    }

    /// A message that finally did not go no longer counts against caps.
    async fn give_back_slot(
        &self,
        tx: &WriteTx,
        row: &MessageRow,
    ) -> Result<(), NotificationError> {
        tx.execute(
            "DELETE FROM sent_log WHERE shop_id = $1 AND customer_id = $2 AND channel = $3 AND message_id = $4",
            vec![
                row.shop_id.clone().into(),
                row.customer_id.clone().into(),
                row.channel.into(),
                row.id.clone().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Records how the attempts of claimed messages ended. An answer for a
    /// message another worker has since taken over is dropped: that worker
    /// records its own.
    pub async fn record_outcomes(
        &self,
        done: Vec<(MessageRow, Outcome)>,
        jitter: impl Fn() -> f64 + Send + Sync,
    ) -> Result<(), NotificationError> {
        if done.is_empty() {
            return Ok(());
        }
        let jitters: Vec<f64> = done.iter().map(|_| jitter()).collect();
        let done = std::sync::Arc::new(done);
        let jitters = std::sync::Arc::new(jitters);
        self.transaction(move |tx, store| {
            let (done, jitters) = (done.clone(), jitters.clone());
            Box::pin(async move {
                let now = now_micros();
                for ((row, outcome), jitter) in done.iter().zip(jitters.iter()) {
                    store.record_outcome(tx, row, outcome, *jitter, now).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn record_outcome(
        &self,
        tx: &WriteTx,
        row: &MessageRow,
        outcome: &Outcome,
        jitter: f64,
        now: i64,
    ) -> Result<(), NotificationError> {
        let settings = self.shop_settings(&row.shop_id).await?;
        let max = settings.policy.max_attempts;
        let (new_status, due_at, reason, provider, provider_id, detail, give_back) = match outcome {
            Outcome::Sent {
                provider,
                provider_message_id,
                fallback,
            } => (
                status::SENT,
                now,
                String::new(),
                provider.clone(),
                provider_message_id.clone(),
                format!(
                    "sent by {provider}{} (provider id {provider_message_id})",
                    if *fallback {
                        ", the channel's fallback"
                    } else {
                        ""
                    }
                ),
                false,
            ),
            Outcome::NoAddress => {
                let why = Suppression::NoAddress;
                (
                    status::SUPPRESSED,
                    now,
                    why.code().to_owned(),
                    String::new(),
                    String::new(),
                    why.describe(),
                    true,
                )
            }
            Outcome::Failed { detail, permanent } if *permanent => (
                status::FAILED,
                now,
                format!("REJECTED: {detail}"),
                String::new(),
                String::new(),
                format!("failed: the provider refused it ({detail})"),
                true,
            ),
            Outcome::Failed { detail, .. } if row.attempts >= max => (
                status::FAILED,
                now,
                format!("DEAD_LETTER: {detail}"),
                String::new(),
                String::new(),
                format!(
                    "failed: dead-lettered after {} attempts ({detail})",
                    row.attempts
                ),
                true,
            ),
            Outcome::Failed { detail, .. } => {
                let at = now + retry_delay_micros(row.attempts + 1, jitter);
                (
                    status::RETRYING,
                    at,
                    detail.clone(),
                    String::new(),
                    String::new(),
                    format!(
                        "attempt {} failed ({detail}); retrying at {}",
                        row.attempts,
                        describe_time(&settings, at)
                    ),
                    false,
                )
            }
        };
        let changed = tx
            .execute(
                "UPDATE messages SET status = $3, due_at = $4, status_reason = $5, provider = $6,
                     provider_message_id = $7, updated_at = $8
                 WHERE shop_id = $1 AND id = $2 AND status = 4 AND attempts = $9",
                vec![
                    row.shop_id.clone().into(),
                    row.id.clone().into(),
                    new_status.into(),
                    due_at.into(),
                    reason.into(),
                    provider.into(),
                    provider_id.into(),
                    now.into(),
                    row.attempts.into(),
                ],
            )
            .await?;
        if changed == 0 {
            return Ok(());
        }
        if give_back {
            self.give_back_slot(tx, row).await?;
        }
        self.record_history(
            tx,
            &row.shop_id,
            &[(row.id.as_str(), new_status, detail.as_str())],
            now,
        )
        .await
    }
}
