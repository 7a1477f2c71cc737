//! The personal-data audit log: who saw or erased what, when and why.

use huitou_runtime::Caller;
use huitou_storage::{WriteTx, now_micros};
use sea_orm::{ConnectionTrait, FromQueryResult, Statement, Value};

use super::{Store, new_id};
use crate::error::CustomerError;

/// An action worth auditing (wire numbers of huitou.customer.v1.AuditAction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A contact field shown in clear.
    RevealContact = 1,
    /// Personal data erased.
    EraseCustomer = 2,
    /// Addresses read for sending messages.
    ResolveContacts = 3,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct AuditEntry {
    /// Id (time-ordered).
    pub id: String,
    /// Action wire number.
    pub action: i32,
    /// The customer.
    pub customer_id: String,
    /// Contact field wire number, 0 when none.
    pub field: i32,
    /// Reason given.
    pub reason: String,
    /// Key that did it.
    pub actor_key_id: String,
    /// Its role.
    pub actor_role: String,
    /// When, µs.
    pub created_at: i64,
}

impl Store {
    /// Writes an audit entry in `tx`; its id.
    pub async fn audit(
        &self,
        tx: &WriteTx,
        caller: &Caller,
        action: AuditAction,
        customer_id: &str,
        field: i32,
        reason: &str,
    ) -> Result<String, CustomerError> {
        let id = new_id();
        tx.execute(
            "INSERT INTO audit_entries (shop_id, id, action, customer_id, field, reason, actor_key_id, actor_role, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            vec![
                caller.shop_id.clone().into(),
                id.clone().into(),
                (action as i32).into(),
                customer_id.into(),
                field.into(),
                reason.into(),
                caller.key_id.clone().into(),
                caller.role.as_str().into(),
                now_micros().into(),
            ],
        )
        .await?;
        Ok(id)
    }

    /// Writes one audit entry per customer in `tx`, in one statement.
    pub async fn audit_each(
        &self,
        tx: &WriteTx,
        caller: &Caller,
        action: AuditAction,
        customer_ids: &[String],
        field: i32,
        reason: &str,
    ) -> Result<(), CustomerError> {
        use huitou_storage::bulk::{self, Col};
        let now = now_micros();
        let rows = customer_ids
            .iter()
            .map(|customer| {
                vec![
                    caller.shop_id.clone().into(),
                    new_id().into(),
                    (action as i32).into(),
                    customer.clone().into(),
                    field.into(),
                    reason.into(),
                    caller.key_id.clone().into(),
                    caller.role.as_str().into(),
                    now.into(),
                ]
            })
            .collect();
        bulk::insert(
            tx,
            "audit_entries",
            &[
                ("shop_id", Col::Text),
                ("id", Col::Text),
                ("action", Col::Int),
                ("customer_id", Col::Text),
                ("field", Col::Int),
                ("reason", Col::Text),
                ("actor_key_id", Col::Text),
                ("actor_role", Col::Text),
                ("created_at", Col::BigInt),
            ],
            rows,
            "",
        )
        .await?;
        Ok(())
    }

    /// A page of audit entries, newest first, before `before` (an id).
    pub async fn audit_entries(
        &self,
        shop_id: &str,
        customer_id: Option<&str>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, CustomerError> {
        let mut sql = String::from(
            "SELECT id, action, customer_id, field, reason, actor_key_id, actor_role, created_at
             FROM audit_entries WHERE shop_id = $1",
        );
        let mut values: Vec<Value> = vec![shop_id.into()];
        if let Some(c) = customer_id {
            values.push(c.into());
            sql.push_str(&format!(" AND customer_id = ${}", values.len()));
        }
        if let Some(b) = before {
            values.push(b.into());
            sql.push_str(&format!(" AND id < ${}", values.len()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let stmt = Statement::from_sql_and_values(self.db.backend(), self.db.sql(&sql), values);
        let rows = self.db.conn().query_all_raw(stmt).await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry::from_query_result(r, ""))
            .collect::<Result<_, _>>()?)
    }
}
