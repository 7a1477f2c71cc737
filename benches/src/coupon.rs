//! Coupons: RedeemCoupon on distinct coupons against raw single-row UPDATE
//! transactions, 64 clients issuing from one template's stock, and
//! ValidateCoupon against bare tonic echo.

use std::sync::Arc;
use std::time::Duration;

use huitou_coupon::domain::code;
use huitou_proto::coupon::v1 as pb;
use huitou_proto::coupon::v1::coupon_service_client::CouponServiceClient;
use huitou_proto::coupon::v1::coupon_template::{Benefit, Validity};
use huitou_storage::bulk::{self, Col};
use huitou_storage::{Database, DatabaseConfig, now_micros};
use sea_orm::{ConnectionTrait, sqlx};

use crate::fixture::{Backend, Bearer, Running, channel};
use crate::load::{Measured, closed_loop, each_once, open_loop};
use crate::report::Report;
use crate::rpc::{echo_paced, echo_peak, start_echo};

type Client = CouponServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// Coupons seeded for the redemption run (more than it can use).
const SEEDED: u64 = 300_000;

/// The coupon for index `i`: its code is a function of `i`, so callers
/// need no list.
fn code_of(i: u64) -> String {
    let mut random = [0u8; code::RANDOM_CHARS];
    for (k, b) in random.iter_mut().enumerate() {
        *b = ((i >> (5 * k)) & 31) as u8;
    }
    code::from_random(&random)
}

fn cart() -> pb::Cart {
    pb::Cart {
        lines: vec![
            pb::CartLine {
                sku: "SKU-1".into(),
                category: "童装".into(),
                quantity: 2,
                unit_price_fen: 9_900,
            },
            pb::CartLine {
                sku: "SKU-2".into(),
                category: "玩具".into(),
                quantity: 1,
                unit_price_fen: 12_900,
            },
        ],
        shipping_fen: 800,
        total_fen: 2 * 9_900 + 12_900 + 800,
        ..Default::default()
    }
}

struct CouponSuite {
    suite: Running,
    clients: Arc<Vec<Client>>,
    coupon_db: DatabaseConfig,
}

async fn start(
    backend: &Backend,
    connections: usize,
    redis_url: &str,
    servers: &tokio::runtime::Handle,
) -> anyhow::Result<CouponSuite> {
    let customer_db = backend.fresh("coupon_customer").await?;
    let coupon_db = backend.fresh("coupon").await?;
    let (c, redis) = (coupon_db.clone(), redis_url.to_owned());
    let suite = servers
        .spawn(async move { Running::start_suite(customer_db, None, Some(c), &redis).await })
        .await??;
    let bearer = Bearer(format!("Bearer {}", suite.key).parse()?);
    let clients = Arc::new(
        (0..connections)
            .map(|_| {
                channel(suite.address)
                    .map(|c| CouponServiceClient::with_interceptor(c, bearer.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?,
    );
    Ok(CouponSuite {
        suite,
        clients,
        coupon_db,
    })
}

async fn template(client: &mut Client, stock: Option<i64>) -> anyhow::Result<String> {
    Ok(client
        .create_template(pb::CreateTemplateRequest {
            template: Some(pb::CouponTemplate {
                name: "满299减30".into(),
                benefit: Some(Benefit::Threshold(pb::ThresholdOff {
                    threshold_fen: 29_900,
                    amount_fen: 3_000,
                })),
                validity: Some(Validity::ValidDaysAfterIssue(30)),
                stock,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .template
        .map(|t| t.template_id)
        .unwrap_or_default())
}

/// Writes `count` active coupons of `template_id` straight into the
/// coupon database, coupon `i` to customer `c{i}`.
async fn seed(
    config: &DatabaseConfig,
    shop: &str,
    template_id: &str,
    count: u64,
) -> anyhow::Result<()> {
    const COLUMNS: [(&str, Col); 10] = [
        ("shop_id", Col::Text),
        ("code", Col::Text),
        ("template_id", Col::Text),
        ("customer_id", Col::Text),
        ("state", Col::Int),
        ("valid_from", Col::BigInt),
        ("valid_until", Col::BigInt),
        ("issue_key", Col::Text),
        ("issue_reason", Col::Text),
        ("issued_at", Col::BigInt),
    ];
    let db = Database::connect(config).await?;
    let now = now_micros();
    for start in (0..count).step_by(10_000) {
        let tx = db.begin().await?;
        let rows = (start..(start + 10_000).min(count))
            .map(|i| {
                vec![
                    shop.into(),
                    code_of(i).into(),
                    template_id.into(),
                    format!("c{i}").into(),
                    1i32.into(),
                    (now - 1_000_000).into(),
                    (now + 86_400_000_000).into(),
                    format!("seed:{i}").into(),
                    "bench".into(),
                    now.into(),
                ]
            })
            .collect();
        bulk::insert(&tx, "coupons", &COLUMNS, rows, "").await?;
        tx.commit().await?;
    }
    db.execute("ANALYZE", vec![]).await.ok();
    db.close().await;
    Ok(())
}

/// Raw single-row UPDATE transactions on distinct rows of a table as big
/// as the coupon table, `workers` at once (PostgreSQL only).
async fn raw_updates(
    backend: &Backend,
    workers: usize,
    warm: Duration,
    duration: Duration,
) -> anyhow::Result<Option<Measured>> {
    let Backend::Postgres(_) = backend else {
        return Ok(None);
    };
    let db = backend.fresh("raw_update").await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(workers as u32)
        .connect(&db.url)
        .await?;
    sqlx::query("CREATE TABLE raw_update (id BIGINT PRIMARY KEY, state INTEGER NOT NULL, order_no TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO raw_update SELECT g, 1, '' FROM generate_series(0, {SEEDED}) g"
    )))
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE raw_update").execute(&pool).await?;
    let pool = Arc::new(pool);
    Ok(Some(
        closed_loop(workers, warm, duration, move |w, i| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "UPDATE raw_update SET state = 3, order_no = $2 WHERE id = $1 AND state = 1",
                )
                .bind(((w as u64 * 1_000_003 + i * 64) % SEEDED) as i64)
                .bind(format!("R{w}-{i}"))
                .execute(&*pool)
                .await
                .is_ok()
            }
        })
        .await,
    ))
}

/// RedeemCoupon on distinct coupons against raw single-row UPDATEs.
pub async fn redeem(
    workers: usize,
    duration: Duration,
    backend: &Backend,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let warm = Duration::from_secs(2);
    let raw = raw_updates(backend, workers, warm, duration).await?;
    let s = start(backend, 4, "", servers).await?;
    let mut seeder = s.clients[0].clone();
    let template_id = template(&mut seeder, None).await?;
    seed(&s.coupon_db, &s.suite.shop_id, &template_id, SEEDED).await?;
    // Each worker walks its own slice of the seeded coupons: the first
    // part validated before (as a checkout validates the coupon the buyer
    // applied, which puts it in the checkout cache), the second half never.
    let per_worker = SEEDED / workers as u64;
    let warmed = per_worker / 3;
    let cold_from = per_worker / 2;
    let clients = s.clients.clone();
    let failed = each_once(workers, warmed, move |w, i| {
        let c = clients[w % clients.len()].clone();
        validated_once(c, w as u64 * per_worker + i)
    })
    .await;
    anyhow::ensure!(failed == 0, "{failed} coupons failed to validate");
    // The order number makes a retry safe, so no request id is sent (as a
    // storefront would at payment); each call is a first redemption.
    let redeem_from = |clients: Arc<Vec<Client>>, first: u64, span: u64| {
        move |w: usize, i: u64| {
            let mut c = clients[w % clients.len()].clone();
            // Past its span a worker would redeem again (a retry, answered
            // from the first redemption): counted as failed instead.
            let fresh = i < span;
            let n = w as u64 * per_worker + first + i % span;
            let request = pb::RedeemCouponRequest {
                request_id: String::new(),
                code: code_of(n),
                customer_id: format!("c{n}"),
                order_no: format!("O{n}"),
                cart: Some(cart()),
            };
            async move {
                fresh
                    && c.redeem_coupon(request)
                        .await
                        .is_ok_and(|r| r.get_ref().discount_fen == 3_000)
            }
        }
    };
    let validated = closed_loop(
        workers,
        warm,
        duration,
        redeem_from(s.clients.clone(), 0, warmed),
    )
    .await;
    let cold = closed_loop(
        workers,
        warm,
        duration,
        redeem_from(s.clients.clone(), cold_from, per_worker - cold_from),
    )
    .await;
    report.line(format!(
        "### RedeemCoupon on distinct coupons, durable ({}, {workers} concurrent callers, {} s)",
        backend.name(),
        duration.as_secs()
    ));
    if let Some(raw) = &raw {
        report.row(
            &format!("raw single-row UPDATE transactions, {workers} writers (limit)"),
            raw,
            None,
        );
    }
    report.row(
        "RedeemCoupon of a validated coupon (conditional update and event, written together with concurrent redemptions)",
        &validated,
        raw.as_ref(),
    );
    report.row(
        "RedeemCoupon of a coupon never validated (a read first)",
        &cold,
        raw.as_ref(),
    );
    if let Some((updates, hot)) = hot_updates(&s.coupon_db).await? {
        report.line(format!(
            "- coupon row updates that were HOT (no index touched): {hot} of {updates}"
        ));
    }
    for (what, m) in [("validated", &validated), ("cold", &cold)] {
        if m.failed > 0 {
            report.line(format!("- {} {what} redemptions failed", m.failed));
        }
    }
    if let Some(raw) = &raw {
        report.check(
            "RedeemCoupon ≥ 0.5x raw single-row UPDATE transactions",
            validated.per_second() >= 0.5 * raw.per_second(),
        );
    }
    Ok(())
}

/// Updates of the coupon table so far, and how many of them were HOT
/// (PostgreSQL only).
async fn hot_updates(config: &DatabaseConfig) -> anyhow::Result<Option<(i64, i64)>> {
    let db = Database::connect(config).await?;
    if !db.is_postgres() {
        db.close().await;
        return Ok(None);
    }
    // Backends report their counts a moment after their transactions end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = db
        .conn()
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT n_tup_upd AS updates, n_tup_hot_upd AS hot FROM pg_stat_user_tables WHERE relname = 'coupons'".to_owned(),
        ))
        .await?;
    db.close().await;
    rows.first()
        .map(|r| -> anyhow::Result<(i64, i64)> {
            Ok((r.try_get("", "updates")?, r.try_get("", "hot")?))
        })
        .transpose()
}

/// 64 clients issuing from one template's stock; the count afterwards
/// must equal the stock taken.
pub async fn contended(
    workers: usize,
    duration: Duration,
    backend: &Backend,
    redis_url: &str,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let warm = Duration::from_secs(2);
    let s = start(backend, 4, redis_url, servers).await?;
    let mut seeder = s.clients[0].clone();
    let stock = 100_000_000;
    let template_id = template(&mut seeder, Some(stock)).await?;
    let clients = s.clients.clone();
    let id = template_id.clone();
    let issued = closed_loop(workers, warm, duration, move |w, i| {
        let mut c = clients[w % clients.len()].clone();
        let request = pb::IssueCouponRequest {
            template_id: id.clone(),
            customer_id: format!("w{w}-{i}"),
            ..Default::default()
        };
        async move { c.issue_coupon(request).await.is_ok() }
    })
    .await;
    let after = seeder
        .get_template(pb::GetTemplateRequest {
            template_id: template_id.clone(),
        })
        .await?
        .into_inner()
        .template
        .unwrap_or_default();
    let db = Database::connect(&s.coupon_db).await?;
    let rows = db
        .conn()
        .query_all_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM coupons".to_owned(),
        ))
        .await?;
    let coupons: i64 = rows
        .first()
        .map(|r| r.try_get("", "n"))
        .transpose()?
        .unwrap_or(0);
    db.close().await;
    let taken = stock - after.remaining.unwrap_or(stock);
    report.line(format!(
        "### Contended stock: {workers} clients issuing one template ({}, cache {}, {} s)",
        backend.name(),
        if redis_url.is_empty() {
            "in-process"
        } else {
            "Redis"
        },
        duration.as_secs()
    ));
    report.row(
        "IssueCoupon from one template (striped stock, 16 stripes)",
        &issued,
        None,
    );
    report.line(format!(
        "- stock taken {taken}, coupons stored {coupons}, template says issued {}: {}",
        after.issued,
        if taken == coupons && after.issued == coupons {
            "no oversell, nothing lost"
        } else {
            "MISMATCH"
        }
    ));
    report.check(
        "≥ 2,000 successful issues/s from one template, zero oversell",
        issued.per_second() >= 2_000.0 && taken == coupons && after.issued == coupons,
    );
    Ok(())
}

/// ValidateCoupon against bare tonic echo.
pub async fn validate(
    workers: usize,
    connections: usize,
    duration: Duration,
    backend: &Backend,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let echo_address = start_echo(servers)?;
    let s = start(backend, connections, "", servers).await?;
    let mut seeder = s.clients[0].clone();
    let template_id = template(&mut seeder, None).await?;
    let coupons = 20_000;
    seed(&s.coupon_db, &s.suite.shop_id, &template_id, coupons).await?;
    let call = |clients: Arc<Vec<Client>>| {
        let cart = cart();
        move |w: usize, i: u64| {
            let mut c = clients[w % clients.len()].clone();
            let n = (w as u64 * 7_919 + i * 31) % coupons;
            let request = pb::ValidateCouponRequest {
                code: code_of(n),
                customer_id: format!("c{n}"),
                cart: Some(cart.clone()),
                order_no: String::new(),
            };
            // 327 yuan of items: 满299减30 takes 30 off.
            async move {
                c.validate_coupon(request)
                    .await
                    .is_ok_and(|r| r.get_ref().discount_fen == 3_000)
            }
        }
    };
    // Coupons given through IssueCoupon are cached as they are issued; the
    // seeded ones are not, so each is validated once first, as a shop's
    // carts would long before the measured window.
    let clients = s.clients.clone();
    let per_worker = coupons.div_ceil(workers as u64);
    let warmed = each_once(workers, per_worker, move |w, i| {
        let c = clients[w % clients.len()].clone();
        let n = w as u64 * per_worker + i;
        async move { n >= coupons || validated_once(c, n).await }
    })
    .await;
    anyhow::ensure!(warmed == 0, "{warmed} coupons failed to validate");
    let (echo, echo_clients) = echo_peak(echo_address, workers, connections, duration).await?;
    let warm = Duration::from_secs(2);
    let peak = closed_loop(workers, warm, duration, call(s.clients.clone())).await;
    let half = peak.per_second() / 2.0;
    let paced_call = call(s.clients.clone());
    let paced = open_loop(half, duration, move |i| paced_call(i as usize % 64, i)).await;
    let echo_half = echo_paced(echo_clients, half, duration).await;
    report.line(format!(
        "### ValidateCoupon vs bare tonic echo ({}, {workers} callers over {connections} connections, {} s)",
        backend.name(),
        duration.as_secs()
    ));
    report.row("bare tonic echo (limit)", &echo, None);
    report.row("ValidateCoupon (2-line cart)", &peak, Some(&echo));
    report.line(format!(
        "- at half of ValidateCoupon's peak ({half:.0}/s, open loop): p50 {:.2} ms, p99 {:.2} ms, {} failed",
        paced.quantile_ms(0.5),
        paced.quantile_ms(0.99),
        paced.failed
    ));
    report.line(format!(
        "- bare echo at the same rate, same generator: p50 {:.2} ms, p99 {:.2} ms",
        echo_half.quantile_ms(0.5),
        echo_half.quantile_ms(0.99)
    ));
    report.check(
        "ValidateCoupon ≥ 0.5x echo",
        peak.per_second() >= 0.5 * echo.per_second(),
    );
    report.check(
        "ValidateCoupon p99 ≤ 5 ms at half load",
        paced.quantile_ms(0.99) <= 5.0,
    );
    Ok(())
}

/// Validates seeded coupon `n` once, as a shop's carts would before the
/// measured window (which puts it in the checkout cache). A checkout
/// retries UNAVAILABLE (the pool wait right after seeding can pass its
/// limit); anything else is a failure.
async fn validated_once(mut c: Client, n: u64) -> bool {
    let request = pb::ValidateCouponRequest {
        code: code_of(n),
        customer_id: format!("c{n}"),
        cart: Some(cart()),
        order_no: String::new(),
    };
    for tries in 1.. {
        match c.validate_coupon(request.clone()).await {
            Err(e) if e.code() == tonic::Code::Unavailable && tries < 5 => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => {
                eprintln!("validating before the measured window: {e}");
                return false;
            }
            Ok(_) => return true,
        }
    }
    false
}
