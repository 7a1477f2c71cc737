//! Templates, stored as their contract message.

use huitou_proto::notification::v1 as pb;
use huitou_proto::timestamp_from_micros;
use huitou_storage::{WriteTx, now_micros};
use prost::Message;
use sea_orm::{ConnectionTrait, QueryResult};

use super::{Store, new_id, read_on};
use crate::error::NotificationError;

fn from_row(row: &QueryResult) -> Result<pb::Template, NotificationError> {
    let bytes: Vec<u8> = row.try_get("", "template")?;
    let mut t = pb::Template::decode(bytes.as_slice())
        .map_err(|e| huitou_storage::StorageError::Other(format!("stored template: {e}")))?;
    t.create_time = Some(timestamp_from_micros(row.try_get("", "created_at")?));
    t.update_time = Some(timestamp_from_micros(row.try_get("", "updated_at")?));
    Ok(t)
}

fn stored(t: &pb::Template) -> Vec<u8> {
    let mut t = t.clone();
    t.create_time = None;
    t.update_time = None;
    t.encode_to_vec()
}

impl Store {
    /// Stores a new, checked template; it starts active.
    pub async fn create_template(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        given: &pb::Template,
    ) -> Result<pb::Template, NotificationError> {
        let now = now_micros();
        let mut t = given.clone();
        t.id = new_id();
        t.active = true;
        t.name = t.name.trim().to_owned();
        t.signature = t.signature.trim().to_owned();
        tx.execute(
            "INSERT INTO notification_templates (shop_id, id, template, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $4)",
            vec![
                shop_id.into(),
                t.id.clone().into(),
                stored(&t).into(),
                now.into(),
            ],
        )
        .await?;
        t.create_time = Some(timestamp_from_micros(now));
        t.update_time = t.create_time;
        Ok(t)
    }

    /// Replaces a template's stored form.
    pub async fn save_template(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        t: &pb::Template,
    ) -> Result<pb::Template, NotificationError> {
        let now = now_micros();
        tx.execute(
            "UPDATE notification_templates SET template = $3, updated_at = $4
             WHERE shop_id = $1 AND id = $2",
            vec![
                shop_id.into(),
                t.id.clone().into(),
                stored(t).into(),
                now.into(),
            ],
        )
        .await?;
        let mut t = t.clone();
        t.update_time = Some(timestamp_from_micros(now));
        Ok(t)
    }

    /// A template of the shop.
    pub async fn load_template(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        id: &str,
    ) -> Result<pb::Template, NotificationError> {
        let rows = read_on(
            conn,
            &self.db,
            "SELECT template, created_at, updated_at FROM notification_templates
             WHERE shop_id = $1 AND id = $2",
            vec![shop_id.into(), id.into()],
        )
        .await?;
        rows.first()
            .map(from_row)
            .transpose()?
            .ok_or(NotificationError::TemplateNotFound)
    }

    /// A page of templates, newest first, before id `before`.
    pub async fn list_templates(
        &self,
        shop_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<pb::Template>, NotificationError> {
        let rows = self
            .read(
                "SELECT template, created_at, updated_at FROM notification_templates
                 WHERE shop_id = $1 AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3",
                vec![
                    shop_id.into(),
                    before.unwrap_or_default().into(),
                    (limit as i64).into(),
                ],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }
}
