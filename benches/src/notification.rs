//! Notifications: a batch accepted through SendBatch (policy and enqueue)
//! against raw multi-row inserts of the same rows, a 1,000,000-customer
//! batch placed into windows, and two dispatchers sending to a local file
//! sink with caps checked, against raw Redis INCR+EXPIRE.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use huitou_notification::contacts::ContactBook;
use huitou_notification::dispatcher::Providers;
use huitou_notification::providers::ProviderConfig;
use huitou_notification::store::messages::NewMessage;
use huitou_notification::{NotificationConfig, NotificationService};
use huitou_proto::customer::v1::Channel;
use huitou_proto::notification::v1 as pb;
use huitou_proto::notification::v1::notification_service_client::NotificationServiceClient;
use huitou_runtime::auth::BoxFuture;
use huitou_storage::bulk::{self, Col};
use huitou_storage::{Database, now_micros};

use crate::fixture::{Backend, Bearer, Running, channel};
use crate::load::Measured;
use crate::report::Report;

/// Recipients per SendBatch request message.
const PER_REQUEST: usize = 10_000;

fn measured(ok: u64, elapsed: Duration) -> Measured {
    Measured {
        ok,
        failed: 0,
        elapsed,
        latencies_us: Vec::new(),
    }
}

fn policy(windows: Vec<pb::SendWindow>) -> pb::SendPolicy {
    pb::SendPolicy {
        time_zone: "Asia/Shanghai".into(),
        windows,
        caps: vec![
            pb::FrequencyCap {
                days: 3,
                max_messages: 1,
            },
            pb::FrequencyCap {
                days: 30,
                max_messages: 4,
            },
        ],
        duplicate_days: 7,
        max_attempts: 5,
        unpaid_reminder_minutes: 60,
        aim_last_hour: true,
    }
}

/// Sends one marketing template to `recipients` customers through
/// SendBatch with every window closed until later today or tomorrow, so
/// each message is placed into a window; then the same number of rows
/// inserted raw. Checks ≥ 20,000 messages/s accepted on PostgreSQL and the
/// whole batch in ≤ 60 s per million.
pub async fn batch(
    recipients: usize,
    backend: &Backend,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let customer_db = backend.fresh("notify_customer").await?;
    let notification_db = backend.fresh("notify_batch").await?;
    let db = notification_db.clone();
    let running = servers
        .spawn(async move {
            Running::start_configured(customer_db, "", move |s| {
                s.notification = Some(NotificationConfig {
                    database: db,
                    // This replica only takes requests: nothing competes
                    // with the batch for the CPU.
                    dispatchers: 0,
                    ..Default::default()
                });
            })
            .await
        })
        .await??;
    let bearer = Bearer(format!("Bearer {}", running.key).parse()?);
    let mut client = NotificationServiceClient::with_interceptor(channel(running.address)?, bearer)
        .max_encoding_message_size(64 << 20);
    // One window, 03:00-04:00 shop time: outside it every message is placed
    // into its next opening.
    client
        .set_send_policy(pb::SetSendPolicyRequest {
            policy: Some(policy(vec![pb::SendWindow {
                start_minute: 180,
                end_minute: 240,
            }])),
            ..Default::default()
        })
        .await?;
    let template = client
        .create_template(pb::CreateTemplateRequest {
            template: Some(pb::Template {
                name: "双11".into(),
                channel: Channel::Sms as i32,
                kind: pb::MessageKind::Marketing as i32,
                body: "{{customer_name}}，双11全场满299减30，今晚8点开抢，回T退订".into(),
                signature: "回头客".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .template
        .ok_or_else(|| anyhow::anyhow!("no template"))?;
    let requests: Vec<pb::SendBatchRequest> = (0..recipients)
        .collect::<Vec<_>>()
        .chunks(PER_REQUEST)
        .enumerate()
        .map(|(i, chunk)| pb::SendBatchRequest {
            batch_id: if i == 0 {
                "bench-11-11".into()
            } else {
                String::new()
            },
            template_id: if i == 0 {
                template.id.clone()
            } else {
                String::new()
            },
            variables: if i == 0 {
                BTreeMap::from([("customer_name".to_owned(), "亲".to_owned())])
            } else {
                BTreeMap::new()
            },
            recipients: chunk
                .iter()
                .map(|n| pb::BatchRecipient {
                    customer_id: format!("c{n:08}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    let answer = client
        .send_batch(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let elapsed = started.elapsed();
    anyhow::ensure!(
        answer.accepted as usize == recipients,
        "accepted {} of {recipients}: {answer:?}",
        answer.accepted
    );
    let huitou = measured(answer.accepted as u64, elapsed);

    // The limit: the same rows, built in memory, inserted raw in chunks of
    // the same size, one transaction each.
    let raw_db = backend.fresh("notify_raw").await?;
    let raw = raw_inserts(&raw_db, recipients).await?;
    report.line(format!(
        "### Notification batch: policy and enqueue ({}, {recipients} customers, every message placed into the next window)",
        backend.name()
    ));
    report.row("SendBatch (accepted messages)", &huitou, Some(&raw));
    report.row("raw multi-row INSERT of the same rows", &raw, None);
    report.line(format!(
        "{recipients} customers placed into windows in {:.1} s",
        elapsed.as_secs_f64()
    ));
    if matches!(backend, Backend::Postgres(_)) {
        report.check(
            "policy and enqueue ≥ 20,000 messages/s into PostgreSQL",
            huitou.per_second() >= 20_000.0,
        );
        let per_million = elapsed.as_secs_f64() * 1_000_000.0 / recipients as f64;
        report.check(
            &format!("1,000,000-customer batch placed into windows in ≤ 60 s (measured {per_million:.1} s per million)"),
            per_million <= 60.0,
        );
    }
    drop(running);
    Ok(())
}

/// Inserts `n` message-shaped rows raw, 2,000 per transaction.
async fn raw_inserts(
    config: &huitou_storage::DatabaseConfig,
    n: usize,
) -> anyhow::Result<Measured> {
    let db = Database::connect(config).await?;
    huitou_notification::migrate(&db)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let columns = [
        ("shop_id", Col::Text),
        ("id", Col::Text),
        ("customer_id", Col::Text),
        ("template_id", Col::Text),
        ("channel", Col::Int),
        ("kind", Col::Int),
        ("status", Col::Int),
        ("body", Col::Text),
        ("segments", Col::Int),
        ("cost_millifen", Col::BigInt),
        ("urgent", Col::Int),
        ("due_at", Col::BigInt),
        ("origin", Col::Text),
        ("dedupe_key", Col::Text),
        ("day", Col::Int),
        ("created_at", Col::BigInt),
        ("updated_at", Col::BigInt),
    ];
    let started = Instant::now();
    let now = now_micros();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2_000) {
        let rows = chunk
            .iter()
            .map(|i| {
                vec![
                    "shop".into(),
                    uuid::Uuid::now_v7().to_string().into(),
                    format!("c{i:08}").into(),
                    "t".into(),
                    1.into(),
                    2.into(),
                    2.into(),
                    "【回头客】亲，双11全场满299减30，今晚8点开抢，回T退订".into(),
                    1.into(),
                    4_500i64.into(),
                    0.into(),
                    now.into(),
                    "batch:raw".into(),
                    format!("batch:raw:c{i:08}").into(),
                    20_261_124.into(),
                    now.into(),
                    now.into(),
                ]
            })
            .collect();
        let tx = db.begin().await?;
        bulk::insert(&tx, "messages", &columns, rows, "").await?;
        tx.commit().await?;
    }
    Ok(measured(n as u64, started.elapsed()))
}

/// Every customer's address, from memory: the benchmark measures dispatch,
/// not the customer service.
struct LocalBook;

impl ContactBook for LocalBook {
    fn addresses<'a>(
        &'a self,
        _shop_id: &'a str,
        _channel: i32,
        customer_ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, String>> {
        Box::pin(async move {
            Ok(customer_ids
                .iter()
                .map(|c| (c.clone(), "13800138000".to_owned()))
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

/// Two dispatchers send `messages` marketing messages (one per consenting
/// customer, caps and duplicates checked for each) to a JSON-lines file;
/// beside it, two clients doing INCR+EXPIRE on Redis for the same time.
pub async fn dispatch(
    messages: usize,
    backend: &Backend,
    redis_url: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    const SHOP: &str = "bench-shop";
    let database = backend.fresh("notify_dispatch").await?;
    let sink = std::env::temp_dir().join(format!(
        "huitou-bench-sink-{}.jsonl",
        uuid::Uuid::now_v7().simple()
    ));
    let mut config = NotificationConfig {
        database,
        ..Default::default()
    };
    config.providers.insert(
        "log".into(),
        ProviderConfig::Log {
            path: sink.display().to_string(),
        },
    );
    let service = NotificationService::open_with(&config, true, Arc::new(LocalBook))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = service.store.clone();
    let mut all_day =
        huitou_notification::policy::Policy::check(Some(&policy(vec![pb::SendWindow {
            start_minute: 0,
            end_minute: 1440,
        }])))?;
    all_day.aim_last_hour = false;
    let template = pb::Template {
        name: "双11".into(),
        channel: Channel::Sms as i32,
        kind: pb::MessageKind::Marketing as i32,
        body: "双11全场满299减30，回T退订".into(),
        signature: "回头客".into(),
        ..Default::default()
    };
    let template = store
        .transaction(move |tx, store| {
            let (all_day, template) = (all_day.clone(), template.clone());
            Box::pin(async move {
                store.set_policy(tx, SHOP, &all_day).await?;
                store.create_template(tx, SHOP, &template).await
            })
        })
        .await?;
    // Consenting customers, then one message each, accepted in bulk.
    let now = now_micros();
    let settings = store.shop_settings(SHOP).await?;
    for chunk in (0..messages).collect::<Vec<_>>().chunks(5_000) {
        let recipients: Vec<Vec<sea_orm::Value>> = chunk
            .iter()
            .map(|i| {
                vec![
                    SHOP.into(),
                    format!("c{i:08}").into(),
                    1.into(),
                    ",sms,".into(),
                    now.into(),
                ]
            })
            .collect();
        let vars = BTreeMap::new();
        let rendered = huitou_notification::template::render(&template, &vars, "variables")?;
        let rows: Vec<_> = chunk
            .iter()
            .map(|i| {
                let id = format!("c{i:08}");
                let m = NewMessage {
                    customer_id: &id,
                    template: &template,
                    rendered: rendered.clone(),
                    variables: &vars,
                    not_before: now,
                    urgent: false,
                    origin: "bench",
                    dedupe_key: String::new(),
                    order_no: "",
                };
                store.new_row(SHOP, &settings, &m, None, now)
            })
            .collect();
        let (recipients, rows) = (Arc::new(recipients), Arc::new(rows));
        store
            .transaction(move |tx, store| {
                let (recipients, rows) = (recipients.clone(), rows.clone());
                Box::pin(async move {
                    bulk::insert(
                        tx,
                        "recipients",
                        &[
                            ("shop_id", Col::Text),
                            ("customer_id", Col::Text),
                            ("known", Col::Int),
                            ("consents", Col::Text),
                            ("updated_at", Col::BigInt),
                        ],
                        recipients.to_vec(),
                        "",
                    )
                    .await?;
                    store.accept_many(tx, SHOP, rows.to_vec()).await
                })
            })
            .await?;
    }

    // Two dispatchers until every message is final.
    let sink_provider = config
        .providers
        .get("log")
        .ok_or_else(|| anyhow::anyhow!("no sink"))?
        .open("log")
        .map_err(|e| anyhow::anyhow!(e))?;
    let routes = HashMap::from([(
        Channel::Sms as i32,
        Providers {
            first: sink_provider,
            fallback: None,
            per_shop_per_second: 0,
        },
    )]);
    let dispatcher = huitou_notification::dispatcher::Dispatcher::new(
        store.clone(),
        routes,
        Arc::new(LocalBook),
        config.dispatch_batch,
        Duration::from_secs(60),
        Arc::new(huitou_storage::cache::LocalCache::new(1_000)),
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let d = dispatcher.clone();
            tokio::spawn(async move {
                let mut idle = 0;
                while idle < 3 {
                    match d.pass().await {
                        Ok(0) => idle += 1,
                        Ok(_) => idle = 0,
                        Err(e) => return Err(anyhow::anyhow!("{e}")),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let elapsed = started.elapsed();
    let sent = store
        .read(
            "SELECT COUNT(*) AS n FROM messages WHERE shop_id = $1 AND status = 5",
            vec![SHOP.into()],
        )
        .await?
        .first()
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    anyhow::ensure!(sent as usize == messages, "sent {sent} of {messages}");
    let huitou = measured(sent as u64, elapsed);
    let _ = std::fs::remove_file(&sink);

    let redis = if redis_url.is_empty() {
        None
    } else {
        Some(redis_incr_expire(redis_url, elapsed.max(Duration::from_secs(5))).await?)
    };
    report.line(format!(
        "### Notification dispatch ({}, {messages} marketing messages, caps and duplicates checked per message under the customer's row lock, two dispatchers, file sink)",
        backend.name()
    ));
    report.row("dispatched messages", &huitou, redis.as_ref());
    if let Some(r) = &redis {
        report.row("raw Redis INCR+EXPIRE (2 clients, pipelined pair)", r, None);
    }
    if matches!(backend, Backend::Postgres(_)) {
        report.check(
            "dispatch to a local sink ≥ 5,000 messages/s across two workers",
            huitou.per_second() >= 5_000.0,
        );
    }
    Ok(())
}

/// Two clients, each INCR then EXPIRE on its own keys as one pipelined
/// round trip, for `duration`.
async fn redis_incr_expire(url: &str, duration: Duration) -> anyhow::Result<Measured> {
    let client = redis::Client::open(url)?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..2 {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bench:cap:{w}:{}", i % 100_000);
                let _: (i64, i64) = redis::pipe()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(259_200)
                    .query_async(&mut conn)
                    .await?;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(measured(done.load(Ordering::Relaxed), started.elapsed()))
}
