//! Write transactions as every service runs them: once per request id
//! (AIP-155), retried when they lose a race that a retry resolves, and
//! waking the relay after commit.

use huitou_runtime::Failure;
use huitou_runtime::auth::BoxFuture;
use prost::Message;

use crate::error::StorageError;
use crate::idempotency::{self, IdempotencyKey};
use crate::outbox::Outbox;
use crate::{Database, WriteTx};

/// Attempts of a write that lost a race (a unique key taken by a concurrent
/// writer, a deadlock, a serialisation failure) before the caller sees it.
pub const WRITE_ATTEMPTS: usize = 4;

/// An error that may go away when the transaction is run again.
pub trait Retryable {
    /// True when running the transaction again may succeed.
    fn is_retryable(&self) -> bool;
}

impl Retryable for StorageError {
    fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Conflict(_) | StorageError::Retry(_))
    }
}

impl Retryable for Failure {
    fn is_retryable(&self) -> bool {
        self.reason == "TRANSACTION_CONFLICT"
    }
}

/// Runs `attempt` until it succeeds, fails for good, or has lost
/// [`WRITE_ATTEMPTS`] races.
pub async fn retrying<R, E, Fut>(mut attempt: impl FnMut() -> Fut) -> Result<R, E>
where
    E: Retryable + std::fmt::Display,
    Fut: std::future::Future<Output = Result<R, E>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if e.is_retryable() && tries < WRITE_ATTEMPTS => {
                tracing::debug!(tries, error = %e, "write lost a race; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(2 * tries as u64)).await;
            }
            other => return other,
        }
    }
}

/// Runs `work` over `context` in one write transaction, once per request
/// id: a retry of an answered request returns the stored answer and changes
/// nothing. Lost races are retried; the relay is woken after commit.
pub async fn once_per_request<C, R, E, F>(
    db: &Database,
    outbox: &Outbox,
    key: Option<&IdempotencyKey>,
    context: &C,
    work: F,
) -> Result<R, E>
where
    C: Sync,
    R: Message + Default,
    E: Retryable + std::fmt::Display + From<StorageError> + From<Failure>,
    F: for<'t> Fn(&'t WriteTx, &'t C) -> BoxFuture<'t, Result<R, E>>,
{
    retrying(|| async {
        let tx = db.begin().await?;
        if let Some(key) = key
            && let Some(answer) = idempotency::claim::<R>(&tx, key).await?
        {
            return Ok(answer);
        }
        let answer = work(&tx, context).await?;
        if let Some(key) = key {
            idempotency::remember(&tx, key, &answer).await?;
        }
        tx.commit().await?;
        outbox.notify();
        Ok(answer)
    })
    .await
}

/// Runs `work` over `context` in one write transaction with the retries of
/// [`once_per_request`], for answers not stored under a request id.
pub async fn transaction<C, R, E, F>(
    db: &Database,
    outbox: &Outbox,
    context: &C,
    work: F,
) -> Result<R, E>
where
    C: Sync,
    E: Retryable + std::fmt::Display + From<StorageError>,
    F: for<'t> Fn(&'t WriteTx, &'t C) -> BoxFuture<'t, Result<R, E>>,
{
    retrying(|| async {
        let tx = db.begin().await?;
        let answer = work(&tx, context).await?;
        tx.commit().await?;
        outbox.notify();
        Ok(answer)
    })
    .await
}

/// The next batch for an intake's writer: waits for one job, then takes
/// whatever else is already queued, up to `max`. Nobody waits for a timer:
/// under light load a batch is one job; under heavy load it grows by itself
/// while the previous batch is written. `None` once every sender is gone.
pub async fn next_batch<T>(
    jobs: &mut tokio::sync::mpsc::Receiver<T>,
    max: usize,
) -> Option<Vec<T>> {
    let first = jobs.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}
