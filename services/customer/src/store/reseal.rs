//! Moving personal data to the active key after a key rotation: every
//! sealed field whose key id is not the active one is opened with its own
//! key and sealed again with the active one. Once a run reports nothing
//! left, the old key can be removed from the settings.

use huitou_privacy::SealContext;
use huitou_storage::bulk::{self, Col};
use sea_orm::{FromQueryResult, Value};

use super::Store;
use crate::domain::customer::ContactField;
use crate::error::CustomerError;

/// Customers per transaction.
const BATCH: usize = 500;

/// The sealed columns, in [`SealedRow`] order, with their field.
const SEALED: [(&str, ContactField); 5] = [
    ("name_sealed", ContactField::Name),
    ("phone_sealed", ContactField::Phone),
    ("address_sealed", ContactField::Address),
    ("wechat_id_sealed", ContactField::WechatId),
    ("email_sealed", ContactField::Email),
];

const UPDATE_COLUMNS: [(&str, Col); 7] = [
    ("shop_id", Col::Text),
    ("id", Col::Text),
    ("name_sealed", Col::Bytes),
    ("phone_sealed", Col::Bytes),
    ("address_sealed", Col::Bytes),
    ("wechat_id_sealed", Col::Bytes),
    ("email_sealed", Col::Bytes),
];

#[derive(FromQueryResult)]
struct SealedRow {
    shop_id: String,
    id: String,
    name_sealed: Option<Vec<u8>>,
    phone_sealed: Option<Vec<u8>>,
    address_sealed: Option<Vec<u8>>,
    wechat_id_sealed: Option<Vec<u8>>,
    email_sealed: Option<Vec<u8>>,
}

/// What a re-seal run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Customers read.
    pub customers: u64,
    /// Fields sealed again under the active key.
    pub fields: u64,
}

impl Store {
    /// Seals every field under a non-active key again under the active key.
    pub async fn reseal_personal_data(&self) -> Result<Resealed, CustomerError> {
        let mut total = Resealed::default();
        let mut after: Option<(String, String)> = None;
        loop {
            let (done, last) = self
                .write_answer(|tx, store| {
                    let after = after.clone();
                    Box::pin(async move {
                        let mut values: Vec<Value> = Vec::new();
                        let mut sql = String::from(
                            "SELECT shop_id, id, name_sealed, phone_sealed, address_sealed, wechat_id_sealed, email_sealed
                             FROM customers",
                        );
                        if let Some((shop, id)) = &after {
                            values.push(shop.clone().into());
                            values.push(id.clone().into());
                            sql.push_str(" WHERE (shop_id, id) > ($1, $2)");
                        }
                        sql.push_str(&format!(
                            " ORDER BY shop_id, id LIMIT {BATCH}{}",
                            store.lock_suffix()
                        ));
                        let rows = tx.query_all(&sql, values).await?;
                        let mut done = Resealed::default();
                        let mut updates = Vec::new();
                        let mut last = None;
                        for r in &rows {
                            let row = SealedRow::from_query_result(r, "")?;
                            done.customers += 1;
                            let mut sealed = [
                                row.name_sealed,
                                row.phone_sealed,
                                row.address_sealed,
                                row.wechat_id_sealed,
                                row.email_sealed,
                            ];
                            let mut changed = false;
                            for (value, (_, field)) in sealed.iter_mut().zip(SEALED) {
                                let Some(bytes) = value.as_ref() else {
                                    continue;
                                };
                                if !store.vault.is_stale(bytes) {
                                    continue;
                                }
                                let context = SealContext {
                                    shop_id: &row.shop_id,
                                    field: field.name(),
                                };
                                let plain = store.vault.open(context, bytes)?;
                                *value = Some(store.vault.seal(context, &plain)?);
                                done.fields += 1;
                                changed = true;
                            }
                            if changed {
                                let mut update: Vec<Value> =
                                    vec![row.shop_id.clone().into(), row.id.clone().into()];
                                update.extend(sealed.into_iter().map(Value::Bytes));
                                updates.push(update);
                            }
                            last = Some((row.shop_id, row.id));
                        }
                        bulk::update(tx, "customers", &UPDATE_COLUMNS, 2, updates).await?;
                        Ok((done, last))
                    })
                })
                .await?;
            total.customers += done.customers;
            total.fields += done.fields;
            match last {
                Some(key) if done.customers as usize == BATCH => after = Some(key),
                _ => return Ok(total),
            }
        }
    }
}
