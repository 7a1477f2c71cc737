//! Kill the process while it takes orders: after a restart every
//! acknowledged order is there exactly once, statistics agree with the
//! orders, and every event reaches the subscriber once.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huitou_proto::customer::v1 as pb;
use huitou_proto::customer::v1::customer_service_client::CustomerServiceClient;
use huitou_testkit::probe::Probe;
use huitou_testkit::{TestDatabase, temp_dir};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const TOKEN: &str = "crash-test-internal-token-0123456789";

fn start(
    data: &std::path::Path,
    config: &std::path::Path,
    listen: &str,
    log: &std::path::Path,
) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_huitou"))
        .args(["up", "--data-dir"])
        .arg(data)
        .args(["--listen", listen, "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start huitou")
}

async fn wait_serving(channel: Channel) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let ok = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| {
                r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            })
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "huitou did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Intercept =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client =
    CustomerServiceClient<tonic::service::interceptor::InterceptedService<Channel, Intercept>>;

fn client(channel: Channel, key: &str) -> Client {
    let bearer: MetadataValue<_> = format!("Bearer {key}").parse().expect("metadata");
    let interceptor: Intercept = Box::new(move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    CustomerServiceClient::with_interceptor(channel, interceptor)
}

fn order(order_no: &str, nick: &str) -> pb::RecordOrderRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    pb::RecordOrderRequest {
        order_no: order_no.into(),
        buyer_nick: nick.into(),
        status: pb::OrderStatus::Paid as i32,
        items: vec![pb::OrderItem {
            sku: "SKU".into(),
            category: "c".into(),
            quantity: 1,
            unit_price_fen: 1_000,
            title: String::new(),
        }],
        payable_fen: 1_000,
        create_time: Some(prost_types::Timestamp {
            seconds: now - 60,
            nanos: 0,
        }),
        pay_time: Some(prost_types::Timestamp {
            seconds: now - 30,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_ingest_loses_nothing_and_duplicates_nothing() {
    let mut probe = Probe::new(TOKEN).await;
    probe.start().await;
    let database = TestDatabase::new("crash").await;
    let data = temp_dir("crash-data");
    let config = data.join("test.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\ninternal_token = \"{TOKEN}\"\n\n[customer.database]\nurl = \"{}\"\n\n\
             [customer.outbox]\npoll_interval_ms = 50\nretry_base_ms = 50\nretry_max_ms = 500\n\n\
             [[customer.outbox.subscribers]]\nname = \"probe\"\nendpoint = \"{}\"\n",
            database.config.url,
            probe.endpoint()
        ),
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
        .expect("endpoint")
        .timeout(Duration::from_secs(5))
        .connect_lazy();

    let mut child = start(&data, &config, &listen, &data.join("first.log"));
    wait_serving(channel.clone()).await;
    let demo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("demo-shop.json")).expect("demo"))
            .expect("json");
    let key = demo["api_key"].as_str().expect("key").to_owned();

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (acked, running, mut c) = (
            acked.clone(),
            running.clone(),
            client(channel.clone(), &key),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while running.load(Ordering::Relaxed) {
                let no = format!("K{w}-{i}");
                if c.record_order(order(&no, &format!("buyer{}", w % 3)))
                    .await
                    .is_ok()
                {
                    acked.lock().expect("acked").push(no);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    running.store(false, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let acked: Vec<String> = acked.lock().expect("acked").clone();
    assert!(
        acked.len() > 10,
        "the writers got going before the kill ({} orders)",
        acked.len()
    );
    eprintln!("{} orders acknowledged before the kill", acked.len());

    let mut child = start(&data, &config, &listen, &data.join("second.log"));
    wait_serving(channel.clone()).await;
    let mut c = client(channel.clone(), &key);
    for no in &acked {
        c.get_order(pb::GetOrderRequest {
            order_no: no.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("acknowledged order {no} is missing: {e}"));
    }
    // Every stored order once; statistics agree with the orders.
    let mut stored = BTreeSet::new();
    let mut counted = 0;
    for b in 0..3 {
        let customer = c
            .get_customer(pb::GetCustomerRequest {
                buyer_nick: format!("buyer{b}"),
                ..Default::default()
            })
            .await
            .expect("buyer")
            .into_inner()
            .customer
            .expect("customer");
        let mut token = String::new();
        let mut mine = 0;
        loop {
            let page = c
                .list_orders(pb::ListOrdersRequest {
                    customer_id: customer.id.clone(),
                    page_size: 500,
                    page_token: token,
                })
                .await
                .expect("orders")
                .into_inner();
            for o in page.orders {
                assert!(
                    stored.insert(o.order_no.clone()),
                    "{} listed twice",
                    o.order_no
                );
                mine += 1;
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let stats = customer.stats.expect("stats");
        assert_eq!(
            stats.order_count, mine,
            "buyer{b}'s order count matches its orders"
        );
        assert_eq!(stats.spent_fen, mine * 1_000);
        counted += mine;
    }
    assert!(counted as usize >= acked.len());

    // Every stored order's events arrive, each once.
    let seen = probe
        .wait_until(Duration::from_secs(20), |s| {
            s.iter().filter(|e| e.event_type == "order.paid").count() >= stored.len()
        })
        .await;
    let mut per_order: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in seen.iter().filter(|e| e.event_type.starts_with("order.")) {
        *per_order
            .entry((e.event_type.clone(), e.order_no.clone()))
            .or_default() += 1;
    }
    for no in &stored {
        for t in ["order.created", "order.paid"] {
            assert_eq!(
                per_order.get(&(t.to_owned(), no.clone())),
                Some(&1),
                "{t} of {no}"
            );
        }
    }
    child.kill().expect("stop");
    let _ = child.wait();
    probe.stop().await;
    database.cleanup().await;
}
