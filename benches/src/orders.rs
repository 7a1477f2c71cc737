//! RecordOrder (a paid order, durable on PostgreSQL) against the same
//! database's raw single-row insert transactions, same concurrency, same run.

use std::sync::Arc;
use std::time::Duration;

use huitou_proto::customer::v1 as pb;
use sea_orm::sqlx;

use crate::fixture::{Backend, Running, ago};
use crate::load::{Measured, closed_loop};
use crate::report::Report;

/// Raw single-row INSERT transactions from `workers` writers on PostgreSQL
/// (the limit for durable writes); `None` on SQLite.
pub async fn raw_inserts(
    backend: &Backend,
    workers: usize,
    warm: Duration,
    duration: Duration,
) -> anyhow::Result<Option<Measured>> {
    let Backend::Postgres(_) = backend else {
        return Ok(None);
    };
    let db = backend.fresh("raw").await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(workers as u32)
        .connect(&db.url)
        .await?;
    sqlx::query(
        // Text in byte order, as the services' tables have it (decision 0020).
        r#"CREATE TABLE raw_insert (shop_id TEXT COLLATE "C" NOT NULL, id TEXT COLLATE "C" NOT NULL,
         order_no TEXT COLLATE "C" NOT NULL, payload TEXT COLLATE "C" NOT NULL, created_at BIGINT NOT NULL,
         PRIMARY KEY (shop_id, id))"#,
    )
    .execute(&pool)
    .await?;
    let pool = Arc::new(pool);
    Ok(Some(
        closed_loop(workers, warm, duration, move |w, i| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO raw_insert (shop_id, id, order_no, payload, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind("shop")
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(format!("R{w}-{i}"))
                    .bind(r#"[{"sku":"SKU-1","category":"童装","quantity":2,"unit_price_fen":9900}]"#)
                    .bind(i as i64)
                    .execute(&*pool)
                    .await
                    .is_ok()
            }
        })
        .await,
    ))
}

/// Runs it with `workers` concurrent writers for `duration`.
pub async fn run(
    workers: usize,
    duration: Duration,
    backend: &Backend,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let warm = Duration::from_secs(2);
    let raw = raw_inserts(backend, workers, warm, duration).await?;

    let database = backend.fresh("orders").await?;
    let suite = servers
        .spawn(async move { Running::start(database, "").await })
        .await??;
    let clients = Arc::new(suite.clients(4)?);
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let recorded = closed_loop(workers, warm, duration, move |w, i| {
        let mut c = clients[w % clients.len()].clone();
        let order_no = format!("B{}-{w}-{i}", &run_id[..8]);
        async move {
            c.record_order(pb::RecordOrderRequest {
                order_no,
                buyer_nick: format!("buyer_{}", (w as u64 * 1_000_003 + i * 7) % 20_000),
                status: pb::OrderStatus::Paid as i32,
                items: vec![pb::OrderItem {
                    sku: "SKU-1".into(),
                    category: "童装".into(),
                    quantity: 2,
                    unit_price_fen: 9_900,
                    title: String::new(),
                }],
                payable_fen: 19_800,
                create_time: Some(ago(120)),
                pay_time: Some(ago(60)),
                ..Default::default()
            })
            .await
            .is_ok()
        }
    })
    .await;

    report.line(format!(
        "### RecordOrder, paid, durable ({}, {workers} concurrent writers, {} s)",
        backend.name(),
        duration.as_secs()
    ));
    if let Some(raw) = &raw {
        report.row("raw single-row INSERT transactions (limit)", raw, None);
    }
    report.row(
        "RecordOrder (order + buyer stats + 3 outbox events, 1 transaction)",
        &recorded,
        raw.as_ref(),
    );
    if let Some(raw) = &raw {
        report.check(
            "RecordOrder ≥ 0.5x raw inserts",
            recorded.per_second() >= 0.5 * raw.per_second(),
        );
    }
    Ok(())
}
