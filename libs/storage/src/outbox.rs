//! The transactional outbox and its relay.
//!
//! A service writes each event into `outbox_events` in the same transaction
//! as the change it describes ([`append`]), so an event exists exactly when
//! its change does. The [`Relay`] reads pending events in order and delivers
//! them over gRPC (`huitou.events.v1.EventConsumerService/DeliverEvents`) to
//! every subscriber of their type, marking them dispatched only when all
//! subscribers acknowledged. A failed delivery is retried with exponential
//! back-off and jitter, across restarts (the state is in the table); after
//! `max_attempts` an event is parked as dead (kept, logged, counted) so one
//! poison event cannot stop the stream. Delivery is at least once; consumers
//! deduplicate by event id (see [`crate::inbox`]).

use std::sync::Arc;
use std::time::Duration;

use huitou_proto::events::v1::event_consumer_service_client::EventConsumerServiceClient;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::events::v1::{DeliverEventsRequest, EventEnvelope};
use huitou_runtime::client::{InternalCredential, channel, for_shop};
use huitou_runtime::telemetry;
use prost::Message;
use sea_orm::{ConnectionTrait, FromQueryResult, Statement, Value};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::db::{Database, WriteTx};
use crate::error::StorageError;
use crate::now_micros;

/// A service that receives some of this service's events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Subscriber {
    /// A name for logs, e.g. `loyalty`.
    pub name: String,
    /// Its gRPC address, e.g. `http://loyalty:50051`.
    pub endpoint: String,
    /// Event types it wants (`order.paid`, ...); empty for all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

impl Subscriber {
    fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

/// How often the relay measures its backlog for the metrics.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Relay settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Who gets which events.
    pub subscribers: Vec<Subscriber>,
    /// Events per delivery call.
    pub batch_size: u32,
    /// How often to look for events when not woken by a local write, in ms.
    pub poll_interval_ms: u64,
    /// Deadline of one delivery call, in ms.
    pub delivery_timeout_ms: u64,
    /// First retry delay, in ms; doubles per attempt.
    pub retry_base_ms: u64,
    /// Longest retry delay, in ms.
    pub retry_max_ms: u64,
    /// Attempts before an event is parked as dead.
    pub max_attempts: u32,
    /// How long dispatched events are kept for inspection and replay, in hours.
    pub retention_hours: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            subscribers: Vec::new(),
            batch_size: 200,
            poll_interval_ms: 500,
            delivery_timeout_ms: 10_000,
            retry_base_ms: 500,
            retry_max_ms: 300_000,
            max_attempts: 50,
            retention_hours: 72,
        }
    }
}

impl OutboxConfig {
    /// Adds `subscriber` unless one of its name is configured already
    /// (settings win over the suite's own wiring).
    pub fn subscribe_if_absent(&mut self, subscriber: Subscriber) {
        if !self.subscribers.iter().any(|s| s.name == subscriber.name) {
            self.subscribers.push(subscriber);
        }
    }

    /// Problems with the settings under `section`.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        for (i, s) in self.subscribers.iter().enumerate() {
            if s.name.is_empty() {
                p.push(format!(
                    "{section}.subscribers[{i}].name: must not be empty"
                ));
            }
            if !(s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://")) {
                p.push(format!(
                    "{section}.subscribers[{i}].endpoint: must start with http:// or https://"
                ));
            }
        }
        if !(1..=500).contains(&self.batch_size) {
            p.push(format!("{section}.batch_size: must be 1-500"));
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            p.push(format!("{section}.poll_interval_ms: must be 10-60000"));
        }
        if self.retry_base_ms == 0 || self.retry_max_ms < self.retry_base_ms {
            p.push(format!(
                "{section}.retry_max_ms: must be at least retry_base_ms, which must be > 0"
            ));
        }
        if self.max_attempts == 0 {
            p.push(format!("{section}.max_attempts: must be at least 1"));
        }
        p
    }
}

/// Writes events and wakes the relay after commit.
#[derive(Clone, Default)]
pub struct Outbox {
    wake: Arc<Notify>,
}

impl Outbox {
    /// A new outbox handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells the relay there is something new (call after commit).
    pub fn notify(&self) {
        self.wake.notify_one();
    }
}

/// A new event of `source` (the service's name) for `shop_id`, occurring
/// now; its trace context is filled in when it is stored.
pub fn event(source: &str, shop_id: &str, payload: Payload) -> EventEnvelope {
    EventEnvelope {
        event_id: crate::new_id(),
        shop_id: shop_id.to_owned(),
        occur_time: Some(huitou_proto::timestamp_from_micros(now_micros())),
        source_service: source.to_owned(),
        traceparent: String::new(),
        tracestate: String::new(),
        payload: Some(payload),
    }
}

/// Stores `event` in `tx`. Fills in the trace context of the current span
/// when the event has none, so the consumer's work joins the same trace.
pub async fn append(tx: &WriteTx, mut event: EventEnvelope) -> Result<(), StorageError> {
    if event.traceparent.is_empty() {
        let (traceparent, tracestate) = telemetry::current_trace_headers();
        event.traceparent = traceparent;
        event.tracestate = tracestate;
    }
    let event_type = event.event_type();
    tx.execute(
        "INSERT INTO outbox_events (event_id, shop_id, event_type, payload, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        vec![
            event.event_id.clone().into(),
            event.shop_id.clone().into(),
            event_type.into(),
            Value::Bytes(Some(event.encode_to_vec())),
            now_micros().into(),
        ],
    )
    .await?;
    Ok(())
}

/// Makes one conditional change and stores its event, atomically: the
/// event is written only when `change_sql` (an `UPDATE … WHERE …` with
/// `$1…$n` placeholders for `values`, no RETURNING) changed a row. On
/// PostgreSQL this is one statement and one round trip (the change in a
/// CTE feeding the outbox insert); on SQLite, a short write transaction.
/// Returns whether the change matched. The caller wakes the relay.
pub async fn change_with_event(
    db: &Database,
    change_sql: &str,
    mut values: Vec<Value>,
    mut event: EventEnvelope,
) -> Result<bool, StorageError> {
    if event.traceparent.is_empty() {
        let (traceparent, tracestate) = telemetry::current_trace_headers();
        event.traceparent = traceparent;
        event.tracestate = tracestate;
    }
    let event_values: Vec<Value> = vec![
        event.event_id.clone().into(),
        event.shop_id.clone().into(),
        event.event_type().into(),
        Value::Bytes(Some(event.encode_to_vec())),
        now_micros().into(),
    ];
    if db.is_postgres() {
        let n = values.len();
        let sql = format!(
            "WITH changed AS ({change_sql} RETURNING 1)
             INSERT INTO outbox_events (event_id, shop_id, event_type, payload, created_at)
             SELECT ${}, ${}, ${}, ${}, ${} FROM changed",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5
        );
        values.extend(event_values);
        return Ok(db.execute(&sql, values).await? == 1);
    }
    let tx = db.begin().await?;
    if tx.execute(change_sql, values).await? != 1 {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO outbox_events (event_id, shop_id, event_type, payload, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        event_values,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The `event_type` of an outbox row that carries several events: all the
/// events of one shop that one transaction wrote, stored together as a
/// `DeliverEventsRequest` (decision 0017). The relay unpacks it.
pub const BATCH_ROW: &str = "batch";

/// Stores many events in `tx`: one outbox row per shop carrying them all,
/// so a transaction that writes a hundred events writes one row (and the
/// relay marks one row delivered), not a hundred.
pub async fn append_many(tx: &WriteTx, events: Vec<EventEnvelope>) -> Result<(), StorageError> {
    crate::bulk::insert(tx, "outbox_events", &ROW_COLUMNS, rows_of(events), "").await?;
    Ok(())
}

/// The columns of [`rows_of`], for writing them with other bulk inserts.
pub const ROW_COLUMNS: [(&str, crate::bulk::Col); 6] = [
    ("event_id", crate::bulk::Col::Text),
    ("shop_id", crate::bulk::Col::Text),
    ("event_type", crate::bulk::Col::Text),
    ("payload", crate::bulk::Col::Bytes),
    ("created_at", crate::bulk::Col::BigInt),
    ("events", crate::bulk::Col::Int),
];

/// The outbox rows [`append_many`] writes for `events`: one per shop,
/// events in the order given, each without a trace context given the
/// current span's.
pub fn rows_of(mut events: Vec<EventEnvelope>) -> Vec<Vec<Value>> {
    let (traceparent, tracestate) = telemetry::current_trace_headers();
    let now = now_micros();
    // One row per shop, events in the order written, so the row's shop
    // column stays true for inspection and per-shop queries.
    for event in &mut events {
        if event.traceparent.is_empty() {
            event.traceparent = traceparent.clone();
            event.tracestate = tracestate.clone();
        }
    }
    // Nearly always one shop: its events are kept as they are, not moved
    // one by one into a growing list (envelopes are large; those moves were
    // about 4 % of the service's time during an import).
    let by_shop: Vec<(String, Vec<EventEnvelope>)> = match events.first() {
        None => Vec::new(),
        Some(first) if events.iter().all(|e| e.shop_id == first.shop_id) => {
            vec![(first.shop_id.clone(), events)]
        }
        Some(_) => {
            let mut by_shop: Vec<(String, Vec<EventEnvelope>)> = Vec::new();
            for event in events {
                match by_shop.iter_mut().find(|(shop, _)| *shop == event.shop_id) {
                    Some((_, mine)) => mine.push(event),
                    None => by_shop.push((event.shop_id.clone(), vec![event])),
                }
            }
            by_shop
        }
    };
    by_shop
        .into_iter()
        .map(|(shop, mut events)| {
            let first_id = events
                .first()
                .map(|e| e.event_id.clone())
                .unwrap_or_default();
            let count = events.len() as i32;
            let (event_type, payload) = match events.len() {
                1 => {
                    let one = events.remove(0);
                    (one.event_type(), one.encode_to_vec())
                }
                _ => (BATCH_ROW, DeliverEventsRequest { events }.encode_to_vec()),
            };
            vec![
                first_id.into(),
                shop.into(),
                event_type.into(),
                Value::Bytes(Some(payload)),
                now.into(),
                count.into(),
            ]
        })
        .collect()
}

/// The events an outbox row carries: one, or a batch row's several.
pub fn row_events(event_type: &str, payload: &[u8]) -> Result<Vec<EventEnvelope>, String> {
    if event_type == BATCH_ROW {
        DeliverEventsRequest::decode(payload)
            .map(|batch| batch.events)
            .map_err(|e| format!("bad batch payload: {e}"))
    } else {
        EventEnvelope::decode(payload)
            .map(|event| vec![event])
            .map_err(|e| format!("bad payload: {e}"))
    }
}

/// Every event in `db`'s outbox, in the order written, unpacked from batch
/// rows: for tests and inspection.
pub async fn stored_events(db: &Database) -> Result<Vec<EventEnvelope>, StorageError> {
    let rows = db
        .conn()
        .query_all_raw(Statement::from_string(
            db.backend(),
            "SELECT event_type, payload FROM outbox_events ORDER BY seq",
        ))
        .await?;
    let mut events = Vec::new();
    for row in rows {
        let event_type: String = row.try_get("", "event_type").map_err(StorageError::from)?;
        let payload: Vec<u8> = row.try_get("", "payload").map_err(StorageError::from)?;
        events.extend(row_events(&event_type, &payload).map_err(StorageError::Other)?);
    }
    Ok(events)
}

#[derive(Debug, FromQueryResult)]
struct DueRow {
    seq: i64,
    attempts: i32,
    events: i32,
}

#[derive(Debug, FromQueryResult)]
struct PayloadRow {
    seq: i64,
    event_type: String,
    payload: Vec<u8>,
}

/// A due outbox row, unpacked.
struct PendingRow {
    seq: i64,
    attempts: i32,
    /// Its events, or why they cannot be read (retried, then parked dead).
    events: Result<Vec<EventEnvelope>, String>,
}

type ConsumerClient = EventConsumerServiceClient<InterceptedService<Channel, InternalCredential>>;

/// How long the relay waits after a wake-up so a burst of commits leaves
/// as one batch (and one dispatch transaction).
const LINGER: Duration = Duration::from_millis(10);
/// How often a pass scans from the start of the outbox, for events whose
/// transactions committed after those of higher sequence numbers.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(2);

/// Delivers outbox events to subscribers until stopped.
pub struct Relay {
    db: Database,
    config: OutboxConfig,
    wake: Arc<Notify>,
    subscribers: Vec<(Subscriber, ConsumerClient)>,
    /// Rows at or below this seq were all handled when last looked at;
    /// passes start above it so they do not wade through dispatched rows
    /// (dead index entries until vacuum). A full scan now and then picks up
    /// events whose transactions committed after higher ones.
    scan_from: std::sync::atomic::AtomicI64,
    last_full_scan: std::sync::Mutex<std::time::Instant>,
    service_name: &'static str,
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayPass {
    /// Events marked dispatched.
    pub dispatched: usize,
    /// Events that failed and wait for a retry.
    pub retried: usize,
    /// Events parked as dead.
    pub dead: usize,
}

impl Relay {
    /// A relay for `db`'s outbox, woken by `outbox`.
    pub fn new(
        service_name: &'static str,
        db: Database,
        outbox: &Outbox,
        config: OutboxConfig,
        internal_token: &SecretString,
    ) -> Result<Self, huitou_runtime::Failure> {
        let credential = InternalCredential::new(internal_token)?;
        let mut subscribers = Vec::new();
        for s in &config.subscribers {
            let ch = channel(
                &s.endpoint,
                Duration::from_millis(config.delivery_timeout_ms),
            )?;
            subscribers.push((
                s.clone(),
                EventConsumerServiceClient::with_interceptor(ch, credential.clone()),
            ));
        }
        Ok(Self {
            db,
            config,
            wake: outbox.wake.clone(),
            subscribers,
            scan_from: std::sync::atomic::AtomicI64::new(0),
            last_full_scan: std::sync::Mutex::new(std::time::Instant::now()),
            service_name,
        })
    }

    /// Runs until `stop` completes; finishes the pass in progress first.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let mut last_sweep = std::time::Instant::now() - Duration::from_secs(3600);
        let mut last_backlog = std::time::Instant::now() - BACKLOG_EVERY;
        loop {
            let (mut idle, mut partial) = (false, false);
            match self.pass().await {
                Ok(p) if p.dispatched + p.retried + p.dead == 0 => idle = true,
                // Fewer than a batch: more are committing one by one. Let
                // them gather instead of passing for every commit, which
                // under steady load costs a transaction per writer commit.
                Ok(p) => {
                    partial = p.dispatched + p.retried + p.dead < self.config.batch_size as usize
                }
                Err(e) => {
                    tracing::warn!(service = self.service_name, error = %e, "outbox relay pass failed");
                    idle = true;
                }
            }
            if last_backlog.elapsed() >= BACKLOG_EVERY {
                last_backlog = std::time::Instant::now();
                match backlog(&self.db).await {
                    Ok((pending, lag)) => {
                        huitou_runtime::metrics::record_outbox(self.service_name, pending, lag)
                    }
                    Err(e) => tracing::debug!(error = %e, "outbox backlog not measured"),
                }
            }
            if last_sweep.elapsed() > Duration::from_secs(600) {
                last_sweep = std::time::Instant::now();
                if let Err(e) = self.sweep().await {
                    tracing::warn!(error = %e, "outbox sweep failed");
                }
            }
            if idle {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = self.wake.notified() => {
                        // Let a burst of commits gather into one batch.
                        tokio::time::sleep(LINGER).await;
                    },
                    _ = tokio::time::sleep(poll) => {},
                }
            } else if partial {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(LINGER) => {},
                }
            } else if futures_ready(&mut stop).await {
                return;
            }
        }
    }

    /// Delivers one batch of due events. Public for tests and `huitou admin`.
    pub async fn pass(&self) -> Result<RelayPass, StorageError> {
        use std::sync::atomic::Ordering;
        let full = match self.last_full_scan.lock() {
            Ok(mut last) if last.elapsed() >= FULL_SCAN_EVERY => {
                *last = std::time::Instant::now();
                true
            }
            _ => false,
        };
        let from = if full {
            0
        } else {
            self.scan_from.load(Ordering::Relaxed)
        };
        let tx = self.db.begin().await?;
        let now = now_micros();
        // One relay at a time per database keeps delivery in outbox order;
        // SKIP LOCKED lets a second replica pass quietly instead of waiting.
        let lock = if self.db.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "SELECT seq, attempts, events FROM outbox_events
             WHERE dispatched_at IS NULL AND dead_at IS NULL AND next_attempt_at <= $1 AND seq > $2
             ORDER BY seq LIMIT {}{lock}",
            self.config.batch_size
        );
        let due = tx.query_all(&sql, vec![now.into(), from.into()]).await?;
        let due: Vec<DueRow> = due
            .iter()
            .map(|r| DueRow::from_query_result(r, ""))
            .collect::<Result<_, _>>()
            .map_err(StorageError::from)?;
        // Rows up to about `batch_size` events (at least one row, however
        // many it carries): one pass, one short transaction.
        let mut taken = 0i64;
        let due: Vec<DueRow> = due
            .into_iter()
            .take_while(|r| {
                let fits =
                    taken == 0 || taken + i64::from(r.events) <= i64::from(self.config.batch_size);
                taken += i64::from(r.events);
                fits
            })
            .collect();
        if due.is_empty() {
            return Ok(RelayPass::default());
        }
        let rows: Vec<PendingRow> = if self.subscribers.is_empty() {
            // Nobody subscribes: the rows are done without reading (and
            // decompressing, and decoding) their payloads.
            due.iter()
                .map(|d| PendingRow {
                    seq: d.seq,
                    attempts: d.attempts,
                    events: Ok(Vec::new()),
                })
                .collect()
        } else {
            let list = due
                .iter()
                .map(|r| r.seq.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let payloads = tx
                .query_all(
                    &format!(
                        "SELECT seq, event_type, payload FROM outbox_events WHERE seq IN ({list}) ORDER BY seq"
                    ),
                    vec![],
                )
                .await?;
            let mut payloads: std::collections::HashMap<i64, PayloadRow> = payloads
                .iter()
                .map(|r| PayloadRow::from_query_result(r, "").map(|p| (p.seq, p)))
                .collect::<Result<_, _>>()
                .map_err(StorageError::from)?;
            due.iter()
                .map(|d| PendingRow {
                    seq: d.seq,
                    attempts: d.attempts,
                    events: match payloads.remove(&d.seq) {
                        Some(p) => row_events(&p.event_type, &p.payload),
                        None => Err("row vanished".into()),
                    },
                })
                .collect()
        };
        // Advance past this batch, unless something in it must be retried.
        let batch_max = rows.iter().map(|r| r.seq).max().unwrap_or(from);
        let mut failed: Vec<(i64, String)> = Vec::new();
        for row in &rows {
            if let Err(error) = &row.events {
                failed.push((row.seq, error.clone()));
            }
        }
        for (subscriber, client) in &self.subscribers {
            // (row, event) pairs this subscriber wants, in outbox order.
            let mine: Vec<(i64, &EventEnvelope)> = rows
                .iter()
                .filter_map(|r| r.events.as_ref().ok().map(|e| (r.seq, e)))
                .flat_map(|(seq, events)| events.iter().map(move |e| (seq, e)))
                .filter(|(_, e)| subscriber.wants(e.event_type()))
                .collect();
            let chunk_size = self.config.batch_size.max(1) as usize;
            for (i, chunk) in mine.chunks(chunk_size).enumerate() {
                if let Err(error) = self.deliver(subscriber, client.clone(), chunk).await {
                    tracing::warn!(
                        subscriber = %subscriber.name,
                        events = chunk.len(),
                        %error,
                        "event delivery failed; will retry"
                    );
                    // This chunk and the rest wait for a retry, so the
                    // subscriber still sees the rows in order.
                    failed.extend(
                        mine[i * chunk_size..]
                            .iter()
                            .map(|(seq, _)| (*seq, format!("{}: {error}", subscriber.name))),
                    );
                    break;
                }
            }
        }
        let mut pass = RelayPass::default();
        let carried = |seq: i64| {
            due.iter()
                .find(|d| d.seq == seq)
                .map_or(1, |d| d.events.max(1) as usize)
        };
        let failed_seqs: std::collections::HashSet<i64> = failed.iter().map(|(s, _)| *s).collect();
        let delivered: Vec<i64> = rows
            .iter()
            .map(|r| r.seq)
            .filter(|s| !failed_seqs.contains(s))
            .collect();
        if !delivered.is_empty() {
            let list = delivered
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            tx.execute(
                &format!("UPDATE outbox_events SET dispatched_at = $1 WHERE seq IN ({list})"),
                vec![now.into()],
            )
            .await?;
            pass.dispatched = delivered.iter().map(|s| carried(*s)).sum();
        }
        let mut seen = std::collections::HashSet::new();
        for (seq, error) in failed {
            if !seen.insert(seq) {
                continue;
            }
            let attempts = rows
                .iter()
                .find(|r| r.seq == seq)
                .map(|r| r.attempts)
                .unwrap_or(0)
                + 1;
            if attempts as u32 >= self.config.max_attempts {
                tracing::error!(seq, %error, "event parked as dead after {attempts} attempts");
                tx.execute(
                    "UPDATE outbox_events SET attempts = $1, last_error = $2, dead_at = $3 WHERE seq = $4",
                    vec![attempts.into(), error.into(), now.into(), seq.into()],
                )
                .await?;
                pass.dead += carried(seq);
            } else {
                let delay = self.backoff(attempts as u32);
                tx.execute(
                    "UPDATE outbox_events SET attempts = $1, last_error = $2, next_attempt_at = $3 WHERE seq = $4",
                    vec![attempts.into(), error.into(), (now + delay.as_micros() as i64).into(), seq.into()],
                )
                .await?;
                pass.retried += carried(seq);
            }
        }
        tx.commit().await?;
        let next_from = match failed_seqs.iter().min() {
            Some(first_failed) => (first_failed - 1).max(from),
            None => batch_max,
        };
        if !full || next_from > self.scan_from.load(Ordering::Relaxed) {
            self.scan_from.store(next_from, Ordering::Relaxed);
        }
        Ok(pass)
    }

    async fn deliver(
        &self,
        subscriber: &Subscriber,
        mut client: ConsumerClient,
        chunk: &[(i64, &EventEnvelope)],
    ) -> Result<(), String> {
        let events: Vec<EventEnvelope> = chunk.iter().map(|(_, e)| (*e).clone()).collect();
        // The call must name a shop for the internal credential; batches may
        // span shops, and the consumer checks each event's own shop.
        let shop = events
            .first()
            .map(|e| e.shop_id.clone())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "outbox.deliver",
            otel.kind = "client",
            subscriber = %subscriber.name,
            events = events.len(),
            rpc.system = "grpc",
            rpc.service = "huitou.events.v1.EventConsumerService",
            rpc.method = "DeliverEvents",
        );
        if let Some(first) = events.first() {
            telemetry::adopt_stored_parent(&span, &first.traceparent, &first.tracestate);
        }
        let mut request =
            for_shop(&shop, DeliverEventsRequest { events }).map_err(|f| f.to_string())?;
        if let Ok(name) = subscriber.name.parse() {
            request
                .metadata_mut()
                .insert(crate::inbox::CONSUMER_HEADER, name);
        }
        client
            .deliver_events(request)
            .instrument(span)
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let base = self
            .config
            .retry_base_ms
            .saturating_mul(1u64 << attempts.min(20).saturating_sub(1));
        let capped = base.min(self.config.retry_max_ms);
        // Full jitter between half and all of the delay spreads retries of
        // many events that failed together.
        let jitter = (uuid::Uuid::now_v7().as_u128() as u64) % (capped / 2 + 1);
        Duration::from_millis(capped / 2 + jitter)
    }

    async fn sweep(&self) -> Result<u64, StorageError> {
        let cutoff = now_micros() - (self.config.retention_hours as i64) * 3_600_000_000;
        self.db
            .execute(
                "DELETE FROM outbox_events WHERE dispatched_at IS NOT NULL AND created_at < $1",
                vec![cutoff.into()],
            )
            .await
    }
}

/// True when `stop` has completed, without waiting for it.
async fn futures_ready(
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    tokio::select! {
        biased;
        _ = stop.as_mut() => true,
        _ = std::future::ready(()) => false,
    }
}

/// Events not yet dispatched (and not dead), and the age of the oldest in
/// seconds: the relay's lag.
pub async fn backlog(db: &Database) -> Result<(i64, f64), StorageError> {
    let stmt = Statement::from_string(
        db.backend(),
        "SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) AS n, MIN(created_at) AS oldest FROM outbox_events WHERE dispatched_at IS NULL AND dead_at IS NULL",
    );
    let row = db.conn().query_one_raw(stmt).await?;
    let (n, oldest): (i64, Option<i64>) = match row {
        Some(r) => (
            r.try_get("", "n").map_err(StorageError::from)?,
            r.try_get("", "oldest").map_err(StorageError::from)?,
        ),
        None => (0, None),
    };
    let age = oldest
        .map(|o| (now_micros() - o) as f64 / 1e6)
        .unwrap_or(0.0);
    Ok((n, age))
}
