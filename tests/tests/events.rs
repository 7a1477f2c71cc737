//! Events leave through the outbox and reach subscribers exactly once in
//! effect: delivered in order, retried while a subscriber is down, after a
//! restart too, and deduplicated by the consumer.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use huitou_proto::customer::v1 as pb;
use huitou_proto::events::v1::event_consumer_service_client::EventConsumerServiceClient;
use huitou_proto::events::v1::event_consumer_service_server::EventConsumerServiceServer;
use huitou_proto::events::v1::{DeliverEventsRequest, EventEnvelope};
use huitou_runtime::Failure;
use huitou_runtime::auth::{ApiKeySecret, Authenticator, BoxFuture, KeyVerifier};
use huitou_runtime::client::{InternalCredential, for_shop};
use huitou_runtime::config::ServerConfig;
use huitou_runtime::server::GrpcServer;
use huitou_storage::inbox::{EventHandler, EventInbox};
use huitou_storage::migrate::{KIT_TABLES, dialect};
use huitou_storage::outbox::{Subscriber, backlog};
use huitou_storage::{Database, DatabaseConfig, WriteTx};
use huitou_testkit::{TestDatabase, temp_dir};
use huitou_tests::{INTERNAL_TOKEN, TestSuite, ago, test_settings};
use sea_orm::ConnectionTrait;
use secrecy::SecretString;
use tokio::sync::oneshot;

struct NoKeys;

impl KeyVerifier for NoKeys {
    fn verify<'a>(
        &'a self,
        _: &'a ApiKeySecret,
    ) -> BoxFuture<'a, Result<Option<huitou_runtime::Caller>, Failure>> {
        Box::pin(async { Ok(None) })
    }
}

/// Records every event it applies in `seen`.
struct Probe;

impl EventHandler for Probe {
    fn consumer(&self) -> &'static str {
        "probe"
    }

    fn apply<'a>(
        &'a self,
        tx: &'a WriteTx,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            tx.execute(
                "INSERT INTO seen (event_id, event_type, shop_id) VALUES ($1, $2, $3)",
                vec![
                    event.event_id.clone().into(),
                    event.event_type().into(),
                    event.shop_id.clone().into(),
                ],
            )
            .await
            .map_err(Failure::from)?;
            Ok(())
        })
    }
}

async fn probe_database() -> Database {
    let dir = temp_dir("probe");
    let db = Database::connect(&DatabaseConfig::sqlite_file(&dir.join("probe.db")))
        .await
        .expect("probe db");
    for statement in KIT_TABLES.statements {
        db.conn()
            .execute_unprepared(&dialect(db.backend(), statement))
            .await
            .expect("kit tables");
    }
    db.conn()
        .execute_unprepared("CREATE TABLE seen (n INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT, event_type TEXT, shop_id TEXT)")
        .await
        .expect("seen table");
    db
}

/// A consumer service on `address` until the sender fires.
async fn start_probe(
    db: Database,
    address: SocketAddr,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("bind probe");
    let auth = Authenticator::new(Arc::new(NoKeys), &SecretString::from(INTERNAL_TOKEN));
    let mut server = GrpcServer::new(ServerConfig::default(), auth);
    server.add_service(EventConsumerServiceServer::new(EventInbox::new(
        db,
        Arc::new(Probe),
    )));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = server
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    (tx, task)
}

async fn seen(db: &Database) -> Vec<(String, String)> {
    let rows = db
        .conn()
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT event_id, event_type FROM seen ORDER BY n",
        ))
        .await
        .expect("query");
    rows.iter()
        .map(|r| {
            (
                r.try_get("", "event_id").expect("id"),
                r.try_get("", "event_type").expect("type"),
            )
        })
        .collect()
}

async fn wait_for(db: &Database, n: usize) -> Vec<(String, String)> {
    for _ in 0..200 {
        let s = seen(db).await;
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    seen(db).await
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn events_are_delivered_in_order_retried_and_applied_once() {
    let probe_db = probe_database().await;
    let probe_address = free_port();
    let (stop_probe, probe_task) = start_probe(probe_db.clone(), probe_address).await;

    let database = TestDatabase::new("events").await;
    let mut settings = test_settings(&database);
    settings.customer.outbox.subscribers = vec![Subscriber {
        name: "probe".into(),
        endpoint: format!("http://{probe_address}"),
        event_types: vec![],
    }];
    let suite = TestSuite::start_with(database, settings.clone()).await;
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
    let first = wait_for(&probe_db, 3).await;
    let types: Vec<&str> = first.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        types,
        vec!["customer.created", "order.created", "order.paid"]
    );

    // The subscriber goes away: events wait and are retried.
    let _ = stop_probe.send(());
    let _ = probe_task.await;
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
    let (stop_probe, probe_task) = start_probe(probe_db.clone(), probe_address).await;
    let all = wait_for(&probe_db, 4).await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[3].1, "order.shipped");
    let (pending, _) = backlog(&customer_db).await.expect("backlog");
    assert_eq!(pending, 0);

    // Redelivery of the same events applies nothing.
    let mut direct = EventConsumerServiceClient::with_interceptor(
        restarted.channel_to(probe_address),
        InternalCredential::new(&SecretString::from(INTERNAL_TOKEN)).expect("credential"),
    );
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
    assert_eq!(seen(&probe_db).await.len(), 4);

    // Only the internal credential may deliver.
    let mut outsider = restarted.customers(&shop_key);
    let _ = outsider
        .list_customers(pb::ListCustomersRequest::default())
        .await;
    let mut with_key = EventConsumerServiceClient::new(restarted.channel_to(probe_address));
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

    let _ = stop_probe.send(());
    let _ = probe_task.await;
    restarted.stop().await;
}
