//! The shop's calendars: each customer's birthday (the birthday calendar
//! that sends every day to that day's birthdays) and the holidays with a
//! greeting. Run every few minutes by every replica; each greeting has a
//! once-only key per customer and occasion, so running again, or on two
//! replicas at once, sends nothing twice.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use huitou_proto::notification::v1 as pb;
use prost::Message;

use super::messages::{Accepted, NewMessage};
use super::recipients::channel_name;
use super::{ShopSettings, Store};
use crate::domain::window::local_date;
use crate::error::NotificationError;
use crate::template::{self, is_marketing};

/// Recipients read and accepted at a time.
const CHUNK: usize = 2_000;

/// The day a birthday is celebrated in `year`: 29 February falls on the
/// 28th in other years.
pub fn celebrated_on(year: i32, month: u32, day: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, month, day).or_else(|| {
        (month == 2 && day == 29)
            .then(|| NaiveDate::from_ymd_opt(year, 2, 28))
            .flatten()
    })
}

/// Whose birthdays are celebrated on `today`: (month, day) pairs.
pub fn birthdays_on(today: NaiveDate) -> Vec<(u32, u32)> {
    let mut days = vec![(today.month(), today.day())];
    let leap = NaiveDate::from_ymd_opt(today.year(), 2, 29).is_some();
    if !leap && today.month() == 2 && today.day() == 28 {
        days.push((2, 29));
    }
    days
}

impl Store {
    /// Sends the greetings due today in every shop; how many messages
    /// were accepted.
    pub async fn greetings(&self, now: i64) -> Result<i64, NotificationError> {
        let mut accepted = 0;
        let birthday_rules = self
            .read(
                "SELECT shop_id, rule FROM trigger_rules WHERE trigger_kind = $1",
                vec![(pb::Trigger::Birthday as i32).into()],
            )
            .await?;
        for row in &birthday_rules {
            let shop: String = row.try_get("", "shop_id")?;
            let bytes: Vec<u8> = row.try_get("", "rule")?;
            let Ok(rule) = pb::TriggerRule::decode(bytes.as_slice()) else {
                continue;
            };
            if !rule.enabled || rule.template_id.is_empty() {
                continue;
            }
            let settings = self.shop_settings(&shop).await?;
            let Some(today) = local_date(settings.calendar.zone, now) else {
                continue;
            };
            let occasion = Occasion::Birthday(today);
            accepted += self
                .greet(&shop, &settings, &rule.template_id, &occasion, now)
                .await?;
        }
        // Holidays near today in any zone; each shop's own date decides.
        let dates: Vec<String> = (-1..=1)
            .filter_map(|d| {
                chrono::DateTime::from_timestamp_micros(now).map(|t| {
                    (t.date_naive() + chrono::Duration::days(d))
                        .format("%Y-%m-%d")
                        .to_string()
                })
            })
            .collect();
        let holidays = self
            .read(
                "SELECT shop_id, holiday FROM holidays WHERE date IN ($1, $2, $3)",
                dates.iter().map(|d| d.clone().into()).collect(),
            )
            .await?;
        for row in &holidays {
            let shop: String = row.try_get("", "shop_id")?;
            let bytes: Vec<u8> = row.try_get("", "holiday")?;
            let Ok(holiday) = pb::Holiday::decode(bytes.as_slice()) else {
                continue;
            };
            if holiday.greeting_template_id.is_empty() {
                continue;
            }
            let settings = self.shop_settings(&shop).await?;
            let today =
                local_date(settings.calendar.zone, now).map(|d| d.format("%Y-%m-%d").to_string());
            if today.as_deref() != Some(holiday.date.as_str()) {
                continue;
            }
            let occasion = Occasion::Holiday(holiday.date.clone());
            accepted += self
                .greet(
                    &shop,
                    &settings,
                    &holiday.greeting_template_id,
                    &occasion,
                    now,
                )
                .await?;
        }
        Ok(accepted)
    }

    async fn greet(
        &self,
        shop: &str,
        settings: &ShopSettings,
        template_id: &str,
        occasion: &Occasion,
        now: i64,
    ) -> Result<i64, NotificationError> {
        let t = match self.load_template(self.db.conn(), shop, template_id).await {
            Ok(t) if t.active => t,
            Ok(_) | Err(NotificationError::TemplateNotFound) => return Ok(0),
            Err(e) => return Err(e),
        };
        let vars = BTreeMap::new();
        let Ok(rendered) = template::render(&t, &vars, "variables") else {
            tracing::warn!(shop, template = %t.id, "a greeting template uses variables; nothing sent");
            return Ok(0);
        };
        // Marketing greetings go only to customers who agreed on the
        // channel and have not opted out or complained; the rest are not
        // even queued.
        let channel = channel_name(t.channel);
        let marketing = is_marketing(&t);
        let mut after = String::new();
        let mut total = 0;
        loop {
            let mut values: Vec<sea_orm::Value> = vec![shop.into(), after.clone().into()];
            let mut filter = String::from("erased = 0 AND known = 1");
            if marketing {
                values.push(format!("%,{channel},%").into());
                filter
                    .push_str(" AND consents LIKE $3 AND opted_out NOT LIKE $3 AND complaint = 0");
            }
            if let Occasion::Birthday(today) = occasion {
                let days = birthdays_on(*today);
                let mut ors = Vec::new();
                for (m, d) in days {
                    values.push((m as i32).into());
                    values.push((d as i32).into());
                    ors.push(format!(
                        "(birthday_month = ${} AND birthday_day = ${})",
                        values.len() - 1,
                        values.len()
                    ));
                }
                filter.push_str(&format!(" AND ({})", ors.join(" OR ")));
            }
            values.push((CHUNK as i64).into());
            let sql = format!(
                "SELECT customer_id FROM recipients WHERE shop_id = $1 AND customer_id > $2 AND {filter}
                 ORDER BY customer_id LIMIT ${}",
                values.len()
            );
            let rows = self.read(&sql, values).await?;
            if rows.is_empty() {
                break;
            }
            let ids: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<String>("", "customer_id"))
                .collect::<Result<_, _>>()?;
            after = ids.last().cloned().unwrap_or_default();
            let origin = occasion.origin();
            let built: Vec<_> = ids
                .iter()
                .map(|id| {
                    let m = NewMessage {
                        customer_id: id,
                        template: &t,
                        rendered: rendered.clone(),
                        variables: &vars,
                        not_before: now,
                        urgent: false,
                        origin: &origin,
                        dedupe_key: occasion.key(id),
                        order_no: "",
                    };
                    self.new_row(shop, settings, &m, None, now)
                })
                .collect();
            let shop_id = shop.to_owned();
            let built = std::sync::Arc::new(built);
            let done: Accepted = self
                .transaction(move |tx, store| {
                    let (built, shop_id) = (built.clone(), shop_id.clone());
                    Box::pin(async move { store.accept_many(tx, &shop_id, built.to_vec()).await })
                })
                .await?;
            total += done.accepted;
            if ids.len() < CHUNK {
                break;
            }
        }
        if total > 0 {
            tracing::info!(shop, occasion = %occasion.origin(), messages = total, "greetings queued");
        }
        Ok(total)
    }
}

/// What a greeting celebrates.
enum Occasion {
    /// Birthdays celebrated on this local date.
    Birthday(NaiveDate),
    /// A holiday, by date.
    Holiday(String),
}

impl Occasion {
    fn origin(&self) -> String {
        match self {
            Occasion::Birthday(_) => "birthday".into(),
            Occasion::Holiday(date) => format!("holiday:{date}"),
        }
    }

    /// Once per customer per birthday year, or per holiday.
    fn key(&self, customer: &str) -> String {
        match self {
            Occasion::Birthday(d) => format!("birthday:{}:{customer}", d.year()),
            Occasion::Holiday(date) => format!("holiday:{date}:{customer}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn leap_day_birthdays_are_celebrated_on_the_28th_in_other_years() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(birthdays_on(d(2027, 2, 28)), vec![(2, 28), (2, 29)]);
        assert_eq!(birthdays_on(d(2028, 2, 28)), vec![(2, 28)]);
        assert_eq!(birthdays_on(d(2028, 2, 29)), vec![(2, 29)]);
        assert_eq!(celebrated_on(2027, 2, 29), Some(d(2027, 2, 28)));
    }
}
