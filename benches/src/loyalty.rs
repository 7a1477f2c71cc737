//! Loyalty: order events applied to ledgers against raw inserts, and
//! GetMemberPrice for a 20-SKU cart against bare tonic echo.

use std::sync::Arc;
use std::time::Duration;

use huitou_loyalty::LoyaltyService;
use huitou_loyalty::events::LoyaltyEvents;
use huitou_proto::customer::v1 as cpb;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_proto::events::v1::{EventEnvelope, OrderPaid, OrderSnapshot};
use huitou_proto::loyalty::v1 as pb;
use huitou_proto::loyalty::v1::loyalty_service_client::LoyaltyServiceClient;
use huitou_storage::inbox::EventInbox;

use crate::fixture::{Backend, Bearer, Running, ago, channel};
use crate::load::{Measured, closed_loop, open_loop};
use crate::orders::raw_inserts;
use crate::report::Report;
use crate::rpc::{echo_paced, echo_peak, start_echo};

/// Members the events spread over.
const MEMBERS: u64 = 20_000;

/// Writers for the raw-insert ceiling.
const RAW_WRITERS: usize = 16;

/// Order events applied through the inbox as the relay delivers them:
/// `workers` concurrent deliveries of `batch` events each.
pub async fn events(
    workers: usize,
    batch: usize,
    duration: Duration,
    backend: &Backend,
    report: &mut Report,
) -> anyhow::Result<()> {
    let warm = Duration::from_secs(2);
    let raw = raw_inserts(backend, RAW_WRITERS, warm, duration).await?;
    let mut config = huitou_loyalty::LoyaltyConfig {
        database: backend.fresh("loyalty_events").await?,
        ..Default::default()
    };
    config.database.max_connections = workers as u32 + 2;
    let loyalty = LoyaltyService::open(&config, true).await?;
    let inbox = Arc::new(EventInbox::new(
        loyalty.store.db.clone(),
        Arc::new(LoyaltyEvents::new(loyalty.store.clone())),
    ));
    let run = uuid::Uuid::now_v7().simple().to_string();
    let deliveries = closed_loop(workers, warm, duration, move |w, i| {
        let inbox = inbox.clone();
        let events: Vec<EventEnvelope> = (0..batch as u64)
            .map(|k| {
                let n = i * batch as u64 + k;
                let member = (w as u64 * 1_000_003 + n * 7_919) % MEMBERS;
                let order_id = format!("{}-{w}-{n}", &run[..12]);
                EventEnvelope {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    shop_id: "bench-shop".into(),
                    occur_time: Some(ago(1)),
                    source_service: "customer".into(),
                    payload: Some(Payload::OrderPaid(OrderPaid {
                        order: Some(OrderSnapshot {
                            order_id: order_id.clone(),
                            order_no: order_id,
                            customer_id: format!("member-{member:06}"),
                            status: "PAID".into(),
                            payable_fen: 19_800,
                            goods_fen: 19_800,
                            pay_time: Some(ago(1)),
                            ..Default::default()
                        }),
                    })),
                    ..Default::default()
                }
            })
            .collect();
        async move {
            inbox
                .apply_delivery(&events)
                .await
                .is_ok_and(|(applied, _)| applied as usize == events.len())
        }
    })
    .await;
    // Each successful delivery applied `batch` events.
    let applied = Measured {
        ok: deliveries.ok * batch as u64,
        ..deliveries.clone()
    };
    report.line(format!(
        "### Order events applied to ledgers ({}, {workers} concurrent deliveries of {batch} events, {} s)",
        backend.name(),
        duration.as_secs()
    ));
    if let Some(raw) = &raw {
        report.row(
            &format!("raw single-row INSERT transactions, {RAW_WRITERS} writers (limit)"),
            raw,
            None,
        );
    }
    report.row(
        "order.paid events applied (dedupe, member lock, ledger, lot, window, tier; latency per delivery)",
        &applied,
        raw.as_ref(),
    );
    if deliveries.failed > 0 {
        report.line(format!("- {} deliveries failed", deliveries.failed));
    }
    report.check("≥ 5,000 events/s applied", applied.per_second() >= 5_000.0);
    if let Some(raw) = &raw {
        report.check(
            "events ≥ 0.3x raw inserts",
            applied.per_second() >= 0.3 * raw.per_second(),
        );
    }
    loyalty.store.db.close().await;
    Ok(())
}

/// GetMemberPrice for a 20-SKU cart against bare tonic echo.
pub async fn member_price(
    workers: usize,
    connections: usize,
    duration: Duration,
    backend: &Backend,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let echo_address = start_echo(servers)?;
    let customer_db = backend.fresh("price_customer").await?;
    let loyalty_db = backend.fresh("price_loyalty").await?;
    let suite = servers
        .spawn(async move { Running::start_suite(customer_db, Some(loyalty_db), None, "").await })
        .await??;
    let bearer = Bearer(format!("Bearer {}", suite.key).parse()?);
    let clients: Arc<Vec<_>> = Arc::new(
        (0..connections)
            .map(|_| {
                channel(suite.address)
                    .map(|c| LoyaltyServiceClient::with_interceptor(c, bearer.clone()))
            })
            .collect::<Result<_, _>>()?,
    );
    // Members come from the customer service's events; 200 returning
    // buyers, and 10 of the 20 SKUs in the old-customer zone.
    let mut customers = suite.clients(1)?.remove(0);
    let buyers = 200;
    for b in 0..buyers {
        customers
            .record_order(cpb::RecordOrderRequest {
                order_no: format!("MP-{b}"),
                buyer_nick: format!("price_{b:04}"),
                status: cpb::OrderStatus::Paid as i32,
                items: vec![cpb::OrderItem {
                    sku: "SKU-00".into(),
                    category: "童装".into(),
                    quantity: 1,
                    unit_price_fen: 50_000 + b * 1_000,
                    title: String::new(),
                }],
                payable_fen: 50_000 + b * 1_000,
                create_time: Some(ago(120)),
                pay_time: Some(ago(60)),
                ..Default::default()
            })
            .await?;
    }
    let mut seed = clients[0].clone();
    seed.set_member_prices(pb::SetMemberPricesRequest {
        prices: (0..10)
            .map(|i| pb::MemberPrice {
                sku: format!("SKU-{i:02}"),
                price_fen: 4_900,
                returning_customers_only: true,
                label: "老客价".into(),
                min_tier_code: String::new(),
            })
            .collect(),
        ..Default::default()
    })
    .await?;
    let last = format!("price_{:04}", buyers - 1);
    for _ in 0..400 {
        let known = seed
            .get_member(pb::GetMemberRequest {
                buyer_nick: last.clone(),
                ..Default::default()
            })
            .await
            .is_ok_and(|r| {
                r.get_ref()
                    .member
                    .as_ref()
                    .is_some_and(|m| m.paid_order_count > 0)
            });
        if known {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let cart: Vec<pb::CartLine> = (0..20)
        .map(|i| pb::CartLine {
            sku: format!("SKU-{i:02}"),
            quantity: 1 + i % 3,
            unit_price_fen: 5_900 + i * 100,
        })
        .collect();
    let price = |clients: Arc<Vec<LoyaltyServiceClient<_>>>, cart: Vec<pb::CartLine>| {
        move |w: usize, i: u64| {
            let mut c = clients[w % clients.len()].clone();
            let request = pb::GetMemberPriceRequest {
                buyer_nick: format!("price_{:04}", (w as u64 * 31 + i) % buyers as u64),
                lines: cart.clone(),
                ..Default::default()
            };
            async move {
                c.get_member_price(request)
                    .await
                    .is_ok_and(|r| r.get_ref().lines.len() == 20)
            }
        }
    };
    let (echo, echo_clients) = echo_peak(echo_address, workers, connections, duration).await?;
    let warm = Duration::from_secs(2);
    let peak = closed_loop(
        workers,
        warm,
        duration,
        price(clients.clone(), cart.clone()),
    )
    .await;
    let half = peak.per_second() / 2.0;
    let paced_call = price(clients.clone(), cart.clone());
    let paced = open_loop(half, duration, move |i| paced_call(i as usize % 64, i)).await;
    let echo_half = echo_paced(echo_clients, half, duration).await;
    report.line(format!(
        "### GetMemberPrice, 20-SKU cart, vs bare tonic echo ({}, {workers} callers over {connections} connections, {} s)",
        backend.name(),
        duration.as_secs()
    ));
    report.row("bare tonic echo (limit)", &echo, None);
    report.row("GetMemberPrice (20 lines)", &peak, Some(&echo));
    report.line(format!(
        "- at half of GetMemberPrice's peak ({half:.0}/s, open loop): p50 {:.2} ms, p99 {:.2} ms, {} failed",
        paced.quantile_ms(0.5),
        paced.quantile_ms(0.99),
        paced.failed
    ));
    report.line(format!(
        "- bare echo at the same rate, same generator (the harness's own floor): p50 {:.2} ms, p99 {:.2} ms",
        echo_half.quantile_ms(0.5),
        echo_half.quantile_ms(0.99)
    ));
    report.check(
        "GetMemberPrice ≥ 0.5x echo",
        peak.per_second() >= 0.5 * echo.per_second(),
    );
    report.check(
        "GetMemberPrice p99 ≤ 5 ms at half load",
        paced.quantile_ms(0.99) <= 5.0,
    );
    Ok(())
}

/// The periodic review run over `members` members, every one of them due:
/// tiers requalified (half still qualify, half are told their tier will
/// drop), a third with points to expire, a third to be warned. Beside it,
/// the floor: one UPDATE touching every member row.
pub async fn review(members: u64, backend: &Backend, report: &mut Report) -> anyhow::Result<()> {
    let Backend::Postgres(_) = backend else {
        report.line("### Review run: PostgreSQL only (pass --database-url)".into());
        return Ok(());
    };
    let config = huitou_loyalty::LoyaltyConfig {
        database: backend.fresh("loyalty_review").await?,
        ..Default::default()
    };
    let loyalty = LoyaltyService::open(&config, true).await?;
    let pool = sea_orm::sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&config.database.url)
        .await?;
    let now = huitou_storage::now_micros();
    let day = huitou_loyalty::domain::DAY_MICROS;
    let seeded = std::time::Instant::now();
    for sql in [
        format!(
            "INSERT INTO members (shop_id, customer_id, buyer_nick, tier_code, tier_since, requalify_at,
                balance, paid_order_count, created_at, updated_at)
             SELECT 'bench-shop', 'm' || lpad(g::text, 8, '0'), 'nick' || g,
                (ARRAY['REGULAR','SENIOR','GOLD','DIAMOND'])[1 + g % 4], {since}, {due}, 100, 1, {since}, {since}
             FROM generate_series(1, {members}) AS g",
            since = now - 400 * day,
            due = now - day,
        ),
        format!(
            "INSERT INTO member_orders (shop_id, order_id, customer_id, order_no, paid_fen, paid_at)
             SELECT 'bench-shop', 'o' || g, 'm' || lpad(g::text, 8, '0'), 'o' || g, 600000, {paid}
             FROM generate_series(1, {members}, 2) AS g",
            paid = now - 30 * day,
        ),
        format!(
            "INSERT INTO point_lots (shop_id, id, customer_id, remaining, available_at, expire_at)
             SELECT 'bench-shop', 'l' || g, 'm' || lpad(g::text, 8, '0'), 100, {since},
                CASE g % 3 WHEN 0 THEN {past} WHEN 1 THEN {soon} ELSE {later} END
             FROM generate_series(1, {members}) AS g",
            since = now - 400 * day,
            past = now - day,
            soon = now + 10 * day,
            later = now + 200 * day,
        ),
        "ANALYZE".to_owned(),
    ] {
        sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await?;
    }
    let seed_time = seeded.elapsed();
    let floor_started = std::time::Instant::now();
    sea_orm::sqlx::query("UPDATE members SET updated_at = updated_at + 1")
        .execute(&pool)
        .await?;
    let floor = floor_started.elapsed();
    sea_orm::sqlx::query("VACUUM ANALYZE members")
        .execute(&pool)
        .await?;
    let started = std::time::Instant::now();
    let done = loyalty.store.nightly(now).await?;
    let took = started.elapsed();
    report.line(format!(
        "### Review run over {members} members, all due (PostgreSQL; seeded in {:.1} s)",
        seed_time.as_secs_f64()
    ));
    report.line(format!(
        "- floor: one UPDATE of every member row: {:.1} s",
        floor.as_secs_f64()
    ));
    report.line(format!(
        "- review run: {:.1} s ({:.1}x the floor): {} tiers requalified ({} drops announced), {} members' points expired ({} points), {} expiry warnings",
        took.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64().max(0.001),
        done.members_requalified,
        done.drops_announced,
        done.members_expired,
        done.points_expired,
        done.expiry_warnings
    ));
    report.check(
        "review run over 1,000,000 members ≤ 60 s",
        took.as_secs() <= 60 && members >= 1_000_000,
    );
    pool.close().await;
    loyalty.store.db.close().await;
    Ok(())
}
