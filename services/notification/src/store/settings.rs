//! A shop's send policy, holiday calendar and trigger rules, stored as
//! their contract messages.

use huitou_proto::notification::v1 as pb;
use huitou_storage::{StorageError, WriteTx, now_micros};
use prost::Message;
use sea_orm::ConnectionTrait;

use super::{Store, read_on};
use crate::error::NotificationError;
use crate::policy::Policy;

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, NotificationError> {
    M::decode(bytes).map_err(|e| StorageError::Other(format!("stored {what}: {e}")).into())
}

impl Store {
    /// The shop's policy; the defaults until one is set.
    pub async fn policy(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
    ) -> Result<Policy, NotificationError> {
        let rows = read_on(
            conn,
            &self.db,
            "SELECT policy FROM send_policies WHERE shop_id = $1",
            vec![shop_id.into()],
        )
        .await?;
        match rows.first() {
            Some(row) => {
                let bytes: Vec<u8> = row.try_get("", "policy")?;
                let stored: pb::SendPolicy = decode(&bytes, "policy")?;
                Ok(Policy::check(Some(&stored))?)
            }
            None => Ok(Policy::default()),
        }
    }

    /// Replaces the policy and hands every deferred message of the shop
    /// back to the dispatcher, which places it under the new windows; how
    /// many.
    pub async fn set_policy(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        policy: &Policy,
    ) -> Result<i64, NotificationError> {
        let now = now_micros();
        tx.execute(
            "INSERT INTO send_policies (shop_id, policy, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (shop_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
            vec![
                shop_id.into(),
                policy.to_pb().encode_to_vec().into(),
                now.into(),
            ],
        )
        .await?;
        let moved = tx
            .execute(
                "UPDATE messages SET due_at = $2, updated_at = $2
                 WHERE shop_id = $1 AND status = 2",
                vec![shop_id.into(), now.into()],
            )
            .await?;
        self.after_settings_change(tx, shop_id);
        Ok(moved as i64)
    }

    fn after_settings_change(&self, tx: &WriteTx, shop_id: &str) {
        let (store, shop) = (self.clone(), shop_id.to_owned());
        tx.after_commit(Box::pin(async move { store.forget_settings(&shop) }));
    }

    /// Adds or replaces a holiday; deferred messages are placed again.
    pub async fn set_holiday(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        holiday: &pb::Holiday,
    ) -> Result<(), NotificationError> {
        tx.execute(
            "INSERT INTO holidays (shop_id, date, holiday) VALUES ($1, $2, $3)
             ON CONFLICT (shop_id, date) DO UPDATE SET holiday = excluded.holiday",
            vec![
                shop_id.into(),
                holiday.date.clone().into(),
                holiday.encode_to_vec().into(),
            ],
        )
        .await?;
        tx.execute(
            "UPDATE messages SET due_at = $2 WHERE shop_id = $1 AND status = 2",
            vec![shop_id.into(), now_micros().into()],
        )
        .await?;
        self.after_settings_change(tx, shop_id);
        Ok(())
    }

    /// Removes a holiday.
    pub async fn delete_holiday(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        date: &str,
    ) -> Result<(), NotificationError> {
        let n = tx
            .execute(
                "DELETE FROM holidays WHERE shop_id = $1 AND date = $2",
                vec![shop_id.into(), date.into()],
            )
            .await?;
        if n == 0 {
            return Err(NotificationError::HolidayNotFound);
        }
        tx.execute(
            "UPDATE messages SET due_at = $2 WHERE shop_id = $1 AND status = 2",
            vec![shop_id.into(), now_micros().into()],
        )
        .await?;
        self.after_settings_change(tx, shop_id);
        Ok(())
    }

    /// The holidays from `from_date` (YYYY-MM-DD; empty for all), by date.
    pub async fn holidays(
        &self,
        shop_id: &str,
        from_date: &str,
    ) -> Result<Vec<pb::Holiday>, NotificationError> {
        let rows = self
            .read(
                "SELECT holiday FROM holidays WHERE shop_id = $1 AND date >= $2 ORDER BY date",
                vec![shop_id.into(), from_date.into()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get("", "holiday")?;
                decode(&bytes, "holiday")
            })
            .collect()
    }

    /// Sets the rule of one trigger.
    pub async fn set_trigger_rule(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        rule: &pb::TriggerRule,
    ) -> Result<(), NotificationError> {
        tx.execute(
            "INSERT INTO trigger_rules (shop_id, trigger_kind, rule) VALUES ($1, $2, $3)
             ON CONFLICT (shop_id, trigger_kind) DO UPDATE SET rule = excluded.rule",
            vec![
                shop_id.into(),
                rule.trigger.into(),
                rule.encode_to_vec().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// The shop's trigger rules.
    pub async fn trigger_rules(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
    ) -> Result<Vec<pb::TriggerRule>, NotificationError> {
        let rows = read_on(
            conn,
            &self.db,
            "SELECT rule FROM trigger_rules WHERE shop_id = $1 ORDER BY trigger_kind",
            vec![shop_id.into()],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get("", "rule")?;
                decode(&bytes, "trigger rule")
            })
            .collect()
    }

    /// The enabled rule of one trigger, if any.
    pub async fn trigger_rule(
        &self,
        conn: &impl ConnectionTrait,
        shop_id: &str,
        trigger: pb::Trigger,
    ) -> Result<Option<pb::TriggerRule>, NotificationError> {
        Ok(self
            .trigger_rules(conn, shop_id)
            .await?
            .into_iter()
            .find(|r| r.trigger == trigger as i32 && r.enabled))
    }
}
