//! Customer rows: read, create, change, erase.

use std::collections::BTreeMap;

use huitou_privacy::{SealContext, Vault};
use huitou_storage::bulk::Col;
use huitou_storage::{WriteTx, now_micros};
use sea_orm::{ConnectionTrait, FromQueryResult, Statement, Value};

use super::{Store, from_json, new_id, schema, to_json};
use crate::domain::customer::{
    Attribute, Birthday, Consent, ContactField, Customer, ProfileChanges,
};
use crate::domain::order::{Stats, StatsDelta};
use crate::error::CustomerError;

/// Columns read for a customer, in row order.
pub(crate) const COLUMNS: &str = "shop_id, id, buyer_nick, name_sealed, phone_sealed, address_sealed, wechat_id_sealed, \
    email_sealed, masks, phone_index, birthday_year, birthday_month, birthday_day, gender, region, order_count, \
    item_count, spent_fen, refunded_fen, first_order_at, last_order_at, categories, tags, attributes, consents, \
    created_at, updated_at, erased_at";

/// [`COLUMNS`] with their stored types, for bulk writes.
pub(crate) const COLUMN_TYPES: [(&str, Col); 28] = [
    ("shop_id", Col::Text),
    ("id", Col::Text),
    ("buyer_nick", Col::Text),
    ("name_sealed", Col::Bytes),
    ("phone_sealed", Col::Bytes),
    ("address_sealed", Col::Bytes),
    ("wechat_id_sealed", Col::Bytes),
    ("email_sealed", Col::Bytes),
    ("masks", Col::Text),
    ("phone_index", Col::Text),
    ("birthday_year", Col::Int),
    ("birthday_month", Col::Int),
    ("birthday_day", Col::Int),
    ("gender", Col::Int),
    ("region", Col::Text),
    ("order_count", Col::BigInt),
    ("item_count", Col::BigInt),
    ("spent_fen", Col::BigInt),
    ("refunded_fen", Col::BigInt),
    ("first_order_at", Col::BigInt),
    ("last_order_at", Col::BigInt),
    ("categories", Col::Text),
    ("tags", Col::Text),
    ("attributes", Col::Text),
    ("consents", Col::Text),
    ("created_at", Col::BigInt),
    ("updated_at", Col::BigInt),
    ("erased_at", Col::BigInt),
];

/// The columns an order changes on a known buyer, with those a row cannot
/// be proposed without (the upsert that writes them always finds the row:
/// it is locked), for bulk writes of statistics alone; in [`COLUMNS`] order.
const STATS_COLUMNS: [&str; 12] = [
    "shop_id",
    "id",
    "buyer_nick",
    "order_count",
    "item_count",
    "spent_fen",
    "refunded_fen",
    "first_order_at",
    "last_order_at",
    "categories",
    "created_at",
    "updated_at",
];

/// [`STATS_COLUMNS`] with their stored types, taken from [`COLUMN_TYPES`].
pub(crate) static STATS_COLUMN_TYPES: std::sync::LazyLock<Vec<(&str, Col)>> =
    std::sync::LazyLock::new(|| {
        COLUMN_TYPES
            .iter()
            .copied()
            .filter(|(name, _)| STATS_COLUMNS.contains(name))
            .collect()
    });

#[derive(Debug, FromQueryResult)]
struct CustomerRow {
    shop_id: String,
    id: String,
    buyer_nick: String,
    name_sealed: Option<Vec<u8>>,
    phone_sealed: Option<Vec<u8>>,
    address_sealed: Option<Vec<u8>>,
    wechat_id_sealed: Option<Vec<u8>>,
    email_sealed: Option<Vec<u8>>,
    masks: String,
    phone_index: Option<String>,
    birthday_year: Option<i32>,
    birthday_month: Option<i32>,
    birthday_day: Option<i32>,
    gender: i32,
    region: String,
    order_count: i64,
    item_count: i64,
    spent_fen: i64,
    refunded_fen: i64,
    first_order_at: Option<i64>,
    last_order_at: Option<i64>,
    categories: String,
    tags: String,
    attributes: String,
    consents: String,
    created_at: i64,
    updated_at: i64,
    erased_at: Option<i64>,
}

/// A customer as stored: the masked view plus the sealed values.
#[derive(Debug, Clone)]
pub struct CustomerRecord {
    /// The shop.
    pub shop_id: String,
    /// The masked view.
    pub customer: Customer,
    /// Sealed contact values by field.
    pub sealed: BTreeMap<ContactField, Vec<u8>>,
    /// Blind index of the phone.
    pub phone_index: Option<String>,
    tags_before: Vec<String>,
}

impl CustomerRecord {
    pub(crate) fn from_query(row: &sea_orm::QueryResult) -> Result<Self, CustomerError> {
        Self::from_row(CustomerRow::from_query_result(row, "")?)
    }

    fn from_row(row: CustomerRow) -> Result<Self, CustomerError> {
        let masks_by_name: BTreeMap<String, String> = from_json("masks", &row.masks)?;
        let masked = ContactField::ALL
            .iter()
            .filter_map(|f| masks_by_name.get(f.name()).map(|m| (*f, m.clone())))
            .collect();
        let mut sealed = BTreeMap::new();
        for (field, value) in [
            (ContactField::Name, row.name_sealed),
            (ContactField::Phone, row.phone_sealed),
            (ContactField::Address, row.address_sealed),
            (ContactField::WechatId, row.wechat_id_sealed),
            (ContactField::Email, row.email_sealed),
        ] {
            if let Some(v) = value {
                sealed.insert(field, v);
            }
        }
        let birthday = match (row.birthday_year, row.birthday_month, row.birthday_day) {
            (year, Some(month), Some(day)) => Some(Birthday {
                year: year.unwrap_or(0),
                month,
                day,
            }),
            _ => None,
        };
        let tags: Vec<String> = from_json("tags", &row.tags)?;
        let consents_by_name: BTreeMap<String, Consent> = from_json("consents", &row.consents)?;
        let consents = consents_by_name
            .into_iter()
            .filter_map(|(k, v)| k.parse::<i32>().ok().map(|c| (c, v)))
            .collect();
        Ok(Self {
            shop_id: row.shop_id,
            customer: Customer {
                id: row.id,
                buyer_nick: row.buyer_nick,
                masked,
                birthday,
                gender: row.gender,
                region: row.region,
                stats: Stats {
                    order_count: row.order_count,
                    item_count: row.item_count,
                    spent_fen: row.spent_fen,
                    refunded_fen: row.refunded_fen,
                    first_order_at: row.first_order_at,
                    last_order_at: row.last_order_at,
                    categories: from_json("categories", &row.categories)?,
                },
                tags: tags.clone(),
                attributes: from_json("attributes", &row.attributes)?,
                consents,
                created_at: row.created_at,
                updated_at: row.updated_at,
                erased_at: row.erased_at,
            },
            sealed,
            phone_index: row.phone_index,
            tags_before: tags,
        })
    }

    /// A new customer with nothing known but the nick.
    pub fn new(shop_id: &str, buyer_nick: &str) -> Self {
        let now = now_micros();
        Self {
            shop_id: shop_id.to_owned(),
            customer: Customer {
                id: new_id(),
                buyer_nick: buyer_nick.to_owned(),
                masked: BTreeMap::new(),
                birthday: None,
                gender: 0,
                region: String::new(),
                stats: Stats::default(),
                tags: Vec::new(),
                attributes: BTreeMap::new(),
                consents: BTreeMap::new(),
                created_at: now,
                updated_at: now,
                erased_at: None,
            },
            sealed: BTreeMap::new(),
            phone_index: None,
            tags_before: Vec::new(),
        }
    }

    /// Sets (or with an empty value clears) a normalised contact value;
    /// true when it changed.
    pub fn set_contact(
        &mut self,
        vault: &Vault,
        field: ContactField,
        value: &str,
    ) -> Result<bool, CustomerError> {
        let context = SealContext {
            shop_id: &self.shop_id,
            field: field.name(),
        };
        if value.is_empty() {
            let had = self.sealed.remove(&field).is_some();
            self.customer.masked.remove(&field);
            if field == ContactField::Phone {
                self.phone_index = None;
            }
            return Ok(had);
        }
        if let Some(existing) = self.sealed.get(&field)
            && vault.open(context, existing).ok().as_deref() == Some(value)
        {
            return Ok(false);
        }
        self.sealed.insert(field, vault.seal(context, value)?);
        self.customer.masked.insert(field, field.mask(value));
        if field == ContactField::Phone {
            self.phone_index = Some(vault.blind_index(&self.shop_id, "phone", value));
        }
        Ok(true)
    }

    /// Opens one contact value; `None` when the customer has none.
    pub fn reveal(
        &self,
        vault: &Vault,
        field: ContactField,
    ) -> Result<Option<String>, CustomerError> {
        let context = SealContext {
            shop_id: &self.shop_id,
            field: field.name(),
        };
        match self.sealed.get(&field) {
            Some(sealed) => Ok(Some(field.display(&vault.open(context, sealed)?))),
            None => Ok(None),
        }
    }

    /// Applies profile changes; the names of what changed.
    pub fn apply_profile(
        &mut self,
        vault: &Vault,
        changes: &ProfileChanges,
    ) -> Result<Vec<String>, CustomerError> {
        let mut changed = Vec::new();
        for (field, value) in &changes.contact {
            if self.set_contact(vault, *field, value)? {
                changed.push(field.name().to_owned());
            }
        }
        if let Some(b) = changes.birthday
            && self.customer.birthday != Some(b)
        {
            self.customer.birthday = Some(b);
            changed.push("birthday".into());
        }
        if let Some(g) = changes.gender
            && self.customer.gender != g
        {
            self.customer.gender = g;
            changed.push("gender".into());
        }
        if let Some(r) = &changes.region
            && &self.customer.region != r
        {
            self.customer.region = r.clone();
            changed.push("region".into());
        }
        Ok(changed)
    }

    /// Fills contact fields the customer has none of (from an order's
    /// receiver); the names of what was filled.
    pub fn fill_missing(
        &mut self,
        vault: &Vault,
        values: &BTreeMap<ContactField, String>,
    ) -> Result<Vec<String>, CustomerError> {
        let mut filled = Vec::new();
        for (field, value) in values {
            if !value.is_empty()
                && !self.sealed.contains_key(field)
                && self.set_contact(vault, *field, value)?
            {
                filled.push(field.name().to_owned());
            }
        }
        Ok(filled)
    }

    /// Adds an order's effect on the statistics.
    pub fn apply_stats(&mut self, delta: &StatsDelta) {
        self.customer.stats.apply(delta, None);
    }

    /// Removes personal data: contact details, the nick (replaced by a
    /// pseudonym), birthday, region, tags, attributes and consent. Statistics
    /// and orders stay.
    pub fn erase(&mut self) {
        self.sealed.clear();
        self.customer.masked.clear();
        self.phone_index = None;
        self.customer.buyer_nick = format!("erased:{}", self.customer.id);
        self.customer.birthday = None;
        self.customer.gender = 0;
        self.customer.region.clear();
        self.customer.tags.clear();
        self.customer.attributes.clear();
        self.customer.consents.clear();
        self.customer.erased_at = Some(now_micros());
    }

    pub(crate) fn values(&self) -> Vec<Value> {
        let c = &self.customer;
        let masks: BTreeMap<&str, &String> = c.masked.iter().map(|(f, m)| (f.name(), m)).collect();
        let consents: BTreeMap<String, &Consent> =
            c.consents.iter().map(|(k, v)| (k.to_string(), v)).collect();
        let sealed = |f: ContactField| Value::Bytes(self.sealed.get(&f).cloned());
        [
            self.shop_id.clone().into(),
            c.id.clone().into(),
            c.buyer_nick.clone().into(),
            sealed(ContactField::Name),
            sealed(ContactField::Phone),
            sealed(ContactField::Address),
            sealed(ContactField::WechatId),
            sealed(ContactField::Email),
            to_json(&masks).into(),
            self.phone_index.clone().into(),
            c.birthday.map(|b| b.year).filter(|y| *y != 0).into(),
            c.birthday.map(|b| b.month).into(),
            c.birthday.map(|b| b.day).into(),
            c.gender.into(),
            c.region.clone().into(),
        ]
        .into_iter()
        .chain(self.statistics())
        .chain([
            to_json(&c.tags).into(),
            to_json(&c.attributes).into(),
            to_json(&consents).into(),
            c.created_at.into(),
            c.updated_at.into(),
            c.erased_at.into(),
        ])
        .collect()
    }

    /// The statistics columns, in row order (`order_count` … `categories`).
    fn statistics(&self) -> [Value; 7] {
        let s = &self.customer.stats;
        [
            s.order_count.into(),
            s.item_count.into(),
            s.spent_fen.into(),
            s.refunded_fen.into(),
            s.first_order_at.into(),
            s.last_order_at.into(),
            to_json(&s.categories).into(),
        ]
    }

    /// [`STATS_COLUMN_TYPES`]' values.
    pub(crate) fn stats_values(&self) -> Vec<Value> {
        let c = &self.customer;
        [
            self.shop_id.clone().into(),
            c.id.clone().into(),
            c.buyer_nick.clone().into(),
        ]
        .into_iter()
        .chain(self.statistics())
        .chain([c.created_at.into(), c.updated_at.into()])
        .collect()
    }

    /// Inserts the customer.
    async fn insert(&mut self, tx: &WriteTx) -> Result<(), CustomerError> {
        let placeholders: Vec<String> = (1..=28).map(|i| format!("${i}")).collect();
        tx.execute(
            &format!(
                "INSERT INTO customers ({COLUMNS}) VALUES ({})",
                placeholders.join(", ")
            ),
            self.values(),
        )
        .await?;
        self.sync_tags(tx).await
    }

    /// Inserts a new record or updates a known one (through
    /// [`Store::save_customer`], which also refreshes the cache).
    pub(crate) async fn save(&mut self, tx: &WriteTx, is_new: bool) -> Result<(), CustomerError> {
        if is_new {
            self.insert(tx).await
        } else {
            self.update(tx).await
        }
    }

    /// Writes every column back and stamps the update time.
    async fn update(&mut self, tx: &WriteTx) -> Result<(), CustomerError> {
        // Strictly increasing: the update time versions cache entries.
        self.customer.updated_at = now_micros().max(self.customer.updated_at + 1);
        let columns: Vec<&str> = COLUMNS.split(", ").collect();
        let sets: Vec<String> = columns
            .iter()
            .enumerate()
            .skip(2)
            .map(|(i, c)| format!("{} = ${}", c.trim(), i + 1))
            .collect();
        tx.execute(
            &format!(
                "UPDATE customers SET {} WHERE shop_id = $1 AND id = $2",
                sets.join(", ")
            ),
            self.values(),
        )
        .await?;
        self.sync_tags(tx).await
    }

    async fn sync_tags(&mut self, tx: &WriteTx) -> Result<(), CustomerError> {
        for gone in self
            .tags_before
            .iter()
            .filter(|t| !self.customer.tags.contains(t))
        {
            tx.execute(
                "DELETE FROM customer_tags WHERE shop_id = $1 AND tag = $2 AND customer_id = $3",
                vec![
                    self.shop_id.clone().into(),
                    gone.clone().into(),
                    self.customer.id.clone().into(),
                ],
            )
            .await?;
        }
        for new in self
            .customer
            .tags
            .iter()
            .filter(|t| !self.tags_before.contains(t))
        {
            tx.execute(
                "INSERT INTO customer_tags (shop_id, tag, customer_id) VALUES ($1, $2, $3)",
                vec![
                    self.shop_id.clone().into(),
                    new.clone().into(),
                    self.customer.id.clone().into(),
                ],
            )
            .await?;
        }
        self.tags_before = self.customer.tags.clone();
        Ok(())
    }
}

/// Filters of ListCustomers.
#[derive(Debug, Clone, Default)]
pub struct CustomerFilter {
    /// Has this tag.
    pub tag: Option<String>,
    /// Last order at or after, µs.
    pub last_order_after: Option<i64>,
    /// Last order before, µs.
    pub last_order_before: Option<i64>,
    /// At least this many orders.
    pub min_order_count: Option<i64>,
    /// At most this many orders.
    pub max_order_count: Option<i64>,
}

impl CustomerFilter {
    /// A stable text of the filters, for page tokens.
    pub fn describe(&self) -> String {
        format!("{self:?}")
    }
}

impl Store {
    async fn customer_where<C: ConnectionTrait>(
        &self,
        conn: &C,
        condition: &str,
        values: Vec<Value>,
        lock: bool,
    ) -> Result<Option<CustomerRecord>, CustomerError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM customers WHERE {condition}{}",
            if lock { self.lock_suffix() } else { "" }
        );
        let stmt = Statement::from_sql_and_values(self.db.backend(), self.db.sql(&sql), values);
        match conn.query_one_raw(stmt).await? {
            Some(row) => Ok(Some(CustomerRecord::from_row(
                CustomerRow::from_query_result(&row, "")?,
            )?)),
            None => Ok(None),
        }
    }

    /// Reads a customer by id.
    pub async fn customer(&self, shop_id: &str, id: &str) -> Result<CustomerRecord, CustomerError> {
        self.customer_where(
            self.db.conn(),
            "shop_id = $1 AND id = $2",
            vec![shop_id.into(), id.into()],
            false,
        )
        .await?
        .ok_or(CustomerError::CustomerNotFound)
    }

    /// Reads the customers with these ids (unknown ids are left out).
    pub async fn customers_by_ids(
        &self,
        shop_id: &str,
        ids: &[String],
    ) -> Result<Vec<CustomerRecord>, CustomerError> {
        huitou_storage::bulk::query_with_keys(
            self.db.conn(),
            &format!("SELECT {COLUMNS} FROM customers WHERE shop_id = $1 AND id {{keys}}"),
            vec![shop_id.into()],
            ids,
        )
        .await?
        .iter()
        .map(|row| CustomerRecord::from_row(CustomerRow::from_query_result(row, "")?))
        .collect()
    }

    /// Reads a customer by buyer nick.
    pub async fn customer_by_nick(
        &self,
        shop_id: &str,
        nick: &str,
    ) -> Result<CustomerRecord, CustomerError> {
        self.customer_where(
            self.db.conn(),
            "shop_id = $1 AND buyer_nick = $2",
            vec![shop_id.into(), nick.into()],
            false,
        )
        .await?
        .ok_or(CustomerError::CustomerNotFound)
    }

    /// Reads the customer with this normalised phone.
    pub async fn customer_by_phone(
        &self,
        shop_id: &str,
        phone: &str,
    ) -> Result<CustomerRecord, CustomerError> {
        let index = self.vault.blind_index(shop_id, "phone", phone);
        self.customer_where(
            self.db.conn(),
            "shop_id = $1 AND phone_index = $2 ORDER BY id LIMIT 1",
            vec![shop_id.into(), index.into()],
            false,
        )
        .await?
        .ok_or(CustomerError::CustomerNotFound)
    }

    /// Reads and locks a customer by id inside `tx`.
    pub async fn lock_customer(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        id: &str,
    ) -> Result<CustomerRecord, CustomerError> {
        self.customer_where(
            &**tx,
            "shop_id = $1 AND id = $2",
            vec![shop_id.into(), id.into()],
            true,
        )
        .await?
        .ok_or(CustomerError::CustomerNotFound)
    }

    /// Reads and locks a live customer by id inside `tx`; erased customers
    /// cannot change.
    pub async fn lock_live_customer(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        id: &str,
    ) -> Result<CustomerRecord, CustomerError> {
        let record = self.lock_customer(tx, shop_id, id).await?;
        if record.customer.erased_at.is_some() {
            return Err(CustomerError::Erased);
        }
        Ok(record)
    }

    /// Reads and locks the customer with this nick inside `tx`, or starts a
    /// new one (`true` in the second place; written by [`CustomerRecord::save`]).
    pub async fn lock_or_create_by_nick(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        nick: &str,
    ) -> Result<(CustomerRecord, bool), CustomerError> {
        if let Some(found) = self
            .customer_where(
                &**tx,
                "shop_id = $1 AND buyer_nick = $2",
                vec![shop_id.into(), nick.into()],
                true,
            )
            .await?
        {
            return Ok((found, false));
        }
        Ok((CustomerRecord::new(shop_id, nick), true))
    }

    /// A page of customers after `after` (an id), oldest first.
    pub async fn list_customers(
        &self,
        shop_id: &str,
        filter: &CustomerFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CustomerRecord>, CustomerError> {
        let mut condition = String::from("shop_id = $1");
        let mut values: Vec<Value> = vec![shop_id.into()];
        let mut add = |clause: &str, v: Value, values: &mut Vec<Value>| {
            values.push(v);
            condition.push_str(&clause.replace("$?", &format!("${}", values.len())));
        };
        if let Some(after) = after {
            add(" AND id > $?", after.into(), &mut values);
        }
        if let Some(tag) = &filter.tag {
            add(
                " AND id IN (SELECT customer_id FROM customer_tags WHERE shop_id = $1 AND tag = $?)",
                tag.clone().into(),
                &mut values,
            );
        }
        // Each bound on a statistic comes with the bound it implies on its
        // indexed band (decision 0021), so the index narrows the scan.
        if let Some(t) = filter.last_order_after {
            add(" AND last_order_at >= $?", t.into(), &mut values);
            let period = schema::last_order_period(t);
            add(" AND last_order_period >= $?", period.into(), &mut values);
        }
        if let Some(t) = filter.last_order_before {
            add(" AND last_order_at < $?", t.into(), &mut values);
            let period = schema::last_order_period(t.saturating_sub(1));
            add(" AND last_order_period <= $?", period.into(), &mut values);
        }
        if let Some(n) = filter.min_order_count {
            add(" AND order_count >= $?", n.into(), &mut values);
            add(
                " AND order_band >= $?",
                schema::order_band(n).into(),
                &mut values,
            );
        }
        if let Some(n) = filter.max_order_count {
            add(" AND order_count <= $?", n.into(), &mut values);
            add(
                " AND order_band <= $?",
                schema::order_band(n).into(),
                &mut values,
            );
        }
        let sql =
            format!("SELECT {COLUMNS} FROM customers WHERE {condition} ORDER BY id LIMIT {limit}");
        let stmt = Statement::from_sql_and_values(self.db.backend(), self.db.sql(&sql), values);
        let rows = self.db.conn().query_all_raw(stmt).await?;
        rows.iter()
            .map(|r| CustomerRecord::from_row(CustomerRow::from_query_result(r, "")?))
            .collect()
    }

    /// The type each attribute name has in the shop, for the names given.
    pub async fn attribute_types(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        names: &[&str],
    ) -> Result<BTreeMap<String, String>, CustomerError> {
        let mut out = BTreeMap::new();
        for name in names {
            let rows = tx
                .query_all(
                    "SELECT value_type FROM attribute_types WHERE shop_id = $1 AND name = $2",
                    vec![shop_id.into(), (*name).into()],
                )
                .await?;
            if let Some(row) = rows.first() {
                let t: String = row.try_get("", "value_type")?;
                out.insert((*name).to_owned(), t);
            }
        }
        Ok(out)
    }

    /// Fixes the type of a new attribute name; the type the name holds
    /// afterwards. Another request may have fixed it since this one looked
    /// (on PostgreSQL the insert then waits for it and does nothing), so
    /// the answer can differ from `value`'s type.
    pub async fn define_attribute(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        name: &str,
        value: &Attribute,
    ) -> Result<String, CustomerError> {
        let inserted = tx
            .execute(
                "INSERT INTO attribute_types (shop_id, name, value_type, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (shop_id, name) DO NOTHING",
                vec![shop_id.into(), name.into(), value.type_name().into(), now_micros().into()],
            )
            .await?;
        if inserted == 1 {
            return Ok(value.type_name().to_owned());
        }
        let held = self.attribute_types(tx, shop_id, &[name]).await?;
        held.get(name).cloned().ok_or_else(|| {
            CustomerError::Storage(huitou_storage::StorageError::Other(format!(
                "attribute type {name} neither written nor found"
            )))
        })
    }

    /// Records a consent decision in the history.
    pub async fn record_consent_change(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        customer_id: &str,
        channel: i32,
        consent: &Consent,
    ) -> Result<(), CustomerError> {
        tx.execute(
            "INSERT INTO consent_changes (shop_id, id, customer_id, channel, granted, source, decided_at, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            vec![
                shop_id.into(),
                new_id().into(),
                customer_id.into(),
                channel.into(),
                consent.granted.into(),
                consent.source.clone().into(),
                consent.decided_at.into(),
                now_micros().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Removes the consent history of an erased customer.
    pub async fn forget_consent_history(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        customer_id: &str,
    ) -> Result<(), CustomerError> {
        tx.execute(
            "DELETE FROM consent_changes WHERE shop_id = $1 AND customer_id = $2",
            vec![shop_id.into(), customer_id.into()],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_columns_are_customer_columns_in_the_same_order_as_their_values() {
        let names: Vec<&str> = STATS_COLUMN_TYPES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, STATS_COLUMNS, "a name is missing from COLUMN_TYPES");
        let record = CustomerRecord::new("shop", "nick");
        assert_eq!(record.stats_values().len(), STATS_COLUMNS.len());
        assert_eq!(record.values().len(), COLUMN_TYPES.len());
    }
}
