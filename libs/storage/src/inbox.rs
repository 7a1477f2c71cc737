//! The receiving side of events: apply each event exactly once.
//!
//! [`EventInbox`] is a service's inbox; [`Inboxes`] serves the inboxes of a
//! process as `EventConsumerService`, picking one by the consumer header. For every
//! delivered event it opens a transaction, records the event id in
//! `consumed_events` and applies the event through the service's
//! [`EventHandler`] — both or neither commit — so redeliveries change
//! nothing. Only the internal credential may deliver events, and each event
//! is applied for its own shop.

use std::sync::Arc;

use huitou_proto::events::v1::event_consumer_service_server::EventConsumerService;
use huitou_proto::events::v1::{DeliverEventsRequest, DeliverEventsResponse, EventEnvelope};
use huitou_runtime::auth::{BoxFuture, Role, caller};
use huitou_runtime::{Failure, telemetry};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::bulk::{self, Col};
use crate::db::{Database, WriteTx};
use crate::error::StorageError;
use crate::now_micros;

/// Most events accepted in one delivery.
pub const MAX_BATCH: usize = 500;

/// A service's reaction to events.
pub trait EventHandler: Send + Sync + 'static {
    /// The consumer's name in `consumed_events`, e.g. `loyalty`.
    fn consumer(&self) -> &'static str;

    /// Applies one event inside `tx`. An error rolls the event back and makes
    /// the relay retry the batch.
    fn apply<'a>(
        &'a self,
        tx: &'a WriteTx,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), Failure>>;

    /// Where `event` falls, within its shop, in the order a delivery is
    /// applied in ([`in_lock_order`]). Deliveries from several producers,
    /// and from several replicas of one, reach a consumer at once; two that
    /// locked the same rows in different orders would deadlock (decision
    /// 0014). A handler keys each event by the rows it locks. Events with
    /// equal keys keep the order they came in. The default keeps a shop's
    /// events in arrival order.
    fn lock_key<'e>(&self, _event: &'e EventEnvelope) -> LockKey<'e> {
        (0, "")
    }

    /// Applies a run of events, none seen before, inside `tx`, in
    /// [`in_lock_order`]. The default applies them one by one; a handler
    /// that can do better with many at once (bulk statements) overrides it.
    fn apply_batch<'a>(
        &'a self,
        tx: &'a WriteTx,
        events: &'a [EventEnvelope],
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            for event in in_lock_order(self, events) {
                self.apply(tx, event).await?;
            }
            Ok(())
        })
    }
}

/// An event's place in a delivery's lock order: a phase, then a key (a
/// customer id, an order number).
pub type LockKey<'e> = (u8, &'e str);

/// A delivery's events shop by shop, each shop's by `handler`'s
/// [`EventHandler::lock_key`]; the sort is stable.
pub fn in_lock_order<'e, H: EventHandler + ?Sized>(
    handler: &H,
    events: &'e [EventEnvelope],
) -> Vec<&'e EventEnvelope> {
    let mut ordered: Vec<&EventEnvelope> = events.iter().collect();
    ordered.sort_by(|a, b| {
        (a.shop_id.as_str(), handler.lock_key(a)).cmp(&(b.shop_id.as_str(), handler.lock_key(b)))
    });
    ordered
}

const CONSUMED_COLUMNS: [(&str, Col); 4] = [
    ("shop_id", Col::Text),
    ("consumer", Col::Text),
    ("event_id", Col::Text),
    ("consumed_at", Col::BigInt),
];

/// When `event` happened (µs), by its producer's clock; now when it does
/// not say. Consumers compare it to the time of what they hold, since the
/// relay may deliver an older event after a newer one (decision 0004).
pub fn occurred_at(event: &EventEnvelope) -> i64 {
    event
        .occur_time
        .as_ref()
        .and_then(huitou_proto::micros_from_timestamp)
        .unwrap_or_else(now_micros)
}

/// Records `event_id` as consumed in `tx`; false when it already was.
pub async fn first_delivery(
    tx: &WriteTx,
    consumer: &str,
    shop_id: &str,
    event_id: &str,
) -> Result<bool, StorageError> {
    let inserted = tx
        .execute(
            "INSERT INTO consumed_events (shop_id, consumer, event_id, consumed_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (shop_id, consumer, event_id) DO NOTHING",
            vec![shop_id.into(), consumer.into(), event_id.into(), now_micros().into()],
        )
        .await?;
    Ok(inserted == 1)
}

/// `EventConsumerService` for one handler.
pub struct EventInbox<H> {
    db: Database,
    handler: Arc<H>,
}

impl<H: EventHandler> EventInbox<H> {
    /// An inbox writing to `db`.
    pub fn new(db: Database, handler: Arc<H>) -> Self {
        Self { db, handler }
    }

    /// Applies a delivery: in one transaction when none of its events was
    /// applied before (the usual case, and the fast one), otherwise one
    /// event at a time so the duplicates are skipped. Returns (applied,
    /// duplicates).
    pub async fn apply_delivery(&self, events: &[EventEnvelope]) -> Result<(i32, i32), Failure> {
        if events.len() > 1 && self.apply_all_new(events).await? {
            return Ok((events.len() as i32, 0));
        }
        let (mut applied, mut duplicates) = (0, 0);
        for event in events {
            if self.apply_once(event).await? {
                applied += 1;
            } else {
                duplicates += 1;
            }
        }
        Ok((applied, duplicates))
    }

    /// Applies every event of `events` in one transaction if none was
    /// applied before; false (and nothing written) otherwise.
    async fn apply_all_new(&self, events: &[EventEnvelope]) -> Result<bool, Failure> {
        let span = tracing::info_span!(
            "events.apply",
            consumer = self.handler.consumer(),
            events = events.len(),
        );
        // One span for the run, joined to the trace of its first event.
        if let Some(first) = events.first() {
            telemetry::adopt_stored_parent(&span, &first.traceparent, &first.tracestate);
        }
        async {
            let tx = self.db.begin().await?;
            let applied = self.apply_all_new_in(&tx, events).await;
            settle(tx, applied).await
        }
        .instrument(span)
        .await
    }

    /// [`Self::apply_all_new`]'s work inside its transaction.
    async fn apply_all_new_in(
        &self,
        tx: &WriteTx,
        events: &[EventEnvelope],
    ) -> Result<bool, Failure> {
        {
            let now = now_micros();
            let rows: Vec<Vec<sea_orm::Value>> = events
                .iter()
                .map(|e| {
                    vec![
                        e.shop_id.clone().into(),
                        self.handler.consumer().into(),
                        e.event_id.clone().into(),
                        now.into(),
                    ]
                })
                .collect();
            let inserted = bulk::insert(
                tx,
                "consumed_events",
                &CONSUMED_COLUMNS,
                rows,
                "ON CONFLICT (shop_id, consumer, event_id) DO NOTHING",
            )
            .await?;
            if inserted as usize != events.len() {
                // Rolled back by `settle`.
                return Ok(false);
            }
            self.handler.apply_batch(tx, events).await?;
            Ok(true)
        }
    }

    /// Applies one event once; true when applied now, false when a duplicate.
    pub async fn apply_once(&self, event: &EventEnvelope) -> Result<bool, Failure> {
        let span = tracing::info_span!(
            "event.apply",
            consumer = self.handler.consumer(),
            event_type = event.event_type(),
            event_id = %event.event_id,
            shop_id = %event.shop_id,
        );
        telemetry::adopt_stored_parent(&span, &event.traceparent, &event.tracestate);
        async {
            let tx = self.db.begin().await?;
            let applied = async {
                if !first_delivery(
                    &tx,
                    self.handler.consumer(),
                    &event.shop_id,
                    &event.event_id,
                )
                .await?
                {
                    return Ok(false);
                }
                self.handler.apply(&tx, event).await?;
                Ok(true)
            }
            .await;
            settle(tx, applied).await
        }
        .instrument(span)
        .await
    }
}

/// Commits when the events were applied; otherwise (a duplicate, or an
/// error) rolls back and waits for it, so the fallback that follows never
/// waits on this transaction's rows.
async fn settle(tx: WriteTx, applied: Result<bool, Failure>) -> Result<bool, Failure> {
    match applied {
        Ok(true) => {
            tx.commit().await?;
            Ok(true)
        }
        other => {
            tx.rollback().await;
            other
        }
    }
}

/// Names the subscriber a delivery is for, so services sharing one server
/// (the one-process suite) each get their own events.
pub const CONSUMER_HEADER: &str = "x-huitou-consumer";

/// One service's inbox, as the server's [`Inboxes`] sees it.
pub trait Inbox: Send + Sync + 'static {
    /// The consumer's name (the subscriber name relays deliver to).
    fn consumer(&self) -> &'static str;
    /// Applies a delivery; (applied, duplicates).
    fn deliver<'a>(
        &'a self,
        events: &'a [EventEnvelope],
    ) -> BoxFuture<'a, Result<(i32, i32), Failure>>;
}

impl<H: EventHandler> Inbox for EventInbox<H> {
    fn consumer(&self) -> &'static str {
        self.handler.consumer()
    }

    fn deliver<'a>(
        &'a self,
        events: &'a [EventEnvelope],
    ) -> BoxFuture<'a, Result<(i32, i32), Failure>> {
        Box::pin(self.apply_delivery(events))
    }
}

/// `EventConsumerService` for the inboxes of the services one process
/// runs: a delivery goes to the only inbox when there is one, else to the
/// inbox its consumer header names.
#[derive(Clone, Default)]
pub struct Inboxes {
    inboxes: Vec<Arc<dyn Inbox>>,
}

impl Inboxes {
    /// No inboxes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service's inbox.
    pub fn add(&mut self, inbox: Arc<dyn Inbox>) {
        self.inboxes.push(inbox);
    }

    /// True when no service here consumes events.
    pub fn is_empty(&self) -> bool {
        self.inboxes.is_empty()
    }

    fn pick(&self, consumer: Option<&str>) -> Result<&Arc<dyn Inbox>, Failure> {
        // With one inbox the header is not needed: subscriber names are
        // free-form in settings, and only a shared server must route.
        match consumer {
            _ if self.inboxes.len() == 1 => self.inboxes.first(),
            Some(name) => self.inboxes.iter().find(|i| i.consumer() == name),
            None => None,
        }
        .ok_or_else(|| {
            Failure::invalid_field(
                CONSUMER_HEADER,
                format!(
                    "names no consumer in this process (here: {})",
                    self.inboxes
                        .iter()
                        .map(|i| i.consumer())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }
}

#[tonic::async_trait]
impl EventConsumerService for Inboxes {
    async fn deliver_events(
        &self,
        request: Request<DeliverEventsRequest>,
    ) -> Result<Response<DeliverEventsResponse>, Status> {
        let who = caller(&request)?;
        if who.role != Role::Internal {
            return Err(Failure::permission_denied("only Huitou services deliver events").into());
        }
        let consumer = request
            .metadata()
            .get(CONSUMER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let inbox = self.pick(consumer.as_deref())?;
        let events = request.into_inner().events;
        if events.len() > MAX_BATCH {
            return Err(
                Failure::invalid_field("events", format!("at most {MAX_BATCH} per call")).into(),
            );
        }
        if events
            .iter()
            .any(|e| e.event_id.is_empty() || e.shop_id.is_empty())
        {
            return Err(Failure::invalid_field(
                "events",
                "every event needs an event_id and a shop_id",
            )
            .into());
        }
        let (applied_count, duplicate_count) = inbox.deliver(&events).await?;
        Ok(Response::new(DeliverEventsResponse {
            applied_count,
            duplicate_count,
        }))
    }
}

/// Forgets consumed event ids older than `retention` (far longer than any
/// redelivery can take).
pub async fn sweep(db: &Database, retention: std::time::Duration) -> Result<u64, StorageError> {
    let cutoff = now_micros() - retention.as_micros() as i64;
    db.execute(
        "DELETE FROM consumed_events WHERE consumed_at < $1",
        vec![cutoff.into()],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl Inbox for Named {
        fn consumer(&self) -> &'static str {
            self.0
        }

        fn deliver<'a>(
            &'a self,
            _events: &'a [EventEnvelope],
        ) -> BoxFuture<'a, Result<(i32, i32), Failure>> {
            Box::pin(async { Ok((0, 0)) })
        }
    }

    #[test]
    fn deliveries_go_to_the_named_consumer_or_the_only_one() {
        let mut one = Inboxes::new();
        one.add(Arc::new(Named("loyalty")));
        // One inbox: the header is not needed, whatever a subscriber is called.
        assert_eq!(one.pick(None).map(|i| i.consumer()).ok(), Some("loyalty"));
        assert_eq!(
            one.pick(Some("probe")).map(|i| i.consumer()).ok(),
            Some("loyalty")
        );
        let mut two = one.clone();
        two.add(Arc::new(Named("coupon")));
        assert_eq!(
            two.pick(Some("coupon")).map(|i| i.consumer()).ok(),
            Some("coupon")
        );
        assert_eq!(
            two.pick(Some("loyalty")).map(|i| i.consumer()).ok(),
            Some("loyalty")
        );
        let refused = two.pick(None).err().expect("no header with two inboxes");
        assert_eq!(refused.violations[0].field, CONSUMER_HEADER);
        assert!(two.pick(Some("notification")).is_err());
    }
}
