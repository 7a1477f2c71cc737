//! Personal data never appears in clear: not in the logs (at TRACE level),
//! not in the database files or tables, not in events.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::io::Write;
use std::sync::{Arc, Mutex};

use huitou_proto::customer::v1 as pb;
use huitou_tests::{TestSuite, ago};
use sea_orm::ConnectionTrait;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PHONE: &str = "13987654321";
const NAME: &str = "欧阳秘密";
const EMAIL: &str = "secret.buyer@example.com";
const WECHAT: &str = "wx_secret_007";
const ADDRESS: &str = "浙江省杭州市西湖区秘密路 88 号";

fn planted() -> Vec<String> {
    vec![
        PHONE.into(),
        "+8613987654321".into(),
        NAME.into(),
        EMAIL.into(),
        WECHAT.into(),
        "秘密路 88 号".into(),
    ]
}

#[tokio::test]
async fn planted_personal_data_is_not_in_logs_or_storage() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("subscriber");

    let suite = TestSuite::start("privacy").await;
    let mut client = suite.customers(&suite.shop.operator);
    let customer = client
        .upsert_customer(pb::UpsertCustomerRequest {
            request_id: "plant-1".into(),
            buyer_nick: "secretive".into(),
            name: Some(NAME.into()),
            phone: Some(PHONE.into()),
            email: Some(EMAIL.into()),
            wechat_id: Some(WECHAT.into()),
            address: Some(ADDRESS.into()),
            ..Default::default()
        })
        .await
        .expect("plant")
        .into_inner()
        .customer
        .expect("customer");
    client
        .record_order(pb::RecordOrderRequest {
            order_no: "P-1".into(),
            buyer_nick: "another".into(),
            status: pb::OrderStatus::Paid as i32,
            items: vec![pb::OrderItem {
                sku: "S".into(),
                category: "c".into(),
                quantity: 1,
                unit_price_fen: 100,
                title: String::new(),
            }],
            payable_fen: 100,
            create_time: Some(ago(60)),
            pay_time: Some(ago(30)),
            receiver: Some(pb::ContactDetails {
                name: NAME.into(),
                phone: PHONE.into(),
                address: ADDRESS.into(),
            }),
            ..Default::default()
        })
        .await
        .expect("order with receiver");
    client
        .find_customer_by_phone(pb::FindCustomerByPhoneRequest {
            phone: PHONE.into(),
        })
        .await
        .expect("find");
    let revealed = client
        .reveal_contact(pb::RevealContactRequest {
            customer_id: customer.id.clone(),
            field: pb::ContactField::Phone as i32,
            reason: "privacy test".into(),
        })
        .await
        .expect("reveal")
        .into_inner();
    assert_eq!(revealed.value, PHONE, "the reveal itself works");
    // Error paths log too: a bad phone echoed nowhere.
    let _ = client
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "secretive".into(),
            phone: Some(format!("{PHONE}0")),
            ..Default::default()
        })
        .await
        .expect_err("too long");
    let _ = client
        .find_customer_by_phone(pb::FindCustomerByPhoneRequest {
            phone: "13900000000".into(),
        })
        .await
        .expect_err("unknown");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let log_text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).to_string();
    assert!(
        log_text.contains("rpc"),
        "the capture works: {} bytes",
        log_text.len()
    );
    for secret in planted() {
        assert!(!log_text.contains(&secret), "{secret} appears in the logs");
    }

    let database = suite.settings.customer.database.clone();
    let storage = suite.stop_keeping_storage().await;
    if let Some(path) = database.url.strip_prefix("sqlite://") {
        let file = std::path::Path::new(path.split('?').next().unwrap_or(path));
        let dir = file.parent().expect("folder");
        for entry in std::fs::read_dir(dir).expect("read folder") {
            let path = entry.expect("entry").path();
            // A -wal file may be checkpointed away between listing and reading.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            for secret in planted() {
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "{secret} appears in {}", path.display());
            }
        }
    } else {
        let db = huitou_storage::Database::connect(&database)
            .await
            .expect("db");
        for table in [
            "customers",
            "orders",
            "outbox_events",
            "audit_entries",
            "idempotency_keys",
            "consent_changes",
            "customer_tags",
        ] {
            let rows = db
                .conn()
                .query_all_raw(sea_orm::Statement::from_string(
                    db.backend(),
                    format!("SELECT t::text AS row FROM {table} t"),
                ))
                .await
                .expect("dump");
            for row in rows {
                let text: String = row.try_get("", "row").expect("row");
                // bytea shows as hex; check that form too.
                for secret in planted() {
                    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
                    assert!(
                        !text.contains(&secret) && !text.contains(&hex),
                        "{secret} appears in {table}"
                    );
                }
            }
        }
    }
    storage.cleanup().await;
}

#[tokio::test]
async fn a_rotated_key_takes_over_after_a_reseal_and_the_old_key_can_go() {
    use secrecy::SecretString;

    let suite = TestSuite::start("reseal").await;
    let keys = suite.shop.clone();
    let mut ops = suite.customers(&keys.operator);
    let customer = ops
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "tb_rotate".into(),
            name: Some(NAME.into()),
            phone: Some(PHONE.into()),
            email: Some(EMAIL.into()),
            ..Default::default()
        })
        .await
        .expect("customer")
        .into_inner()
        .customer
        .expect("customer");
    let mut settings = suite.settings.clone();
    // Loyalty's and coupon's databases go with the first suite; this is
    // about customer.
    settings.loyalty = None;
    settings.coupon = None;
    let database = suite.stop_keeping_storage().await;

    // Rotate: k2 joins and becomes active; k1 stays to open old values.
    let k2 = huitou_privacy::random_hex_key().expect("key");
    let personal = &mut settings.customer.personal_data;
    personal
        .keys
        .insert("k2".into(), SecretString::from(k2.clone()));
    personal.active_key_id = "k2".into();
    let rotated = huitou::Suite::open(settings.clone(), false)
        .await
        .expect("opens");
    let store = &rotated.customer().expect("customer").store;
    let first = store.reseal_personal_data().await.expect("reseal");
    assert_eq!(first.fields, 3, "name, phone and email moved to k2");
    let again = store.reseal_personal_data().await.expect("reseal");
    assert_eq!(again.fields, 0, "nothing left under k1");
    drop(rotated);

    // Without k1 the data still opens: it is all under k2 now.
    settings.customer.personal_data.keys.remove("k1");
    let suite = TestSuite::start_with(database, settings).await;
    let mut ops = suite.customers(&keys.operator);
    let revealed = ops
        .reveal_contact(pb::RevealContactRequest {
            customer_id: customer.id.clone(),
            field: pb::ContactField::Phone as i32,
            reason: "核对密钥轮换".into(),
        })
        .await
        .expect("reveal")
        .into_inner();
    assert_eq!(revealed.value, PHONE);
    let found = ops
        .find_customer_by_phone(pb::FindCustomerByPhoneRequest {
            phone: PHONE.into(),
        })
        .await
        .expect("lookup")
        .into_inner();
    assert_eq!(found.customer.expect("customer").id, customer.id);
    suite.stop().await;
}
