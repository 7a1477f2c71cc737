//! What the service knows of customers: consent (from the customer
//! service's events), opt-outs (from replies), open complaints, erasure and
//! birthdays. Channels are kept by name between commas (`,sms,email,`).

use std::collections::HashMap;

use huitou_storage::{WriteTx, now_micros};
use sea_orm::{ConnectionTrait, QueryResult};

use super::{Store, read_on};
use crate::domain::rules::Standing;
use crate::error::NotificationError;

/// The channel number of a customer-service channel name.
pub fn channel_number(name: &str) -> i32 {
    (1..=6).find(|n| channel_name(*n) == name).unwrap_or(0)
}

/// The customer service's name of a channel (huitou.customer.v1.Channel).
pub fn channel_name(channel: i32) -> &'static str {
    match channel {
        1 => "sms",
        2 => "wechat",
        3 => "platform_im",
        4 => "email",
        5 => "app_push",
        6 => "phone_call",
        _ => "",
    }
}

fn listed(list: &str, channel: i32) -> bool {
    let name = channel_name(channel);
    !name.is_empty() && list.contains(&format!(",{name},"))
}

fn standing_of(row: &QueryResult, channel: i32) -> Result<Standing, NotificationError> {
    let consents: String = row.try_get("", "consents")?;
    let opted_out: String = row.try_get("", "opted_out")?;
    Ok(Standing {
        known: row.try_get::<i32>("", "known")? != 0,
        consented: listed(&consents, channel),
        opted_out: listed(&opted_out, channel),
        complaint: row.try_get::<i32>("", "complaint")? != 0,
        erased: row.try_get::<i32>("", "erased")? != 0,
    })
}

/// A customer's row as read for sending.
#[derive(Debug, Clone, Default)]
pub struct RecipientRow {
    known: bool,
    consents: String,
    opted_out: String,
    complaint: bool,
    erased: bool,
}

impl RecipientRow {
    /// The customer's standing on `channel`.
    pub fn standing(&self, channel: i32) -> Standing {
        Standing {
            known: self.known,
            consented: listed(&self.consents, channel),
            opted_out: listed(&self.opted_out, channel),
            complaint: self.complaint,
            erased: self.erased,
        }
    }
}

/// A change to what is known of a customer.
#[derive(Debug, Clone)]
pub enum RecipientChange<'a> {
    /// The customer exists.
    Known,
    /// Consent and birthday as of an event at `at`; `consent_changed` names
    /// channels whose consent the event changed.
    Profile {
        /// Channels with consent.
        consented: &'a [String],
        /// Channels whose consent this event changed.
        consent_changed: Vec<String>,
        /// Birthday month, 0 for none.
        birthday_month: i32,
        /// Birthday day.
        birthday_day: i32,
        /// When the event happened, µs.
        at: i64,
    },
    /// Personal data erased.
    Erased,
    /// Opted out on a channel.
    OptOut(i32),
    /// A complaint opened (true) or closed (false).
    Complaint(bool),
}

impl Store {
    /// The customer's standing on `channel`; with `lock`, the row is locked
    /// for the rest of `conn`'s transaction (PostgreSQL).
    pub async fn standing(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        customer_id: &str,
        channel: i32,
        lock: bool,
    ) -> Result<Standing, NotificationError> {
        let sql = format!(
            "SELECT known, consents, opted_out, complaint, erased FROM recipients
             WHERE shop_id = $1 AND customer_id = $2{}",
            if lock { self.for_update() } else { "" }
        );
        let rows = read_on(
            conn,
            &self.db,
            &sql,
            vec![shop_id.into(), customer_id.into()],
        )
        .await?;
        match rows.first() {
            Some(row) => standing_of(row, channel),
            None => Ok(Standing::default()),
        }
    }

    /// The rows of many customers of one shop, locked until `tx` ends
    /// (PostgreSQL, in customer order so two dispatchers never wait on each
    /// other in a cycle). Unknown customers are absent.
    pub async fn lock_recipients(
        &self,
        tx: &huitou_storage::WriteTx,
        shop_id: &str,
        customer_ids: &[String],
    ) -> Result<HashMap<String, RecipientRow>, NotificationError> {
        let lookup = huitou_storage::bulk::KeyedLookup {
            table: "recipients",
            columns: "recipients.customer_id, known, consents, opted_out, complaint, erased",
            key_column: "customer_id",
            shop_id,
            keys: customer_ids,
        };
        let rows = huitou_storage::bulk::rows_with_keys(tx, lookup, true).await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in &rows {
            out.insert(
                r.try_get::<String>("", "customer_id")?,
                RecipientRow {
                    known: r.try_get::<i32>("", "known")? != 0,
                    consents: r.try_get("", "consents")?,
                    opted_out: r.try_get("", "opted_out")?,
                    complaint: r.try_get::<i32>("", "complaint")? != 0,
                    erased: r.try_get::<i32>("", "erased")? != 0,
                },
            );
        }
        Ok(out)
    }

    /// Standings of many customers on one channel (unknown ones absent).
    pub async fn standings(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        customer_ids: &[&str],
        channel: i32,
    ) -> Result<HashMap<String, Standing>, NotificationError> {
        let keys: Vec<String> = customer_ids.iter().map(|c| (*c).to_owned()).collect();
        let rows = huitou_storage::bulk::query_with_keys(
            conn,
            "SELECT customer_id, known, consents, opted_out, complaint, erased FROM recipients
             WHERE shop_id = $1 AND customer_id {keys}",
            vec![shop_id.into()],
            &keys,
        )
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("", "customer_id")?;
            out.insert(id, standing_of(row, channel)?);
        }
        Ok(out)
    }

    /// Applies a change to what is known of a customer.
    pub async fn change_recipient(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        customer_id: &str,
        change: RecipientChange<'_>,
    ) -> Result<(), NotificationError> {
        let now = now_micros();
        tx.execute(
            "INSERT INTO recipients (shop_id, customer_id, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (shop_id, customer_id) DO NOTHING",
            vec![shop_id.into(), customer_id.into(), now.into()],
        )
        .await?;
        let key =
            || -> Vec<sea_orm::Value> { vec![shop_id.into(), customer_id.into(), now.into()] };
        match change {
            RecipientChange::Known => {
                tx.execute(
                    "UPDATE recipients SET known = 1, updated_at = $3 WHERE shop_id = $1 AND customer_id = $2",
                    key(),
                )
                .await?;
            }
            RecipientChange::Profile {
                consented,
                consent_changed,
                birthday_month,
                birthday_day,
                at,
            } => {
                let rows = tx
                    .query_all(
                        &format!(
                            "SELECT opted_out, opted_out_at, profile_at, erased FROM recipients
                             WHERE shop_id = $1 AND customer_id = $2{}",
                            self.for_update()
                        ),
                        vec![shop_id.into(), customer_id.into()],
                    )
                    .await?;
                let (mut opted_out, opted_out_at, profile_at, erased) = match rows.first() {
                    Some(r) => (
                        r.try_get::<String>("", "opted_out")?,
                        r.try_get::<i64>("", "opted_out_at")?,
                        r.try_get::<i64>("", "profile_at")?,
                        r.try_get::<i32>("", "erased")? != 0,
                    ),
                    None => (",".to_owned(), 0, 0, false),
                };
                // Each update carries the whole profile: one older than the
                // profile held arrived late (the relay retried it after later
                // ones went) and would bring back a withdrawn consent. After
                // an erasure nothing of the profile is kept again.
                if at < profile_at || erased {
                    return Ok(());
                }
                // Consent granted again after an opt-out lifts it; an older
                // event does not.
                if at > opted_out_at {
                    for name in &consent_changed {
                        if consented.iter().any(|c| c == name) {
                            opted_out = opted_out.replace(&format!(",{name},"), ",");
                        }
                    }
                }
                let consents = format!(",{},", consented.join(","));
                let consents = if consented.is_empty() {
                    ",".to_owned()
                } else {
                    consents
                };
                tx.execute(
                    "UPDATE recipients SET known = 1, consents = $4, opted_out = $5,
                         birthday_month = $6, birthday_day = $7, profile_at = $8, updated_at = $3
                     WHERE shop_id = $1 AND customer_id = $2",
                    vec![
                        shop_id.into(),
                        customer_id.into(),
                        now.into(),
                        consents.into(),
                        opted_out.into(),
                        birthday_month.into(),
                        birthday_day.into(),
                        at.into(),
                    ],
                )
                .await?;
            }
            RecipientChange::Erased => {
                tx.execute(
                    "UPDATE recipients SET known = 1, erased = 1, consents = ',',
                         birthday_month = 0, birthday_day = 0, updated_at = $3
                     WHERE shop_id = $1 AND customer_id = $2",
                    key(),
                )
                .await?;
            }
            RecipientChange::OptOut(channel) => {
                let name = channel_name(channel);
                tx.execute(
                    "UPDATE recipients SET opted_out = opted_out || $4 || ',', opted_out_at = $3, updated_at = $3,
                         opt_out_unsynced = CASE WHEN opt_out_unsynced LIKE $5 THEN opt_out_unsynced
                                                 ELSE opt_out_unsynced || $4 || ',' END
                     WHERE shop_id = $1 AND customer_id = $2 AND opted_out NOT LIKE $5",
                    vec![
                        shop_id.into(),
                        customer_id.into(),
                        now.into(),
                        name.into(),
                        format!("%,{name},%").into(),
                    ],
                )
                .await?;
            }
            RecipientChange::Complaint(open) => {
                tx.execute(
                    "UPDATE recipients SET complaint = $4, updated_at = $3 WHERE shop_id = $1 AND customer_id = $2",
                    vec![
                        shop_id.into(),
                        customer_id.into(),
                        now.into(),
                        i32::from(open).into(),
                    ],
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Opt-outs not yet written back to the customer service: (shop,
    /// customer, channel name, when), oldest first; `only` one customer's.
    pub async fn unsynced_opt_outs(
        &self,
        only: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String, String, i64)>, NotificationError> {
        let rows = match only {
            Some((shop, customer)) => {
                self.read(
                    "SELECT shop_id, customer_id, opt_out_unsynced, opted_out_at FROM recipients
                     WHERE shop_id = $1 AND customer_id = $2 AND opt_out_unsynced <> ','",
                    vec![shop.into(), customer.into()],
                )
                .await?
            }
            None => {
                self.read(
                    "SELECT shop_id, customer_id, opt_out_unsynced, opted_out_at FROM recipients
                     WHERE opt_out_unsynced <> ',' ORDER BY opted_out_at LIMIT $1",
                    vec![(limit as i64).into()],
                )
                .await?
            }
        };
        let mut out = Vec::new();
        for r in &rows {
            let shop: String = r.try_get("", "shop_id")?;
            let customer: String = r.try_get("", "customer_id")?;
            let at: i64 = r.try_get("", "opted_out_at")?;
            let channels: String = r.try_get("", "opt_out_unsynced")?;
            for c in channels.split(',').filter(|c| !c.is_empty()) {
                out.push((shop.clone(), customer.clone(), c.to_owned(), at));
            }
        }
        Ok(out)
    }

    /// Marks an opt-out as written back to the customer service.
    pub async fn opt_out_synced(
        &self,
        tx: &huitou_storage::WriteTx,
        shop_id: &str,
        customer_id: &str,
        channel: &str,
    ) -> Result<(), NotificationError> {
        tx.execute(
            "UPDATE recipients SET opt_out_unsynced = REPLACE(opt_out_unsynced, $3, ',')
             WHERE shop_id = $1 AND customer_id = $2",
            vec![
                shop_id.into(),
                customer_id.into(),
                format!(",{channel},").into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Everything known of a customer, for operators.
    pub async fn recipient(
        &self,
        shop_id: &str,
        customer_id: &str,
    ) -> Result<huitou_proto::notification::v1::GetRecipientResponse, NotificationError> {
        let rows = self
            .read(
                "SELECT known, consents, opted_out, complaint, erased FROM recipients
                 WHERE shop_id = $1 AND customer_id = $2",
                vec![shop_id.into(), customer_id.into()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(Default::default());
        };
        let split = |s: String| -> Vec<String> {
            s.split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Ok(huitou_proto::notification::v1::GetRecipientResponse {
            known: row.try_get::<i32>("", "known")? != 0,
            consented_channels: split(row.try_get("", "consents")?),
            opted_out_channels: split(row.try_get("", "opted_out")?),
            open_complaint: row.try_get::<i32>("", "complaint")? != 0,
            erased: row.try_get::<i32>("", "erased")? != 0,
        })
    }

    /// Whether the customer has an open complaint.
    pub async fn has_complaint(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        customer_id: &str,
    ) -> Result<bool, NotificationError> {
        Ok(self
            .standing(conn, shop_id, customer_id, 0, false)
            .await?
            .complaint)
    }
}
