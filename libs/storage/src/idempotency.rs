//! Request ids (AIP-155): a retried request returns the first answer and
//! changes nothing; the same id with a different request is refused.
//!
//! The key is claimed inside the same transaction as the change and the
//! answer stored before commit, so "done" and "remembered" can never
//! disagree. Two concurrent calls with one id serialise on the key's row: the
//! second waits for the first to commit, then replays its answer.

use huitou_runtime::auth::hex;
use huitou_runtime::{Failure, FieldViolations};
use prost::Message;
use sea_orm::Value;
use sha2::{Digest, Sha256};

use crate::db::{Database, WriteTx};
use crate::error::StorageError;
use crate::now_micros;

/// How long answers are kept by default: 48 hours, twice what AIP-155 asks.
pub const DEFAULT_RETENTION_HOURS: u64 = 48;

/// One request's idempotency key.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    shop_id: String,
    request_id: String,
    method: &'static str,
    request_hash: String,
}

/// Checks a caller-supplied request id: empty (no idempotency) or 1-128
/// printable ASCII characters.
pub fn check_request_id(request_id: &str, violations: &mut FieldViolations) {
    if !request_id.is_empty()
        && (request_id.len() > 128 || !request_id.bytes().all(|b| b.is_ascii_graphic()))
    {
        violations.add(
            "request_id",
            "must be 1-128 printable ASCII characters without spaces",
        );
    }
}

impl IdempotencyKey {
    /// The key of `request` for `method`; `None` when no request id was given.
    pub fn for_request<M: Message>(
        shop_id: &str,
        method: &'static str,
        request_id: &str,
        request: &M,
    ) -> Option<Self> {
        if request_id.is_empty() {
            return None;
        }
        // prost encodes fields in a fixed order and maps as BTreeMaps (see
        // libs/proto/build.rs), so equal requests hash equally.
        let hash = hex(&Sha256::digest(request.encode_to_vec()));
        Some(Self {
            shop_id: shop_id.to_owned(),
            request_id: request_id.to_owned(),
            method,
            request_hash: hash,
        })
    }
}

impl IdempotencyKey {
    /// The request's hash, for stores that keep their own record of a
    /// request (bulk runs).
    pub fn request_hash(&self) -> &str {
        &self.request_hash
    }
}

/// Claims `key` in `tx`. `Some(answer)` when the request was already done:
/// return that answer and commit nothing.
pub async fn claim<R: Message + Default>(
    tx: &WriteTx,
    key: &IdempotencyKey,
) -> Result<Option<R>, Failure> {
    let inserted = tx
        .execute(
            "INSERT INTO idempotency_keys (shop_id, request_id, method, request_hash, response, created_at)
             VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (shop_id, request_id) DO NOTHING",
            vec![
                key.shop_id.clone().into(),
                key.request_id.clone().into(),
                key.method.into(),
                key.request_hash.clone().into(),
                now_micros().into(),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(None);
    }
    let rows = tx
        .query_all(
            "SELECT method, request_hash, response FROM idempotency_keys WHERE shop_id = $1 AND request_id = $2",
            vec![key.shop_id.clone().into(), key.request_id.clone().into()],
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| StorageError::Retry("idempotency key vanished".into()))?;
    let method: String = row.try_get("", "method").map_err(StorageError::from)?;
    let hash: String = row
        .try_get("", "request_hash")
        .map_err(StorageError::from)?;
    let response: Option<Vec<u8>> = row.try_get("", "response").map_err(StorageError::from)?;
    if method != key.method || hash != key.request_hash {
        let mut v = FieldViolations::new();
        v.add(
            "request_id",
            format!("was already used for a different request ({method}); use a new request id"),
        );
        let mut failure = v.into_failure();
        failure.reason = "REQUEST_ID_REUSED";
        return Err(failure);
    }
    match response {
        Some(bytes) => R::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| Failure::internal(format!("stored answer unreadable: {e}"))),
        None => Err(StorageError::Retry("request still in progress".into()).into()),
    }
}

/// Stores the answer of a claimed key, in the same transaction as the change.
pub async fn remember<R: Message>(
    tx: &WriteTx,
    key: &IdempotencyKey,
    answer: &R,
) -> Result<(), Failure> {
    tx.execute(
        "UPDATE idempotency_keys SET response = $1 WHERE shop_id = $2 AND request_id = $3",
        vec![
            Value::Bytes(Some(answer.encode_to_vec())),
            key.shop_id.clone().into(),
            key.request_id.clone().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Forgets answers older than `retention`; returns how many.
pub async fn sweep(db: &Database, retention: std::time::Duration) -> Result<u64, StorageError> {
    let cutoff = now_micros() - retention.as_micros() as i64;
    db.execute(
        "DELETE FROM idempotency_keys WHERE created_at < $1",
        vec![cutoff.into()],
    )
    .await
}
