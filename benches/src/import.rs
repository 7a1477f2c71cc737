//! ImportOrders against PostgreSQL COPY of the same rows into the same table.

use std::time::{Duration, Instant};

use huitou_proto::customer::v1 as pb;
use sea_orm::sqlx;
use sea_orm::sqlx::postgres::PgPoolCopyExt;

use crate::fixture::{Backend, Running, ago};
use crate::report::Report;

/// How an import's rows pick their buyers (a fifth as many buyers as rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buyers {
    /// Row `n` goes to buyer `n × 7919 mod buyers`: every buyer once per
    /// round, and each 1,000-row batch holding the same buyers as the batch
    /// one round earlier. Every batch then updates rows that the same
    /// earlier batch wrote together, page by page.
    InRounds,
    /// Row `n` goes to a buyer drawn at random (a fixed mix of `n`), as
    /// repeat buyers come back in a real shop's history.
    Scattered,
}

impl Buyers {
    fn of(self, n: usize, buyers: usize) -> usize {
        match self {
            Buyers::InRounds => (n * 7_919) % buyers,
            Buyers::Scattered => {
                // splitmix64's finaliser: a fixed, well-spread mix of n.
                let mut z = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((z ^ (z >> 31)) % buyers as u64) as usize
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Buyers::InRounds => "buyers in rounds",
            Buyers::Scattered => "buyers scattered",
        }
    }
}

fn rows(count: usize, buyers: Buyers) -> Vec<pb::ImportedOrder> {
    let statuses = [
        pb::OrderStatus::Received,
        pb::OrderStatus::Reviewed,
        pb::OrderStatus::Shipped,
    ];
    (0..count)
        .map(|n| {
            let lines = 1 + n % 3;
            let items: Vec<pb::OrderItem> = (0..lines)
                .map(|l| pb::OrderItem {
                    sku: format!("SKU-{}", (n * 7 + l) % 500),
                    category: ["童装", "玩具", "奶粉", "美妆"][(n + l) % 4].into(),
                    quantity: 1 + (l as i64),
                    unit_price_fen: 990 + (n % 100) as i64 * 10,
                    title: String::new(),
                })
                .collect();
            let payable = items.iter().map(|i| i.quantity * i.unit_price_fen).sum();
            pb::ImportedOrder {
                row_number: n as i64 + 1,
                order_no: format!("H{n:08}"),
                buyer_nick: format!("buyer_{:06}", buyers.of(n, (count / 5).max(1))),
                status: statuses[n % 3] as i32,
                items,
                payable_fen: payable,
                create_time: Some(ago(86_400 * 200 - n as i64)),
                pay_time: Some(ago(86_400 * 200 - n as i64 - 60)),
                ..Default::default()
            }
        })
        .collect()
}

/// The COPY text form of an order row, in the orders table's column order.
fn copy_line(shop: &str, r: &pb::ImportedOrder, out: &mut String) {
    use std::fmt::Write;
    let items: Vec<serde_json::Value> = r
        .items
        .iter()
        .map(|i| serde_json::json!({"sku": i.sku, "category": i.category, "quantity": i.quantity, "unit_price_fen": i.unit_price_fen}))
        .collect();
    let created = r
        .create_time
        .as_ref()
        .map(|t| t.seconds * 1_000_000)
        .unwrap_or(0);
    let paid = r
        .pay_time
        .as_ref()
        .map(|t| t.seconds * 1_000_000)
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "{shop}\t{}\t{}\tc-{}\t{}\t{}\t{}\t{}\t0\t0\t{}\t0\t[]\t\\N\t\\N\t[]\t{created}\t{paid}\t\\N\t\\N\t\\N\tbench\t{created}\t{created}",
        uuid::Uuid::now_v7(),
        r.order_no,
        r.buyer_nick,
        r.buyer_nick,
        r.status,
        serde_json::Value::Array(items),
        r.payable_fen,
        r.payable_fen,
    );
}

/// Imports `count` orders both ways.
pub async fn run(
    count: usize,
    buyers: Buyers,
    backend: &Backend,
    redis_url: &str,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let data = rows(count, buyers);
    let copy = if let Backend::Postgres(_) = backend {
        let db = backend.fresh("copy").await?;
        // The same schema as the service's, so COPY meets the same indexes.
        let store = huitou_storage::Database::connect(&db).await?;
        huitou_customer::migrate(&store).await?;
        store.close().await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&db.url)
            .await?;
        // The best of three runs: one COPY swings by a fifth from run to
        // run on this machine, and the limit should be what COPY can do.
        let mut best: Option<(u64, Duration)> = None;
        for _ in 0..3 {
            sqlx::query("TRUNCATE orders").execute(&pool).await?;
            let mut text = String::with_capacity(count * 256);
            let started = Instant::now();
            for r in &data {
                copy_line("shop", r, &mut text);
            }
            let mut sink = pool
                .copy_in_raw(&format!(
                    "COPY orders ({}) FROM STDIN",
                    "shop_id, id, order_no, customer_id, buyer_nick, status, items, goods_fen, discount_fen, shipping_fen, \
                     payable_fen, refunded_fen, coupon_codes, shipment, review, refunds, created_at, paid_at, shipped_at, \
                     received_at, closed_at, import_id, recorded_at, updated_at"
                ))
                .await?;
            sink.send(text.into_bytes()).await?;
            let copied = sink.finish().await?;
            let took = started.elapsed();
            if best.is_none_or(|(_, t)| took < t) {
                best = Some((copied, took));
            }
        }
        best
    } else {
        None
    };

    let database = backend.fresh("import").await?;
    let suite = servers
        .spawn({
            let redis_url = redis_url.to_owned();
            async move { Running::start(database, &redis_url).await }
        })
        .await??;
    let mut client = suite.clients(1)?.remove(0);
    let messages: Vec<pb::ImportOrdersRequest> = data
        .chunks(1000)
        .map(|chunk| pb::ImportOrdersRequest {
            import_id: "bench".into(),
            rows: chunk.to_vec(),
        })
        .collect();
    let started = Instant::now();
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    request.set_timeout(Duration::from_secs(3600));
    let response = client.import_orders(request).await?.into_inner();
    let import_time = started.elapsed();
    let per_second = response.rows_imported as f64 / import_time.as_secs_f64();

    report.line(format!(
        "### ImportOrders, {count} orders in batches of 1000, {} ({}, {} cache)",
        buyers.name(),
        backend.name(),
        if redis_url.is_empty() {
            "in-process"
        } else {
            "Redis"
        }
    ));
    report.line("| measured | rows | seconds | rows/s | ratio |".into());
    report.line("|---|---:|---:|---:|---:|".into());
    let mut copy_rate = None;
    if let Some((copied, t)) = copy {
        let rate = copied as f64 / t.as_secs_f64();
        copy_rate = Some(rate);
        report.line(format!(
            "| COPY of the same rows into the same table, best of 3 (limit) | {copied} | {:.2} | {rate:.0} | 1.00 |",
            t.as_secs_f64()
        ));
    }
    report.line(format!(
        "| ImportOrders (orders + buyers + stats + events, over gRPC) | {} | {:.2} | {per_second:.0} | {} |",
        response.rows_imported,
        import_time.as_secs_f64(),
        copy_rate.map(|c| format!("{:.2}", per_second / c)).unwrap_or_else(|| "-".into())
    ));
    report.line(String::new());
    report.check("ImportOrders ≥ 20,000 orders/s", per_second >= 20_000.0);
    if let Some(c) = copy_rate {
        report.check("ImportOrders ≥ 0.3x COPY", per_second >= 0.3 * c);
    }
    Ok(())
}
