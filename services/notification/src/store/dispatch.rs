//! Taking due messages to send and recording how sending went. The rules
//! that can stop a message (window, template paused, consent, opt-out,
//! complaint, caps, duplicates) are decided again at this moment, in the
//! transaction that marks the message SENDING, with the customer's row
//! locked: an opt-out recorded a moment ago stops the next send, and two
//! workers cannot both pass a cap for one customer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use huitou_storage::bulk::Col;
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
    /// Not attempted: the shop's per-second limit on the channel's provider
    /// was reached. The message waits until `until` (µs) and is decided
    /// again then; no attempt is counted.
    Throttled {
        /// When to look at it again.
        until: i64,
        /// The limit, per second.
        limit: u32,
    },
}

/// A message that left earlier: its id, template and time.
type SentBefore = (String, String, i64);

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
        let found = tx
            .query_all(
                &format!(
                    "SELECT {COLUMNS} FROM messages WHERE status IN (1, 2, 4, 8) AND due_at <= $1
                     ORDER BY due_at LIMIT $2{skip}"
                ),
                vec![now.into(), (limit as i64).into()],
            )
            .await?;
        let mut rows = Vec::with_capacity(found.len());
        for r in &found {
            rows.push(MessageRow::from_query_result(r, "")?);
        }
        // First what needs no customer: takeovers, paused templates, windows.
        let mut settings: HashMap<String, Arc<ShopSettings>> = HashMap::new();
        let mut active: HashMap<(String, String), bool> = HashMap::new();
        let mut steps: Vec<Option<Step>> = Vec::with_capacity(rows.len());
        for row in &rows {
            if !settings.contains_key(&row.shop_id) {
                settings.insert(
                    row.shop_id.clone(),
                    self.fresh_shop_settings(&row.shop_id).await?,
                );
            }
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
            let s = settings
                .get(&row.shop_id)
                .cloned()
                .ok_or(NotificationError::MessageNotFound)?;
            steps.push(before_customer(&s, row, template_active, now));
        }
        // Then, shop by shop, the customers' rows (locked) and what they
        // were sent lately, read once for the whole batch.
        let mut by_shop: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, row) in rows.iter().enumerate() {
            if steps[i].is_none() {
                by_shop.entry(row.shop_id.clone()).or_default().push(i);
            }
        }
        for (shop, indexes) in by_shop {
            let s = settings
                .get(&shop)
                .cloned()
                .ok_or(NotificationError::MessageNotFound)?;
            let mut customers: Vec<String> = indexes
                .iter()
                .map(|i| rows[*i].customer_id.clone())
                .collect();
            customers.sort();
            customers.dedup();
            let recipients = self.lock_recipients(tx, &shop, &customers).await?;
            let policy = &s.policy;
            let longest = policy
                .caps
                .iter()
                .map(|c| c.days)
                .chain([policy.duplicate_days])
                .max()
                .unwrap_or(0);
            let since = now - i64::from(longest) * DAY_MICROS;
            let mut sent: HashMap<(String, i32), Vec<SentBefore>> = HashMap::new();
            let mut marketing_customers: Vec<String> = indexes
                .iter()
                .filter(|i| rows[**i].is_marketing())
                .map(|i| rows[*i].customer_id.clone())
                .collect();
            marketing_customers.sort();
            marketing_customers.dedup();
            if !marketing_customers.is_empty() {
                let found = self
                    .recent_sends(tx, &shop, since, &marketing_customers)
                    .await?;
                for r in &found {
                    sent.entry((r.try_get("", "customer_id")?, r.try_get("", "channel")?))
                        .or_default()
                        .push((
                            r.try_get("", "message_id")?,
                            r.try_get("", "template_id")?,
                            r.try_get("", "sent_at")?,
                        ));
                }
            }
            for i in indexes {
                let row = &rows[i];
                let standing = recipients
                    .get(&row.customer_id)
                    .map(|r| r.standing(row.channel))
                    .unwrap_or_default();
                let marketing = row.is_marketing();
                let step = if let Err(why) = admit(standing, marketing) {
                    Step::Suppress(why)
                } else if marketing {
                    let log = sent
                        .entry((row.customer_id.clone(), row.channel))
                        .or_default();
                    let last_same = log
                        .iter()
                        .filter(|(id, t, _)| *id != row.id && *t == row.template_id)
                        .map(|(_, _, at)| *at)
                        .max();
                    let times: Vec<i64> = log
                        .iter()
                        .filter(|(id, _, _)| *id != row.id)
                        .map(|(_, _, at)| *at)
                        .collect();
                    if is_duplicate(last_same, policy.duplicate_days, now) {
                        Step::Suppress(Suppression::Duplicate)
                    } else if let Err(why) = fits_caps(&policy.caps, &times, now) {
                        Step::Suppress(why)
                    } else {
                        // Later messages of this batch count this one.
                        log.push((row.id.clone(), row.template_id.clone(), now));
                        Step::Send(format!("sending (attempt {})", row.attempts + 1))
                    }
                } else {
                    Step::Send(format!("sending (attempt {})", row.attempts + 1))
                };
                steps[i] = Some(step);
            }
        }
        // Every decision written in a few statements.
        let mut updates = Vec::with_capacity(rows.len());
        let mut sending = Vec::new();
        let mut history: Vec<(String, String, i32, String)> = Vec::with_capacity(rows.len());
        let mut out = Vec::new();
        for (mut row, step) in rows.into_iter().zip(steps) {
            let Some(step) = step else { continue };
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
            updates.push(vec![
                row.shop_id.clone().into(),
                row.id.clone().into(),
                new_status.into(),
                due_at.into(),
                reason.into(),
                attempts.into(),
                now.into(),
            ]);
            if new_status == status::FAILED {
                self.give_back_slot(tx, &row).await?;
            }
            // A message waiting for a window is looked at again when the
            // window opens; only a new place in time is worth a history line.
            if !(row.status == status::DEFERRED
                && new_status == status::DEFERRED
                && row.due_at == due_at)
            {
                history.push((row.shop_id.clone(), row.id.clone(), new_status, detail));
            }
            if new_status == status::SENDING {
                sending.push(vec![
                    row.shop_id.clone().into(),
                    row.customer_id.clone().into(),
                    row.channel.into(),
                    row.id.clone().into(),
                    row.template_id.clone().into(),
                    i32::from(row.is_marketing()).into(),
                    now.into(),
                ]);
                row.status = new_status;
                row.attempts = attempts;
                row.due_at = due_at;
                out.push(row);
            }
        }
        huitou_storage::bulk::update(
            tx,
            "messages",
            &[
                ("shop_id", Col::Text),
                ("id", Col::Text),
                ("status", Col::Int),
                ("due_at", Col::BigInt),
                ("status_reason", Col::Text),
                ("attempts", Col::Int),
                ("updated_at", Col::BigInt),
            ],
            2,
            updates,
        )
        .await?;
        huitou_storage::bulk::insert(
            tx,
            "sent_log",
            &[
                ("shop_id", Col::Text),
                ("customer_id", Col::Text),
                ("channel", Col::Int),
                ("message_id", Col::Text),
                ("template_id", Col::Text),
                ("marketing", Col::Int),
                ("sent_at", Col::BigInt),
            ],
            sending,
            "ON CONFLICT (shop_id, customer_id, channel, message_id) DO NOTHING",
        )
        .await?;
        self.record_histories(tx, history, now).await?;
        Ok(out)
    }

    /// Marketing sends since `since` to `customers` of a shop. On
    /// PostgreSQL the customers travel as one array and each is looked up
    /// on its own through the primary key's prefix (`LATERAL … OFFSET 0`
    /// keeps the planner from flattening it): with one shop per table and
    /// statistics that lag a growing log, a join was planned as a scan of
    /// the shop's whole log, 200 ms per batch at 40,000 sends.
    async fn recent_sends(
        &self,
        tx: &WriteTx,
        shop: &str,
        since: i64,
        customers: &[String],
    ) -> Result<Vec<sea_orm::QueryResult>, NotificationError> {
        const COLUMNS: &str = "sent_log.customer_id, sent_log.channel, sent_log.message_id, \
             sent_log.template_id, sent_log.sent_at";
        if self.db.is_postgres() {
            let keys: Vec<sea_orm::Value> = customers.iter().map(|c| c.clone().into()).collect();
            return Ok(tx
                .query_all(
                    &format!(
                        "SELECT {COLUMNS} FROM unnest($2::text[]) AS wanted(customer_id)
                         CROSS JOIN LATERAL (
                             SELECT * FROM sent_log
                             WHERE sent_log.shop_id = $1 AND sent_log.customer_id = wanted.customer_id
                               AND sent_log.marketing = 1 AND sent_log.sent_at > $3
                             OFFSET 0
                         ) AS sent_log"
                    ),
                    vec![
                        shop.into(),
                        sea_orm::Value::Array(
                            sea_orm::sea_query::ArrayType::String,
                            Some(Box::new(keys)),
                        ),
                        since.into(),
                    ],
                )
                .await?);
        }
        Ok(huitou_storage::bulk::query_with_keys(
            &**tx,
            &format!(
                "SELECT {COLUMNS} FROM sent_log
                 WHERE shop_id = $1 AND marketing = 1 AND sent_at > $2 AND customer_id {{keys}}"
            ),
            vec![shop.into(), since.into()],
            customers,
        )
        .await?)
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
            Box::pin(async move { store.record_outcomes_in(tx, &done, &jitters).await })
        })
        .await
    }

    async fn record_outcomes_in(
        &self,
        tx: &WriteTx,
        done: &[(MessageRow, Outcome)],
        jitters: &[f64],
    ) -> Result<(), NotificationError> {
        let now = now_micros();
        // An answer counts only while its message is still SENDING under the
        // attempt that produced it.
        let mut by_shop: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (row, _) in done {
            by_shop
                .entry(&row.shop_id)
                .or_default()
                .push(row.id.clone());
        }
        let mut current: HashSet<(String, String, i32)> = HashSet::new();
        for (shop, ids) in by_shop {
            let lookup = huitou_storage::bulk::KeyedLookup {
                table: "messages",
                columns: "messages.id, messages.attempts, messages.status",
                key_column: "id",
                shop_id: shop,
                keys: &ids,
            };
            let found = huitou_storage::bulk::rows_with_keys(tx, lookup, true).await?;
            for r in &found {
                if r.try_get::<i32>("", "status")? == status::SENDING {
                    current.insert((
                        shop.to_owned(),
                        r.try_get("", "id")?,
                        r.try_get("", "attempts")?,
                    ));
                }
            }
        }
        let mut updates = Vec::with_capacity(done.len());
        let mut history = Vec::with_capacity(done.len());
        for ((row, outcome), jitter) in done.iter().zip(jitters) {
            if !current.contains(&(row.shop_id.clone(), row.id.clone(), row.attempts)) {
                continue;
            }
            let settings = self.shop_settings(&row.shop_id).await?;
            let s = settle(&settings, row, outcome, *jitter, now);
            // A held-back message was not attempted.
            let attempts = row.attempts - i32::from(matches!(outcome, Outcome::Throttled { .. }));
            updates.push(vec![
                row.shop_id.clone().into(),
                row.id.clone().into(),
                s.status.into(),
                s.due_at.into(),
                s.reason.into(),
                s.provider.into(),
                s.provider_message_id.into(),
                attempts.into(),
                now.into(),
            ]);
            if s.give_back {
                self.give_back_slot(tx, row).await?;
            }
            history.push((row.shop_id.clone(), row.id.clone(), s.status, s.detail));
        }
        huitou_storage::bulk::update(
            tx,
            "messages",
            &[
                ("shop_id", Col::Text),
                ("id", Col::Text),
                ("status", Col::Int),
                ("due_at", Col::BigInt),
                ("status_reason", Col::Text),
                ("provider", Col::Text),
                ("provider_message_id", Col::Text),
                ("attempts", Col::Int),
                ("updated_at", Col::BigInt),
            ],
            2,
            updates,
        )
        .await?;
        self.record_histories(tx, history, now).await
    }
}

/// How one attempt's answer leaves a message.
struct Settled {
    status: i32,
    due_at: i64,
    reason: String,
    provider: String,
    provider_message_id: String,
    detail: String,
    give_back: bool,
}

fn settle(
    settings: &ShopSettings,
    row: &MessageRow,
    outcome: &Outcome,
    jitter: f64,
    now: i64,
) -> Settled {
    let max = settings.policy.max_attempts;
    let (status, due_at, reason, provider, provider_message_id, detail, give_back) = match outcome {
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
        Outcome::Throttled { until, limit } => (
            status::QUEUED,
            *until,
            String::new(),
            String::new(),
            String::new(),
            format!(
                "held back: the shop's limit of {limit} per second on this channel's provider; next try at {}",
                describe_time(settings, *until)
            ),
            true,
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
                    describe_time(settings, at)
                ),
                false,
            )
        }
    };
    Settled {
        status,
        due_at,
        reason,
        provider,
        provider_message_id,
        detail,
        give_back,
    }
}

/// What can be decided about a message before its customer's row is read:
/// a takeover after a lost lease, a paused template, a closed window.
/// `None` when the customer decides.
fn before_customer(
    s: &ShopSettings,
    row: &MessageRow,
    template_active: bool,
    now: i64,
) -> Option<Step> {
    if row.status == status::SENDING {
        // The last sender stopped without recording an answer. The provider
        // gets the same idempotency key, so a gateway that took the first
        // attempt drops this one.
        if row.attempts >= s.policy.max_attempts {
            return Some(Step::Fail(
                "DEAD_LETTER: no answer recorded".into(),
                format!(
                    "failed: dead-lettered after {} attempts without an answer",
                    row.attempts
                ),
            ));
        }
        return Some(Step::Send(format!(
            "sending again (attempt {}): the last attempt ended without an answer",
            row.attempts + 1
        )));
    }
    if !template_active {
        return Some(Step::Suppress(Suppression::TemplatePaused));
    }
    let marketing = row.is_marketing();
    // Only urgent transactional messages skip the windows.
    if row.urgent == 0 || marketing {
        let aim = marketing && s.policy.aim_last_hour;
        match s.calendar.next_open(now, aim) {
            Some(at) if at == now => {}
            Some(at) => {
                return Some(Step::Defer(
                    at,
                    format!("deferred to the next send window, {}", describe_time(s, at)),
                ));
            }
            None => {
                return Some(Step::Defer(
                    now + DAY_MICROS,
                    "deferred: no send window opens within a year; change the policy".into(),
                ));
            }
        }
    }
    None
}
