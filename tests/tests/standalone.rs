//! Services in their own processes, as in Kubernetes: the customer service
//! alone, and the loyalty service alone checking API keys with it and
//! receiving its events over gRPC.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::time::Duration;

use huitou::{Services, Suite};
use huitou_proto::customer::v1 as cpb;
use huitou_proto::customer::v1::customer_service_client::CustomerServiceClient;
use huitou_proto::loyalty::v1 as pb;
use huitou_proto::loyalty::v1::loyalty_service_client::LoyaltyServiceClient;
use huitou_runtime::Role;
use huitou_storage::outbox::Subscriber;
use huitou_testkit::TestDatabase;
use huitou_tests::{ago, bearer, test_settings, with_loyalty};
use tonic::Code;

type Serving = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

async fn serve(suite: Suite, listener: tokio::net::TcpListener) -> Serving {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        suite
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("serves");
    });
    (stop, task)
}

fn channel(address: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

#[tokio::test]
async fn loyalty_alone_checks_keys_with_the_customer_service_and_gets_its_events() {
    let customer_db = TestDatabase::new("alone-customer").await;
    let loyalty_db = TestDatabase::new("alone-loyalty").await;
    let customer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let loyalty_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (customer_at, loyalty_at) = (
        customer_listener.local_addr().unwrap(),
        loyalty_listener.local_addr().unwrap(),
    );

    let mut settings = test_settings(&customer_db);
    settings.customer.outbox.subscribers = vec![Subscriber {
        name: "loyalty".into(),
        endpoint: format!("http://{loyalty_at}"),
        event_types: huitou_loyalty::events::SUBSCRIBED
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    }];
    let customer = Suite::open_services(settings.clone(), Services::Customer, true)
        .await
        .expect("customer opens");
    assert_eq!(customer.service_names(), vec!["customer"]);
    let store = &customer.customer().expect("customer").store;
    let shop = store
        .create_shop("独立部署", "Asia/Shanghai")
        .await
        .expect("shop");
    let (_, key) = store
        .create_api_key(&shop.id, Role::Storefront, "test")
        .await
        .expect("key");
    let stop_customer = serve(customer, customer_listener).await;

    // Loyalty without the key service configured refuses to start.
    let mut alone = test_settings(&customer_db);
    with_loyalty(&mut alone, &loyalty_db);
    let refused = Suite::open_services(alone.clone(), Services::Loyalty, true).await;
    assert!(
        refused
            .err()
            .is_some_and(|e| e.to_string().contains("auth.key_service"))
    );
    alone.auth.key_service = format!("http://{customer_at}");
    let loyalty = Suite::open_services(alone, Services::Loyalty, true)
        .await
        .expect("loyalty opens");
    assert_eq!(loyalty.service_names(), vec!["loyalty"]);
    let stop_loyalty = serve(loyalty, loyalty_listener).await;

    let mut orders = CustomerServiceClient::with_interceptor(channel(customer_at), bearer(&key));
    let mut members = LoyaltyServiceClient::with_interceptor(channel(loyalty_at), bearer(&key));
    orders
        .record_order(cpb::RecordOrderRequest {
            order_no: "A-1".into(),
            buyer_nick: "tb_alone".into(),
            status: cpb::OrderStatus::Paid as i32,
            items: vec![cpb::OrderItem {
                sku: "SKU-1".into(),
                category: "童装".into(),
                quantity: 1,
                unit_price_fen: 30_000,
                title: String::new(),
            }],
            payable_fen: 30_000,
            create_time: Some(ago(600)),
            pay_time: Some(ago(500)),
            ..Default::default()
        })
        .await
        .expect("order");
    let mut balance = 0;
    for _ in 0..400 {
        if let Ok(r) = members
            .get_member(pb::GetMemberRequest {
                buyer_nick: "tb_alone".into(),
                ..Default::default()
            })
            .await
        {
            balance = r.into_inner().member.expect("member").balance_points;
            if balance > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(balance, 300, "the paid order's points reached loyalty");

    // A key whose secret is wrong is refused by loyalty too (the customer
    // service said so).
    let altered = |last: char| {
        let mut k = key.clone();
        k.pop();
        k.push(last);
        assert_ne!(k, key);
        k
    };
    let wrong = if key.ends_with('a') {
        altered('b')
    } else {
        altered('a')
    };
    let mut stranger = LoyaltyServiceClient::with_interceptor(channel(loyalty_at), bearer(&wrong));
    let err = stranger
        .get_program(pb::GetProgramRequest {})
        .await
        .expect_err("unknown key");
    assert_eq!(err.code(), Code::Unauthenticated);

    // With the customer service gone, a key loyalty has not seen yet cannot
    // be checked: UNAVAILABLE, never let through.
    let _ = stop_customer.0.send(());
    stop_customer.1.await.expect("customer stopped");
    let unseen = if key.ends_with('c') {
        altered('d')
    } else {
        altered('c')
    };
    let mut other = LoyaltyServiceClient::with_interceptor(channel(loyalty_at), bearer(&unseen));
    let err = other
        .get_program(pb::GetProgramRequest {})
        .await
        .expect_err("no key service");
    assert_eq!(err.code(), Code::Unavailable);
    let _ = stop_loyalty.0.send(());
    stop_loyalty.1.await.expect("loyalty stopped");
    customer_db.cleanup().await;
    loyalty_db.cleanup().await;
}
