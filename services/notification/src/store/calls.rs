//! Staff call tasks and the complaints they can raise.

use huitou_proto::notification::v1 as pb;
use huitou_proto::timestamp_from_micros;
use huitou_storage::{WriteTx, now_micros};
use sea_orm::QueryResult;

use super::recipients::RecipientChange;
use super::{Store, new_id};
use crate::error::NotificationError;

const COLUMNS: &str = "id, customer_id, order_no, reason, outcome, note, created_at, closed_at";

fn task(r: &QueryResult) -> Result<pb::CallTask, NotificationError> {
    Ok(pb::CallTask {
        id: r.try_get("", "id")?,
        customer_id: r.try_get("", "customer_id")?,
        order_no: r.try_get("", "order_no")?,
        reason: r.try_get("", "reason")?,
        outcome: r.try_get("", "outcome")?,
        note: r.try_get("", "note")?,
        create_time: Some(timestamp_from_micros(r.try_get("", "created_at")?)),
        close_time: r
            .try_get::<Option<i64>>("", "closed_at")?
            .map(timestamp_from_micros),
    })
}

impl Store {
    /// Opens a call task once per `dedupe_key`.
    pub async fn open_call_task(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        customer_id: &str,
        order_no: &str,
        reason: &str,
        dedupe_key: &str,
    ) -> Result<(), NotificationError> {
        tx.execute(
            "INSERT INTO call_tasks (shop_id, id, customer_id, order_no, reason, dedupe_key, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (shop_id, dedupe_key) DO NOTHING",
            vec![
                shop_id.into(),
                new_id().into(),
                customer_id.into(),
                order_no.into(),
                reason.into(),
                dedupe_key.into(),
                now_micros().into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// A page of call tasks, oldest first, after id `after`.
    pub async fn call_tasks(
        &self,
        shop_id: &str,
        open_only: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<pb::CallTask>, NotificationError> {
        let rows = self
            .read(
                &format!(
                    "SELECT {COLUMNS} FROM call_tasks WHERE shop_id = $1 AND ($2 = 0 OR outcome = 0)
                     AND id > $3 ORDER BY id LIMIT $4"
                ),
                vec![
                    shop_id.into(),
                    i32::from(open_only).into(),
                    after.unwrap_or_default().into(),
                    (limit as i64).into(),
                ],
            )
            .await?;
        rows.iter().map(task).collect()
    }

    /// Closes a task with its outcome; a complaint stops marketing to the
    /// customer until it is closed.
    pub async fn close_call_task(
        &self,
        tx: &WriteTx,
        shop_id: &str,
        id: &str,
        outcome: pb::CallOutcome,
        note: &str,
    ) -> Result<pb::CallTask, NotificationError> {
        let rows = tx
            .query_all(
                &format!(
                    "SELECT {COLUMNS} FROM call_tasks WHERE shop_id = $1 AND id = $2{}",
                    self.for_update()
                ),
                vec![shop_id.into(), id.into()],
            )
            .await?;
        let mut t = task(rows.first().ok_or(NotificationError::CallTaskNotFound)?)?;
        if t.outcome != 0 {
            return Err(NotificationError::CallTaskClosed);
        }
        let now = now_micros();
        tx.execute(
            "UPDATE call_tasks SET outcome = $3, note = $4, closed_at = $5 WHERE shop_id = $1 AND id = $2",
            vec![
                shop_id.into(),
                id.into(),
                (outcome as i32).into(),
                note.into(),
                now.into(),
            ],
        )
        .await?;
        if outcome == pb::CallOutcome::ComplaintRaised {
            self.change_recipient(
                tx,
                shop_id,
                &t.customer_id,
                RecipientChange::Complaint(true),
            )
            .await?;
        }
        t.outcome = outcome as i32;
        t.note = note.to_owned();
        t.close_time = Some(timestamp_from_micros(now));
        Ok(t)
    }
}
