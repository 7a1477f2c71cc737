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
        let answered = async {
            if let Some(key) = key
                && let Some(answer) = idempotency::claim::<R>(&tx, key).await?
            {
                return Ok(answer);
            }
            let answer = work(&tx, context).await?;
            if let Some(key) = key {
                idempotency::remember(&tx, key, &answer).await?;
            }
            Ok(answer)
        }
        .await;
        finish(tx, outbox, answered).await
    })
    .await
}

/// Ends the transaction by `answered` ([`WriteTx::finish`]) and wakes the
/// relay after a commit.
async fn finish<R, E: From<StorageError>>(
    tx: WriteTx,
    outbox: &Outbox,
    answered: Result<R, E>,
) -> Result<R, E> {
    let answer = tx.finish(answered).await?;
    outbox.notify();
    Ok(answer)
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
        let answered = work(&tx, context).await;
        finish(tx, outbox, answered).await
    })
    .await
}

/// Lets an intake's next batch start: said by a batch once its statements
/// are written and only its commit is left. Dropping it says the same, so a
/// batch that fails early never holds the intake up.
pub struct Committing(Option<tokio::sync::OwnedSemaphorePermit>);

impl Committing {
    /// The batch is committing: the next one may be gathered and written.
    pub fn now(&mut self) {
        self.0.take();
    }
}

/// Batches written at once (statements sent, not yet committing). Two
/// measured worse for RecordOrder: the batches shrank (decision 0018).
pub const BATCHES_WRITING: usize = 1;

/// Batches in flight at once, committing or written.
pub const BATCHES_IN_FLIGHT: usize = 4;

/// Runs an intake: gathers the jobs queued on `jobs` into batches of at
/// most `max` and hands each to `write`, which runs in its own task.
///
/// The next batch is gathered as soon as the previous one says it is
/// [`Committing`], not when its commit returns: the flush to disk of one
/// batch overlaps the statements of the next, and the jobs that arrive
/// meanwhile make the next batch bigger. Nobody waits for a timer; under
/// light load a batch is one job.
///
/// Two batches in flight never share a `key` (for orders, the buyer): a
/// job whose key belongs to a batch not yet finished waits for it. So
/// batches never wait on each other's row locks, and a row one creates is
/// seen by the next. Jobs of one key keep their order.
pub async fn pipeline<J, K>(
    jobs: tokio::sync::mpsc::Receiver<J>,
    max: usize,
    key: impl Fn(&J) -> K,
    write: impl Fn(Vec<J>, Committing) -> BoxFuture<'static, ()>,
) where
    J: Send + 'static,
    K: Eq + std::hash::Hash + Clone + Send + 'static,
{
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    let writing = Arc::new(Semaphore::new(BATCHES_WRITING));
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let (finished, finished_keys) = tokio::sync::mpsc::unbounded_channel::<Vec<K>>();
    let mut gathering = Gathering {
        jobs,
        open: true,
        key,
        held: std::collections::VecDeque::new(),
        busy: std::collections::HashSet::new(),
        finished_keys,
    };
    loop {
        // Room first, so the jobs that arrive meanwhile join this batch.
        let (Ok(turn), Ok(slot)) = (
            writing.clone().acquire_owned().await,
            in_flight.clone().acquire_owned().await,
        ) else {
            return;
        };
        let Some((batch, keys)) = gathering.next(max).await else {
            return;
        };
        let written = write(batch, Committing(Some(turn)));
        // The keys go back when the batch is done, or if its task panics:
        // otherwise their jobs would be held for good.
        let release = Release {
            keys,
            to: finished.clone(),
        };
        tokio::spawn(async move {
            written.await;
            drop(slot);
            drop(release);
        });
    }
}

/// A batch's keys, handed back to the [`pipeline`] when dropped.
struct Release<K> {
    keys: Vec<K>,
    to: tokio::sync::mpsc::UnboundedSender<Vec<K>>,
}

impl<K> Drop for Release<K> {
    fn drop(&mut self) {
        let _ = self.to.send(std::mem::take(&mut self.keys));
    }
}

/// The jobs of a [`pipeline`] not yet in a batch, and the keys of the
/// batches in flight.
struct Gathering<J, K, F> {
    jobs: tokio::sync::mpsc::Receiver<J>,
    open: bool,
    key: F,
    /// Jobs whose key was in flight when they came, in arrival order.
    held: std::collections::VecDeque<J>,
    busy: std::collections::HashSet<K>,
    finished_keys: tokio::sync::mpsc::UnboundedReceiver<Vec<K>>,
}

impl<J, K, F> Gathering<J, K, F>
where
    K: Eq + std::hash::Hash + Clone,
    F: Fn(&J) -> K,
{
    /// The next batch and its keys (now in flight); waits for a job that
    /// can go. `None` once the queue is closed and nothing is held.
    async fn next(&mut self, max: usize) -> Option<(Vec<J>, Vec<K>)> {
        use tokio::sync::mpsc::error::TryRecvError;
        loop {
            while let Ok(keys) = self.finished_keys.try_recv() {
                self.release(keys);
            }
            let mut next = Batch {
                jobs: Vec::new(),
                keys: std::collections::HashSet::new(),
                blocked: std::collections::HashSet::new(),
                held: std::collections::VecDeque::new(),
            };
            for job in std::mem::take(&mut self.held) {
                let k = (self.key)(&job);
                next.place(job, k, &self.busy, max);
            }
            while self.open && next.jobs.len() < max {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        let k = (self.key)(&job);
                        next.place(job, k, &self.busy, max);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => self.open = false,
                }
            }
            let Batch {
                jobs: batch,
                keys,
                held: still_held,
                ..
            } = next;
            self.held = still_held;
            if !batch.is_empty() {
                let keys: Vec<K> = keys.into_iter().collect();
                self.busy.extend(keys.iter().cloned());
                return Some((batch, keys));
            }
            if !self.open && self.held.is_empty() {
                return None;
            }
            tokio::select! {
                job = self.jobs.recv(), if self.open => match job {
                    Some(job) => self.held.push_back(job),
                    None => self.open = false,
                },
                Some(keys) = self.finished_keys.recv() => self.release(keys),
            }
        }
    }

    fn release(&mut self, keys: Vec<K>) {
        for k in keys {
            self.busy.remove(&k);
        }
    }
}

/// A batch being gathered.
struct Batch<J, K> {
    jobs: Vec<J>,
    keys: std::collections::HashSet<K>,
    /// Keys held back in this pass: later jobs of theirs are held too, so
    /// one key's jobs keep their order.
    blocked: std::collections::HashSet<K>,
    held: std::collections::VecDeque<J>,
}

impl<J, K: Eq + std::hash::Hash> Batch<J, K> {
    /// Takes `job` into the batch, or holds it when its key is in flight
    /// (or held) or the batch is full.
    fn place(&mut self, job: J, key: K, busy: &std::collections::HashSet<K>, max: usize) {
        if self.jobs.len() < max && !busy.contains(&key) && !self.blocked.contains(&key) {
            self.keys.insert(key);
            self.jobs.push(job);
        } else {
            self.blocked.insert(key);
            self.held.push_back(job);
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Jobs of a few keys sent by many callers at once: every job is
    /// written once, no two batches in flight share a key, and one key's
    /// jobs are written in the order sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_in_flight_never_share_a_key_and_keep_each_keys_order() {
        let (queue, jobs) = tokio::sync::mpsc::channel::<(u32, u32)>(64);
        let in_flight: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let written: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
        let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (in_flight_w, written_w, batches_w) =
            (in_flight.clone(), written.clone(), batches.clone());
        let intake = tokio::spawn(pipeline(
            jobs,
            8,
            |job: &(u32, u32)| job.0,
            move |batch: Vec<(u32, u32)>, mut committing| {
                let (in_flight, written, batches) =
                    (in_flight_w.clone(), written_w.clone(), batches_w.clone());
                Box::pin(async move {
                    batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let keys: HashSet<u32> = batch.iter().map(|j| j.0).collect();
                    {
                        let mut busy = in_flight.lock().unwrap();
                        assert!(busy.is_disjoint(&keys), "a key in two batches at once");
                        busy.extend(keys.iter().copied());
                    }
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    committing.now();
                    // The "commit": the next batch is being written meanwhile.
                    tokio::time::sleep(Duration::from_micros(700)).await;
                    {
                        let mut done = written.lock().unwrap();
                        for (k, n) in &batch {
                            done.entry(*k).or_default().push(*n);
                        }
                    }
                    let mut busy = in_flight.lock().unwrap();
                    for k in &keys {
                        busy.remove(k);
                    }
                })
            },
        ));
        let mut senders = Vec::new();
        for caller in 0..16u32 {
            let queue = queue.clone();
            senders.push(tokio::spawn(async move {
                // Each caller sends its own sequence for key `caller % 5`;
                // numbers are caller * 1000 + i, increasing per caller.
                for i in 0..50u32 {
                    queue.send((caller % 5, caller * 1000 + i)).await.unwrap();
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        drop(queue);
        tokio::time::timeout(Duration::from_secs(30), intake)
            .await
            .expect("the intake drains and stops")
            .unwrap();
        // Spawned batches finish after the gatherer returns; wait for them.
        for _ in 0..200 {
            if in_flight.lock().unwrap().is_empty()
                && written
                    .lock()
                    .unwrap()
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
                    == 16 * 50
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let written = written.lock().unwrap();
        assert_eq!(written.values().map(Vec::len).sum::<usize>(), 16 * 50);
        for numbers in written.values() {
            // Per caller (a caller's numbers share thousands), increasing.
            let mut last: HashMap<u32, u32> = HashMap::new();
            for n in numbers {
                let caller = n / 1000;
                if let Some(previous) = last.insert(caller, *n) {
                    assert!(previous < *n, "{previous} written after {n}");
                }
            }
        }
        assert!(
            batches.load(std::sync::atomic::Ordering::Relaxed) < 16 * 50,
            "jobs were batched"
        );
    }

    /// A batch whose task panics still hands its keys back: later jobs of
    /// the same key are written, not held for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_batch_releases_its_keys() {
        let (queue, jobs) = tokio::sync::mpsc::channel::<(u32, &'static str)>(8);
        let (done, mut written) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        tokio::spawn(pipeline(
            jobs,
            8,
            |job: &(u32, &'static str)| job.0,
            move |batch: Vec<(u32, &'static str)>, _committing| {
                let done = done.clone();
                Box::pin(async move {
                    for (_, name) in batch {
                        assert_ne!(name, "boom", "this batch's task panics");
                        let _ = done.send(name);
                    }
                })
            },
        ));
        queue.send((1, "boom")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        queue.send((1, "after")).await.unwrap();
        let name = tokio::time::timeout(Duration::from_secs(5), written.recv())
            .await
            .expect("the key was released")
            .unwrap();
        assert_eq!(name, "after");
    }
}
