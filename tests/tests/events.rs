//! Events leave through the outbox and reach subscribers exactly once in
//! effect: delivered in order, retried while a subscriber is down, after a
//! restart too, and deduplicated by the consumer.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::time::Duration;

use huitou_proto::customer::v1 as pb;
use huitou_proto::events::v1::event_consumer_service_client::EventConsumerServiceClient;
use huitou_proto::events::v1::{DeliverEventsRequest, EventEnvelope};
use huitou_runtime::client::{InternalCredential, for_shop};
use huitou_storage::Database;
use huitou_storage::outbox::{Subscriber, backlog};
use huitou_testkit::TestDatabase;
use huitou_testkit::probe::Probe;
use huitou_tests::{INTERNAL_TOKEN, TestSuite, ago, test_settings};
use sea_orm::ConnectionTrait;
use secrecy::SecretString;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn events_are_delivered_in_order_retried_and_applied_once() {
    let mut probe = Probe::new(INTERNAL_TOKEN).await;
    probe.start().await;

    let database = TestDatabase::new("events").await;
    let mut settings = test_settings(&database);
    settings.customer.outbox.subscribers = vec![Subscriber {
        name: "probe".into(),
        endpoint: probe.endpoint(),
        event_types: vec![],
    }];
    let suite = TestSuite::start_with(database, settings).await;
    let mut client = suite.customers(&suite.shop.storefront);
    client
        .record_order(pb::RecordOrderRequest {
            order_no: "E-1".into(),
            buyer_nick: "eve".into(),
            status: pb::OrderStatus::Paid as i32,
            items: vec![pb::OrderItem {
                sku: "S".into(),
                category: "c".into(),
                quantity: 1,
                unit_price_fen: 500,
                title: String::new(),
            }],
            payable_fen: 500,
            create_time: Some(ago(60)),
            pay_time: Some(ago(50)),
            ..Default::default()
        })
        .await
        .expect("order");
    let first = probe.wait_until(WAIT, |s| s.len() >= 3).await;
    let types: Vec<&str> = first.iter().map(|s| s.event_type.as_str()).collect();
    assert_eq!(
        types,
        vec!["customer.created", "order.created", "order.paid"]
    );

    // The subscriber goes away: events wait and are retried.
    probe.stop().await;
    client
        .ship_order(pb::ShipOrderRequest {
            order_no: "E-1".into(),
            shipment: Some(pb::Shipment {
                carrier: "顺丰".into(),
                tracking_number: "SF9".into(),
            }),
            ..Default::default()
        })
        .await
        .expect("ship");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let customer_db = Database::connect(&suite.settings.customer.database)
        .await
        .expect("db");
    let (pending, _) = backlog(&customer_db).await.expect("backlog");
    assert_eq!(pending, 1, "the shipped event waits for the subscriber");

    // The suite restarts while the subscriber is still down; nothing is lost.
    let shop_key = suite.shop.storefront.clone();
    let restarted = suite.restart().await;
    probe.start().await;
    let all = probe.wait_until(WAIT, |s| s.len() >= 4).await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(
        (all[3].event_type.as_str(), all[3].order_no.as_str()),
        ("order.shipped", "E-1")
    );
    // The relay marks events dispatched just after the subscriber answers.
    let mut pending = -1;
    for _ in 0..200 {
        pending = backlog(&customer_db).await.expect("backlog").0;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(pending, 0);

    // Redelivery of the same events applies nothing.
    let events: Vec<EventEnvelope> = huitou_storage::outbox::stored_events(&customer_db)
        .await
        .expect("outbox");
    let shop = events[0].shop_id.clone();
    let mut direct = EventConsumerServiceClient::with_interceptor(
        restarted.channel_to(probe.address),
        InternalCredential::new(&SecretString::from(INTERNAL_TOKEN)).expect("credential"),
    );
    let answer = direct
        .deliver_events(
            for_shop(
                &shop,
                DeliverEventsRequest {
                    events: events.clone(),
                },
            )
            .expect("request"),
        )
        .await
        .expect("redeliver")
        .into_inner();
    assert_eq!(
        (answer.applied_count, answer.duplicate_count),
        (0, events.len() as i32)
    );
    assert_eq!(probe.seen().await.len(), 4);

    // A shop's API key cannot deliver events.
    let mut with_key = EventConsumerServiceClient::new(restarted.channel_to(probe.address));
    let mut request = tonic::Request::new(DeliverEventsRequest { events });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {shop_key}").parse().expect("metadata"),
    );
    let refused = with_key
        .deliver_events(request)
        .await
        .expect_err("shop keys cannot deliver");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    probe.stop().await;
    restarted.stop().await;
}

/// The events one transaction writes travel as one outbox row per shop
/// (decision 0017): the relay unpacks the row, delivers its events in
/// order in calls of at most `batch_size`, retries the whole row while the
/// subscriber is down, and marks it dispatched once, when every event in it
/// was acknowledged.
#[tokio::test]
async fn a_transactions_events_travel_as_one_row_and_leave_in_order() {
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{OrderCreated, OrderSnapshot};
    use huitou_storage::outbox::{self, Outbox, OutboxConfig, Relay, stored_events};

    let mut probe = Probe::new(INTERNAL_TOKEN).await;
    let database = TestDatabase::new("outbox-rows").await;
    let db = Database::connect(&database.config).await.expect("db");
    huitou_testkit::probe::kit_tables(&db).await;
    let order = |shop: &str, n: usize| {
        outbox::event(
            "test",
            shop,
            Payload::OrderCreated(OrderCreated {
                order: Some(OrderSnapshot {
                    order_no: format!("{shop}-{n}"),
                    ..Default::default()
                }),
            }),
        )
    };
    // One transaction: 120 events of one shop with 3 of another among them.
    let mut written = Vec::new();
    for n in 0..120 {
        written.push(order("A", n));
        if n % 40 == 0 {
            written.push(order("B", n));
        }
    }
    let tx = db.begin().await.expect("tx");
    outbox::append_many(&tx, written.clone())
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    let rows = db
        .conn()
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT shop_id, event_type, events FROM outbox_events ORDER BY seq",
        ))
        .await
        .expect("rows");
    let rows: Vec<(String, String, i32)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "shop_id").expect("shop"),
                r.try_get("", "event_type").expect("type"),
                r.try_get("", "events").expect("events"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("A".to_owned(), outbox::BATCH_ROW.to_owned(), 120),
            ("B".to_owned(), outbox::BATCH_ROW.to_owned(), 3)
        ]
    );
    let ids = |events: &[EventEnvelope], shop: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.shop_id == shop)
            .map(|e| e.event_id.clone())
            .collect()
    };
    let stored = stored_events(&db).await.expect("stored");
    assert_eq!(ids(&stored, "A"), ids(&written, "A"));
    assert_eq!(ids(&stored, "B"), ids(&written, "B"));
    assert_eq!(backlog(&db).await.expect("backlog").0, 123);

    let relay = Relay::new(
        "test",
        db.clone(),
        &Outbox::new(),
        OutboxConfig {
            subscribers: vec![Subscriber {
                name: "probe".into(),
                endpoint: probe.endpoint(),
                event_types: vec![],
            }],
            batch_size: 50,
            retry_base_ms: 1,
            retry_max_ms: 1,
            ..OutboxConfig::default()
        },
        &SecretString::from(INTERNAL_TOKEN),
    )
    .expect("relay");
    // Subscriber down: the first row (120 events, over the batch size but
    // taken whole as the first) waits for a retry; nothing is dispatched.
    let down = relay.pass().await.expect("pass");
    assert_eq!((down.dispatched, down.retried), (0, 120));
    assert_eq!(backlog(&db).await.expect("backlog").0, 123);

    probe.start().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut dispatched = 0;
    for _ in 0..20 {
        dispatched += relay.pass().await.expect("pass").dispatched;
        if dispatched == 123 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(dispatched, 123);
    assert_eq!(backlog(&db).await.expect("backlog").0, 0);
    let seen: Vec<String> = probe.seen().await.into_iter().map(|s| s.event_id).collect();
    let mut expected = ids(&written, "A");
    expected.extend(ids(&written, "B"));
    assert_eq!(seen, expected, "every event once, each row's in order");
    probe.stop().await;
    database.cleanup().await;
}

#[tokio::test]
async fn rows_nobody_subscribes_to_are_marked_dispatched_without_reading_them() {
    use huitou_proto::events::v1::CustomerErased;
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_storage::outbox::{self, Outbox, OutboxConfig, Relay};

    let database = TestDatabase::new("outbox-unsubscribed").await;
    let db = Database::connect(&database.config).await.expect("db");
    huitou_testkit::probe::kit_tables(&db).await;
    let erased = |n: usize| {
        outbox::event(
            "test",
            "A",
            Payload::CustomerErased(CustomerErased {
                customer_id: format!("c-{n}"),
            }),
        )
    };
    let tx = db.begin().await.expect("tx");
    outbox::append_many(&tx, (0..4).map(erased).collect())
        .await
        .expect("append");
    outbox::append_many(&tx, vec![erased(9)])
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    // A row whose payload no one could decode: read, it would be retried
    // and parked; unread, it is simply done.
    db.execute(
        "INSERT INTO outbox_events (event_id, shop_id, event_type, payload, created_at, events)
         VALUES ('broken', 'A', 'batch', $1, 0, 2)",
        vec![sea_orm::Value::Bytes(Some(vec![0xff, 0xff, 0xff]))],
    )
    .await
    .expect("broken row");
    assert_eq!(backlog(&db).await.expect("backlog").0, 7);

    let relay = Relay::new(
        "test",
        db.clone(),
        &Outbox::new(),
        OutboxConfig::default(),
        &SecretString::from(INTERNAL_TOKEN),
    )
    .expect("relay");
    let pass = relay.pass().await.expect("pass");
    assert_eq!((pass.dispatched, pass.retried, pass.dead), (7, 0, 0));
    assert_eq!(backlog(&db).await.expect("backlog").0, 0);
    database.cleanup().await;
}
