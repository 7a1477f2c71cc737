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
    let rows = customer_db
        .conn()
        .query_all_raw(sea_orm::Statement::from_string(
            customer_db.backend(),
            "SELECT payload FROM outbox_events ORDER BY seq",
        ))
        .await
        .expect("outbox");
    let events: Vec<EventEnvelope> = rows
        .iter()
        .map(|r| {
            let bytes: Vec<u8> = r.try_get("", "payload").expect("payload");
            prost::Message::decode(bytes.as_slice()).expect("event")
        })
        .collect();
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
