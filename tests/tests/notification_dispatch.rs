//! The dispatcher under the conditions that lose or duplicate messages in
//! lesser systems: two dispatchers racing for one customer's cap, a
//! dispatcher killed mid-send, a gateway that keeps failing, a gateway
//! that refuses, a fallback, a customer without an address, a reminder
//! dropped while it is being sent. Runs on SQLite
//! and (with HUITOU_TEST_DATABASE_URL) on PostgreSQL.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use huitou_notification::contacts::ContactBook;
use huitou_notification::dispatcher::{Dispatcher, Providers};
use huitou_notification::policy::Policy;
use huitou_notification::providers::{Outgoing, Provider, SendError};
use huitou_notification::store::Store;
use huitou_notification::store::messages::{NewMessage, status};
use huitou_notification::store::recipients::RecipientChange;
use huitou_notification::{NotificationConfig, NotificationService};
use huitou_proto::customer::v1::Channel;
use huitou_proto::notification::v1 as pb;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::now_micros;
use huitou_testkit::TestDatabase;

const SHOP: &str = "shop-1";

/// Every customer's address is a made-up phone, except customers whose
/// id starts with "nobody".
struct Book;

impl ContactBook for Book {
    fn addresses<'a>(
        &'a self,
        _shop_id: &'a str,
        channel: i32,
        customer_ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, String>> {
        Box::pin(async move {
            Ok(customer_ids
                .iter()
                .filter(|c| !c.starts_with("nobody"))
                .map(|c| {
                    let to = if channel == Channel::Email as i32 {
                        format!("{c}@example.com")
                    } else {
                        "13800000000".to_owned()
                    };
                    (c.clone(), to)
                })
                .collect())
        })
    }

    fn find_by_phone<'a>(
        &'a self,
        _shop_id: &'a str,
        _phone: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async { Ok(None) })
    }

    fn withdraw_consent<'a>(
        &'a self,
        _shop_id: &'a str,
        _customer_id: &'a str,
        _channel: i32,
        _at: i64,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// A gateway that records every message id it is handed and answers as
/// told: `fail_first` transient failures, then success; or always a
/// permanent refusal.
struct Gateway {
    name: &'static str,
    seen: Mutex<Vec<String>>,
    fail_first: Mutex<usize>,
    refuse: bool,
}

impl Gateway {
    fn new(name: &'static str, fail_first: usize, refuse: bool) -> Arc<Gateway> {
        Arc::new(Gateway {
            name,
            seen: Mutex::default(),
            fail_first: Mutex::new(fail_first),
            refuse,
        })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Provider for Gateway {
    fn name(&self) -> &str {
        self.name
    }

    fn send<'a>(&'a self, message: &'a Outgoing) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(message.id.clone());
            if self.refuse {
                return Err(SendError::Permanent(
                    "HTTP 400: template not approved".into(),
                ));
            }
            let mut left = self.fail_first.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(SendError::Transient("HTTP 503".into()));
            }
            Ok(format!("{}-{}", self.name, message.id))
        })
    }
}

struct Fixture {
    database: TestDatabase,
    store: Store,
    rates: Arc<dyn huitou_storage::cache::Cache>,
}

impl Fixture {
    async fn new(label: &str) -> Fixture {
        let database = TestDatabase::new(label).await;
        let config = NotificationConfig {
            database: database.config.clone(),
            ..Default::default()
        };
        let service = NotificationService::open_with(&config, true, Arc::new(Book))
            .await
            .expect("open");
        let store = service.store.clone();
        let mut policy = Policy {
            duplicate_days: 0,
            max_attempts: 3,
            ..Policy::default()
        };
        policy.windows = vec![huitou_notification::domain::window::Window::new(0, 1440).unwrap()];
        store
            .transaction(move |tx, store| {
                let policy = policy.clone();
                Box::pin(async move { store.set_policy(tx, SHOP, &policy).await.map(|_| ()) })
            })
            .await
            .expect("policy");
        let rates: Arc<dyn huitou_storage::cache::Cache> =
            Arc::new(huitou_storage::cache::LocalCache::new(10_000));
        Fixture {
            database,
            store,
            rates,
        }
    }

    fn dispatcher(
        &self,
        first: Arc<dyn Provider>,
        fallback: Option<Arc<dyn Provider>>,
    ) -> Dispatcher {
        self.limited_dispatcher(first, fallback, 0)
    }

    fn limited_dispatcher(
        &self,
        first: Arc<dyn Provider>,
        fallback: Option<Arc<dyn Provider>>,
        per_shop_per_second: u32,
    ) -> Dispatcher {
        let route = Providers {
            first,
            fallback,
            per_shop_per_second,
        };
        let routes = HashMap::from([
            (Channel::Sms as i32, route.clone()),
            (Channel::Email as i32, route),
        ]);
        Dispatcher::new(
            self.store.clone(),
            routes,
            Arc::new(Book),
            50,
            Duration::from_secs(60),
            self.rates.clone(),
        )
    }

    async fn template(&self, kind: pb::MessageKind, body: &str) -> pb::Template {
        self.save_template(pb::Template {
            name: "t".into(),
            channel: Channel::Sms as i32,
            kind: kind as i32,
            body: body.into(),
            signature: "回头客".into(),
            ..Default::default()
        })
        .await
    }

    async fn save_template(&self, t: pb::Template) -> pb::Template {
        self.store
            .transaction(move |tx, store| {
                let t = t.clone();
                Box::pin(async move { store.create_template(tx, SHOP, &t).await })
            })
            .await
            .expect("template")
    }

    async fn consent(&self, customer: &str) {
        let customer = customer.to_owned();
        self.store
            .transaction(move |tx, store| {
                let customer = customer.clone();
                Box::pin(async move {
                    let consented = vec!["sms".to_owned()];
                    store
                        .change_recipient(
                            tx,
                            SHOP,
                            &customer,
                            RecipientChange::Profile {
                                consented: &consented,
                                consent_changed: vec!["sms".into()],
                                birthday_month: 0,
                                birthday_day: 0,
                                at: now_micros(),
                            },
                        )
                        .await
                })
            })
            .await
            .expect("consent");
    }

    async fn accept(&self, customer: &str, t: &pb::Template) -> String {
        self.accept_with(customer, t, BTreeMap::new()).await
    }

    async fn accept_with(
        &self,
        customer: &str,
        t: &pb::Template,
        vars: BTreeMap<String, String>,
    ) -> String {
        self.accept_for(customer, t, vars, "test", "").await
    }

    /// Accepts a message of `origin` for `order_no` (none when empty).
    async fn accept_for(
        &self,
        customer: &str,
        t: &pb::Template,
        vars: BTreeMap<String, String>,
        origin: &'static str,
        order_no: &str,
    ) -> String {
        let (customer, t, order_no) = (customer.to_owned(), t.clone(), order_no.to_owned());
        self.store
            .transaction(move |tx, store| {
                let (customer, t, vars, order_no) =
                    (customer.clone(), t.clone(), vars.clone(), order_no.clone());
                Box::pin(async move {
                    let rendered = huitou_notification::template::render(&t, &vars, "variables")?;
                    let m = NewMessage {
                        customer_id: &customer,
                        template: &t,
                        rendered,
                        variables: &vars,
                        not_before: now_micros(),
                        urgent: false,
                        origin,
                        dedupe_key: String::new(),
                        order_no: &order_no,
                    };
                    Ok(store.accept(tx, SHOP, &m).await?.id)
                })
            })
            .await
            .expect("accept")
    }

    async fn message(&self, id: &str) -> pb::Message {
        self.store
            .message_with_history(self.store.db.conn(), SHOP, id)
            .await
            .expect("message")
    }

    /// Makes every waiting message due now (time travel past back-offs).
    async fn due_now(&self) {
        self.store
            .db
            .execute(
                "UPDATE messages SET due_at = 0 WHERE status IN (1, 2, 8)",
                vec![],
            )
            .await
            .expect("due now");
    }

    async fn cleanup(self) {
        self.database.cleanup().await;
    }
}

fn rounds() -> usize {
    huitou_tests::race_rounds(20).min(50)
}

#[tokio::test]
async fn two_dispatchers_never_pass_one_customers_cap_together() {
    let f = Fixture::new("notify-race").await;
    let gateway = Gateway::new("gw", 0, false);
    let a = f.dispatcher(gateway.clone(), None);
    let b = f.dispatcher(gateway.clone(), None);
    let sale = f
        .template(pb::MessageKind::Marketing, "双11全场满299减30，回T退订")
        .await;
    for round in 0..rounds() {
        let customers: Vec<String> = (0..3).map(|i| format!("c-{round}-{i}")).collect();
        let mut ids = Vec::new();
        for c in &customers {
            f.consent(c).await;
        }
        for _ in 0..8 {
            for c in &customers {
                ids.push(f.accept(c, &sale).await);
            }
        }
        // Both dispatchers pass at once until nothing is due.
        loop {
            let (x, y) = tokio::join!(a.pass(), b.pass());
            if x.expect("pass a") + y.expect("pass b") == 0 {
                break;
            }
        }
        let mut sent_per_customer: HashMap<String, usize> = HashMap::new();
        for id in &ids {
            let m = f.message(id).await;
            match m.status {
                s if s == status::SENT => *sent_per_customer.entry(m.customer_id).or_default() += 1,
                s if s == status::SUPPRESSED => assert_eq!(m.status_reason, "FREQUENCY_CAP"),
                other => panic!("message left in status {other}: {m:#?}"),
            }
        }
        for c in &customers {
            assert_eq!(
                sent_per_customer.get(c),
                Some(&1),
                "round {round}: the cap of 1 per 3 days let {:?} through for {c}",
                sent_per_customer.get(c)
            );
        }
    }
    // The gateway saw each sent message once.
    let seen = gateway.seen();
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(seen.len(), unique.len());
    assert_eq!(seen.len(), 3 * rounds());
    f.cleanup().await;
}

#[tokio::test]
async fn a_message_whose_dispatcher_died_mid_send_is_sent_again_under_the_same_key() {
    let f = Fixture::new("notify-killed").await;
    let gateway = Gateway::new("gw", 0, false);
    let care = f
        .template(pb::MessageKind::Transactional, "天冷了，注意保暖。")
        .await;
    let id = f.accept("wang", &care).await;
    // A dispatcher claims it with a 1 ms lease, hands it to the gateway,
    // and dies before recording the answer.
    let claimed = f
        .store
        .claim_due(now_micros(), 10, 1_000)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let out = Outgoing {
        id: claimed[0].id.clone(),
        shop_id: SHOP.into(),
        customer_id: "wang".into(),
        channel: "sms",
        to: "13800000000".into(),
        text: claimed[0].body.clone(),
        subject: String::new(),
        provider_template_id: String::new(),
        variables: BTreeMap::new(),
        attempt: 1,
    };
    gateway
        .send(&out)
        .await
        .expect("first attempt reached the gateway");
    assert_eq!(f.message(&id).await.status, status::SENDING);
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Another dispatcher takes over once the lease ends.
    let d = f.dispatcher(gateway.clone(), None);
    assert_eq!(d.pass().await.expect("pass"), 1);
    let m = f.message(&id).await;
    assert_eq!(m.status, status::SENT, "{m:#?}");
    assert_eq!(m.attempts, 2);
    assert!(
        m.history
            .iter()
            .any(|h| h.detail.contains("ended without an answer"))
    );
    // Both attempts carried the same idempotency key: the gateway can drop
    // the second.
    assert_eq!(gateway.seen(), vec![id.clone(), id.clone()]);
    // A late answer from the dead dispatcher changes nothing.
    f.store
        .record_outcomes(
            vec![(
                claimed[0].clone(),
                huitou_notification::store::dispatch::Outcome::Failed {
                    detail: "late".into(),
                    permanent: true,
                },
            )],
            || 0.5,
        )
        .await
        .expect("late answer");
    assert_eq!(f.message(&id).await.status, status::SENT);
    f.cleanup().await;
}

#[tokio::test]
async fn failures_retry_with_back_off_then_dead_letter_and_give_the_cap_back() {
    let f = Fixture::new("notify-retry").await;
    let down = Gateway::new("down", usize::MAX, false);
    let d = f.dispatcher(down.clone(), None);
    let sale = f
        .template(pb::MessageKind::Marketing, "上新啦，回T退订")
        .await;
    f.consent("li").await;
    let id = f.accept("li", &sale).await;
    let before = now_micros();
    d.pass().await.expect("pass");
    let m = f.message(&id).await;
    assert_eq!(m.status, status::RETRYING, "{m:#?}");
    let wait =
        huitou_proto::micros_from_timestamp(&m.deliver_after_time.unwrap()).unwrap() - before;
    assert!(
        (5_000_000..=31_000_000).contains(&wait),
        "first retry after {wait} µs"
    );
    // Nothing happens before the back-off ends.
    assert_eq!(d.pass().await.expect("pass"), 0);
    for _ in 0..2 {
        f.due_now().await;
        d.pass().await.expect("pass");
    }
    let m = f.message(&id).await;
    assert_eq!(m.status, status::FAILED, "{m:#?}");
    assert!(
        m.status_reason.starts_with("DEAD_LETTER"),
        "{}",
        m.status_reason
    );
    assert_eq!(m.attempts, 3);
    assert_eq!(down.seen().len(), 3);
    // The failed message no longer counts against the cap: the next one goes.
    let up = Gateway::new("up", 0, false);
    let id2 = f
        .accept(
            "li",
            &f.template(pb::MessageKind::Marketing, "冬装，回T退订")
                .await,
        )
        .await;
    f.dispatcher(up, None).pass().await.expect("pass");
    assert_eq!(f.message(&id2).await.status, status::SENT);
    f.cleanup().await;
}

#[tokio::test]
async fn a_fallback_takes_over_a_refusal_is_final_and_no_address_is_suppressed() {
    let f = Fixture::new("notify-fallback").await;
    let care = f
        .template(pb::MessageKind::Transactional, "天冷了，注意保暖。")
        .await;

    let down = Gateway::new("down", usize::MAX, false);
    let backup = Gateway::new("backup", 0, false);
    let id = f.accept("zhao", &care).await;
    f.dispatcher(down, Some(backup.clone()))
        .pass()
        .await
        .expect("pass");
    let m = f.message(&id).await;
    assert_eq!((m.status, m.provider.as_str()), (status::SENT, "backup"));
    assert!(m.history.iter().any(|h| h.detail.contains("fallback")));

    let refusing = Gateway::new("strict", 0, true);
    let id = f.accept("qian", &care).await;
    f.dispatcher(refusing, None).pass().await.expect("pass");
    let m = f.message(&id).await;
    assert_eq!(m.status, status::FAILED);
    assert!(
        m.status_reason.starts_with("REJECTED"),
        "{}",
        m.status_reason
    );
    assert_eq!(m.attempts, 1);

    let id = f.accept("nobody-1", &care).await;
    f.dispatcher(Gateway::new("gw", 0, false), None)
        .pass()
        .await
        .expect("pass");
    let m = f.message(&id).await;
    assert_eq!(
        (m.status, m.status_reason.as_str()),
        (status::SUPPRESSED, "NO_ADDRESS")
    );
    f.cleanup().await;
}

/// A one-request HTTP server: answers `reply` to the first request and
/// hands back what it received.
async fn http_once(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/send", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&got).to_string()
    });
    (url, task)
}

#[tokio::test]
async fn the_webhook_and_template_sms_gateways_get_signed_requests_with_the_idempotency_key() {
    use huitou_notification::providers::ProviderConfig;
    let f = Fixture::new("notify-webhook").await;
    let secret = "webhook-secret-0123456789";
    let (url, request) = http_once(r#"{"id":"gw-42"}"#).await;
    let webhook = ProviderConfig::Webhook {
        url,
        secret: secret.to_owned().into(),
        timeout_ms: 5_000,
    }
    .open("gateway")
    .unwrap();
    let care = f
        .template(pb::MessageKind::Transactional, "天冷了，注意保暖。")
        .await;
    let id = f.accept("wang", &care).await;
    f.dispatcher(webhook, None).pass().await.expect("pass");
    let m = f.message(&id).await;
    assert_eq!(
        (m.status, m.provider_message_id.as_str()),
        (status::SENT, "gw-42")
    );
    let got = request.await.unwrap();
    assert!(got.contains(&format!("Idempotency-Key: {id}")), "{got}");
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    let timestamp: i64 = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Huitou-Timestamp: "))
        .unwrap()
        .parse()
        .unwrap();
    let signature = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Huitou-Signature: sha256="))
        .unwrap();
    assert_eq!(
        signature,
        huitou_notification::providers::webhook::sign(
            secret.as_bytes(),
            timestamp,
            body.as_bytes()
        )
    );
    assert!(body.contains("天冷了"));

    // The template gateway gets the approved template code and parameters.
    let (url, request) = http_once(r#"{"Code":"OK","BizId":"biz-7"}"#).await;
    let sms = ProviderConfig::SmsTemplate {
        url,
        secret: secret.to_owned().into(),
        timeout_ms: 5_000,
    }
    .open("aliyun")
    .unwrap();
    let shipped = f
        .save_template(pb::Template {
            name: "发货".into(),
            channel: Channel::Sms as i32,
            kind: pb::MessageKind::Transactional as i32,
            body: "订单{{order_no}}已发出".into(),
            signature: "回头客".into(),
            provider_template_id: "SMS_123456".into(),
            ..Default::default()
        })
        .await;
    let vars = BTreeMap::from([("order_no".to_owned(), "E9".to_owned())]);
    let id = f.accept_with("wang", &shipped, vars).await;
    f.dispatcher(sms, None).pass().await.expect("pass");
    let m = f.message(&id).await;
    assert_eq!(
        (m.status, m.provider_message_id.as_str()),
        (status::SENT, "biz-7")
    );
    let got = request.await.unwrap();
    let body = got.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["TemplateCode"], "SMS_123456");
    assert_eq!(v["SignName"], "回头客");
    assert_eq!(v["TemplateParam"], r#"{"order_no":"E9"}"#);
    assert_eq!(v["OutId"], id.as_str());
    f.cleanup().await;
}

#[tokio::test]
async fn email_goes_through_a_real_smtp_server() {
    use huitou_notification::providers::ProviderConfig;
    let f = Fixture::new("notify-smtp").await;
    let dir = huitou_testkit::temp_dir("notify-smtp");
    let mailbox = dir.join("mailbox.txt");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Python's standard SMTP server, writing what it receives to a file.
    let script = format!(
        r#"
import asyncore, smtpd, warnings
warnings.simplefilter("ignore")
class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        with open({mailbox:?}, "ab") as f:
            f.write(("FROM " + mailfrom + " TO " + ",".join(rcpttos) + "\n").encode())
            f.write(data if isinstance(data, bytes) else data.encode())
            f.write(b"\n--end--\n")
Sink(("127.0.0.1", {port}), None, decode_data=False)
asyncore.loop()
"#,
        mailbox = mailbox.display().to_string(),
    );
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Killed(
        std::process::Command::new("python3")
            .args(["-W", "ignore", "-c"])
            .arg(script)
            .spawn()
            .expect("python3 runs the SMTP server"),
    );
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let smtp = ProviderConfig::Smtp {
        relay: format!("127.0.0.1:{port}"),
        from: "shop@example.com".into(),
        user: String::new(),
        password: String::new().into(),
        timeout_ms: 5_000,
    }
    .open("smtp")
    .unwrap();
    let newsletter = f
        .save_template(pb::Template {
            name: "上新".into(),
            channel: Channel::Email as i32,
            kind: pb::MessageKind::Transactional as i32,
            body: "亲，订单{{order_no}}已签收，欢迎再来。".into(),
            subject: "签收关怀".into(),
            ..Default::default()
        })
        .await;
    let vars = BTreeMap::from([("order_no".to_owned(), "E7".to_owned())]);
    let id = f.accept_with("zhou", &newsletter, vars).await;
    f.dispatcher(smtp, None).pass().await.expect("pass");
    let m = f.message(&id).await;
    assert_eq!(m.status, status::SENT, "{m:#?}");
    let got = std::fs::read_to_string(&mailbox).expect("the server received mail");
    assert!(
        got.contains("FROM shop@example.com TO zhou@example.com"),
        "{got}"
    );
    assert!(got.contains(&format!("Message-ID: <{id}@huitou>")), "{got}");
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode("亲，订单E7已签收，欢迎再来。");
    assert!(got.contains(&body[..40]), "{got}");
    f.cleanup().await;
}

#[tokio::test]
async fn birthdays_and_holidays_are_greeted_once_each() {
    use chrono::Datelike;
    let f = Fixture::new("notify-calendar").await;
    let now = now_micros();
    let today =
        huitou_notification::domain::window::local_date(chrono_tz::Asia::Shanghai, now).unwrap();
    let greeting = f
        .template(pb::MessageKind::Marketing, "生日快乐！回T退订")
        .await;
    let festive = f
        .template(pb::MessageKind::Marketing, "中秋快乐！回T退订")
        .await;
    for (customer, month, day, consent) in [
        ("today-fan", today.month() as i32, today.day() as i32, true),
        (
            "today-silent",
            today.month() as i32,
            today.day() as i32,
            false,
        ),
        (
            "other-day",
            if today.month() == 1 { 2 } else { 1 },
            15,
            true,
        ),
    ] {
        let (customer, consented) = (
            customer.to_owned(),
            if consent {
                vec!["sms".to_owned()]
            } else {
                vec![]
            },
        );
        f.store
            .transaction(move |tx, store| {
                let (customer, consented) = (customer.clone(), consented.clone());
                Box::pin(async move {
                    store
                        .change_recipient(
                            tx,
                            SHOP,
                            &customer,
                            RecipientChange::Profile {
                                consented: &consented,
                                consent_changed: vec![],
                                birthday_month: month,
                                birthday_day: day,
                                at: now,
                            },
                        )
                        .await
                })
            })
            .await
            .unwrap();
    }
    let rule = pb::TriggerRule {
        trigger: pb::Trigger::Birthday as i32,
        template_id: greeting.id.clone(),
        enabled: true,
        ..Default::default()
    };
    let holiday = pb::Holiday {
        date: today.format("%Y-%m-%d").to_string(),
        name: "中秋".into(),
        greeting_template_id: festive.id.clone(),
        ..Default::default()
    };
    f.store
        .transaction(move |tx, store| {
            let (rule, holiday) = (rule.clone(), holiday.clone());
            Box::pin(async move {
                store.set_trigger_rule(tx, SHOP, &rule).await?;
                store.set_holiday(tx, SHOP, &holiday).await
            })
        })
        .await
        .unwrap();
    f.store.forget_settings(SHOP);
    // The birthday greets the one consenting customer born today; the
    // holiday greets both consenting customers.
    assert_eq!(f.store.greetings(now).await.unwrap(), 3);
    assert_eq!(
        f.store.greetings(now).await.unwrap(),
        0,
        "once per occasion"
    );
    let fan = f
        .store
        .customer_messages(SHOP, "today-fan", None, 10)
        .await
        .unwrap();
    let mut origins: Vec<&str> = fan.iter().map(|m| m.origin.as_str()).collect();
    origins.sort();
    assert_eq!(
        origins,
        vec!["birthday", &format!("holiday:{}", today.format("%Y-%m-%d"))]
    );
    assert!(
        f.store
            .customer_messages(SHOP, "today-silent", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    f.cleanup().await;
}

#[tokio::test]
async fn a_gateway_that_times_out_is_retried_under_the_same_idempotency_key() {
    use huitou_notification::providers::ProviderConfig;
    use tokio::io::AsyncReadExt;
    let f = Fixture::new("notify-timeout").await;
    // A gateway that takes the request and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/send", listener.local_addr().unwrap());
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = heard.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(key) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Idempotency-Key: "))
                {
                    log.lock().unwrap().push(key.trim().to_owned());
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let slow = ProviderConfig::Webhook {
        url,
        secret: "webhook-secret-0123456789".to_owned().into(),
        timeout_ms: 200,
    }
    .open("slow")
    .unwrap();
    let d = f.dispatcher(slow, None);
    let care = f
        .template(pb::MessageKind::Transactional, "天冷了，注意保暖。")
        .await;
    let id = f.accept("sun", &care).await;
    d.pass().await.expect("pass");
    let m = f.message(&id).await;
    assert_eq!(m.status, status::RETRYING, "{m:#?}");
    assert!(
        m.status_reason.contains("no answer within 200 ms"),
        "{}",
        m.status_reason
    );
    f.due_now().await;
    d.pass().await.expect("pass");
    // Every attempt carried the message id: a gateway that did take the
    // first one drops the rest.
    assert_eq!(*heard.lock().unwrap(), vec![id.clone(), id.clone()]);
    assert_eq!(f.message(&id).await.attempts, 2);
    f.cleanup().await;
}

#[tokio::test]
async fn a_shops_per_second_limit_holds_messages_back_without_counting_attempts() {
    let f = Fixture::new("notify-rate").await;
    let gateway = Gateway::new("gw", 0, false);
    let d = f.limited_dispatcher(gateway.clone(), None, 3);
    let care = f
        .template(pb::MessageKind::Transactional, "天冷了，注意保暖。")
        .await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(f.accept(&format!("r{i}"), &care).await);
    }
    let started = std::time::Instant::now();
    d.pass().await.expect("pass");
    let mut sent = 0;
    for id in &ids {
        let m = f.message(id).await;
        match m.status {
            s if s == status::SENT => sent += 1,
            s if s == status::QUEUED => {
                assert_eq!(m.attempts, 0, "a held-back message was not attempted");
                assert!(
                    m.history
                        .last()
                        .unwrap()
                        .detail
                        .contains("limit of 3 per second")
                );
            }
            other => panic!("status {other}"),
        }
    }
    assert!(sent <= 3, "{sent} sent within one second");
    // Second by second, the rest go: ten at three a second take at least
    // four distinct seconds, so more than two whole seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gateway.seen().len() < 10 {
        assert!(std::time::Instant::now() < deadline, "not all sent");
        d.pass().await.expect("pass");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(gateway.seen().len(), 10, "each sent once");
    for id in &ids {
        assert_eq!(f.message(id).await.attempts, 1);
    }
    f.cleanup().await;
}

#[tokio::test]
async fn a_reminder_dropped_while_a_dispatcher_claims_it_is_sent_or_suppressed_never_both() {
    use huitou_notification::domain::rules::Suppression;
    const ORIGIN: &str = "event:test_reminder";
    let f = Fixture::new("notify-drop-race").await;
    let gateway = Gateway::new("gw", 0, false);
    let dispatcher = f.dispatcher(gateway.clone(), None);
    let reminder = f
        .template(
            pb::MessageKind::Transactional,
            "亲，您的订单还未付款，库存有限哦",
        )
        .await;
    let (mut sent, mut suppressed) = (Vec::new(), Vec::new());
    for round in 0..rounds() {
        // One payment reminder per order, each due now.
        let mut ids = Vec::new();
        for i in 0..10 {
            let (customer, order_no) = (format!("c-{round}-{i}"), format!("o-{round}-{i}"));
            let id = f
                .accept_for(&customer, &reminder, BTreeMap::new(), ORIGIN, &order_no)
                .await;
            ids.push(id);
        }
        // The orders are paid while the dispatcher claims and sends.
        let drops = async {
            let mut dropped = 0;
            for i in (0..10).rev() {
                let order_no = format!("o-{round}-{i}");
                dropped += f
                    .store
                    .transaction(move |tx, store| {
                        let order_no = order_no.clone();
                        Box::pin(async move {
                            store
                                .drop_unsent(tx, SHOP, &order_no, ORIGIN, Suppression::OrderPaid)
                                .await
                        })
                    })
                    .await
                    .expect("drop");
            }
            dropped
        };
        let passes = async { while dispatcher.pass().await.expect("pass") > 0 {} };
        let (dropped, ()) = tokio::join!(drops, passes);
        while dispatcher.pass().await.expect("pass") > 0 {}
        let mut suppressed_now = 0;
        for id in &ids {
            let m = f.message(id).await;
            match m.status {
                s if s == status::SENT => sent.push(id.clone()),
                s if s == status::SUPPRESSED => {
                    assert_eq!(m.status_reason, "ORDER_PAID", "{m:#?}");
                    suppressed.push(id.clone());
                    suppressed_now += 1;
                }
                other => panic!("round {round}: message left in status {other}: {m:#?}"),
            }
        }
        assert_eq!(dropped, suppressed_now, "round {round}: drops counted");
    }
    // Every sent reminder reached the gateway once; no dropped one did.
    let mut seen = gateway.seen();
    seen.sort();
    sent.sort();
    assert_eq!(seen, sent);
    assert!(suppressed.iter().all(|id| !seen.contains(id)));
    f.cleanup().await;
}
