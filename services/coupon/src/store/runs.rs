//! Bulk issue runs: the customer list is stored with the run, and each
//! batch of issues commits together with the run's progress, so a run
//! stopped anywhere (a dropped stream, a restart) resumes exactly where it
//! stopped and never issues twice to one customer.

use huitou_proto::coupon::v1::BulkIssueCouponsResponse;
use huitou_storage::bulk::{self, Col};
use huitou_storage::{StorageError, WriteTx, now_micros};
use sea_orm::{FromQueryResult, Value};

use super::Store;
use super::coupons::IssueSpec;
use crate::error::CouponError;

/// Customers issued to per transaction.
pub const RUN_BATCH: usize = 500;

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct RunRow {
    /// The request id that named it.
    pub id: String,
    /// Hash of the request, to refuse a reused id.
    pub request_hash: String,
    /// The template.
    pub template_id: String,
    /// Why.
    pub reason: String,
    /// Customers in it.
    pub total: i64,
    /// Customers handled.
    pub done: i64,
    /// Coupons issued.
    pub issued: i64,
    /// Customers not eligible.
    pub not_eligible: i64,
    /// Customers past the stock.
    pub out_of_stock: i64,
    /// Last progress, µs.
    pub updated_at: i64,
}

const RUN_COLUMNS: &str = "id, request_hash, template_id, reason, total, done, issued, not_eligible, out_of_stock, updated_at";

impl RunRow {
    /// Its progress for the stream.
    pub fn progress(&self) -> BulkIssueCouponsResponse {
        BulkIssueCouponsResponse {
            run_id: self.id.clone(),
            total: self.total,
            done: self.done,
            issued: self.issued,
            not_eligible: self.not_eligible,
            out_of_stock: self.out_of_stock,
            finished: self.done >= self.total,
        }
    }
}

/// A new run.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Its id (the request id).
    pub id: &'a str,
    /// Hash of the request.
    pub request_hash: &'a str,
    /// The template.
    pub template_id: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The customers, distinct.
    pub customers: &'a [String],
}

impl Store {
    /// A run by id.
    pub async fn find_run(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        shop_id: &str,
        id: &str,
    ) -> Result<Option<RunRow>, CouponError> {
        let rows = super::read_on(
            conn,
            &self.db,
            &format!("SELECT {RUN_COLUMNS} FROM issue_runs WHERE shop_id = $1 AND id = $2"),
            vec![shop_id.into(), id.into()],
        )
        .await?;
        Ok(rows
            .first()
            .map(|r| RunRow::from_query_result(r, ""))
            .transpose()?)
    }

    /// Stores a run with its customers, or returns the run the id already
    /// names (refusing it when that run was a different request).
    pub async fn start_run(&self, shop_id: &str, run: &NewRun<'_>) -> Result<RunRow, CouponError> {
        if let Some(existing) = self.find_run(self.db.conn(), shop_id, run.id).await? {
            return same_request(existing, run.request_hash);
        }
        let shop = shop_id.to_owned();
        let (id, hash, template, reason) = (
            run.id.to_owned(),
            run.request_hash.to_owned(),
            run.template_id.to_owned(),
            run.reason.to_owned(),
        );
        let customers = run.customers.to_vec();
        self.transaction(move |tx, store| {
            let (shop, id, hash, template, reason, customers) = (
                shop.clone(),
                id.clone(),
                hash.clone(),
                template.clone(),
                reason.clone(),
                customers.clone(),
            );
            Box::pin(async move {
                let now = now_micros();
                let inserted = tx
                    .execute(
                        "INSERT INTO issue_runs (shop_id, id, request_hash, template_id, reason, total, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (shop_id, id) DO NOTHING",
                        vec![
                            shop.clone().into(),
                            id.clone().into(),
                            hash.clone().into(),
                            template.clone().into(),
                            reason.clone().into(),
                            (customers.len() as i64).into(),
                            now.into(),
                        ],
                    )
                    .await?;
                if inserted == 1 {
                    insert_customers(tx, &shop, &id, &customers).await?;
                }
                store
                    .find_run(&**tx, &shop, &id)
                    .await?
                    .ok_or_else(|| StorageError::Retry("run vanished".into()).into())
            })
        })
        .await
        .and_then(|r| same_request(r, run.request_hash))
    }

    /// Issues to the run's next batch of customers and records the
    /// progress in the same transaction. Returns the run after it; a run
    /// another replica advanced meanwhile comes back unchanged by this call.
    pub async fn run_batch(&self, shop_id: &str, run: &RunRow) -> Result<RunRow, CouponError> {
        let template = self.template(shop_id, &run.template_id).await?;
        let shop = shop_id.to_owned();
        let run = run.clone();
        self.transaction(move |tx, store| {
            let (shop, run, template) = (shop.clone(), run.clone(), template.clone());
            Box::pin(async move {
                // Claim the batch first: a second runner's claim of the
                // same batch waits here and then finds `done` moved on.
                let end = (run.done + RUN_BATCH as i64).min(run.total);
                let claimed = tx
                    .execute(
                        "UPDATE issue_runs SET done = $4, updated_at = $5
                         WHERE shop_id = $1 AND id = $2 AND done = $3",
                        vec![
                            shop.clone().into(),
                            run.id.clone().into(),
                            run.done.into(),
                            end.into(),
                            now_micros().into(),
                        ],
                    )
                    .await?;
                if claimed == 0 {
                    return store
                        .find_run(&**tx, &shop, &run.id)
                        .await?
                        .ok_or_else(|| StorageError::Retry("bulk run vanished".into()).into());
                }
                let rows = tx
                    .query_all(
                        "SELECT customer_id FROM issue_run_customers
                         WHERE shop_id = $1 AND run_id = $2 AND position >= $3 AND position < $4
                         ORDER BY position",
                        vec![
                            shop.clone().into(),
                            run.id.clone().into(),
                            run.done.into(),
                            end.into(),
                        ],
                    )
                    .await?;
                let (mut issued, mut not_eligible, mut out_of_stock) = (0i64, 0i64, 0i64);
                let now = now_micros();
                for row in &rows {
                    let customer: String = row.try_get("", "customer_id")?;
                    let spec = IssueSpec {
                        key: format!("run:{}:{customer}", run.id),
                        reason: &run.reason,
                        agent: None,
                    };
                    match store
                        .issue(tx, &shop, &template, &customer, &spec, now)
                        .await
                    {
                        Ok(_) => issued += 1,
                        Err(CouponError::NotEligible(_)) => not_eligible += 1,
                        Err(CouponError::OutOfStock | CouponError::TemplatePaused) => {
                            out_of_stock += 1
                        }
                        Err(e) => return Err(e),
                    }
                }
                tx.execute(
                    "UPDATE issue_runs SET issued = issued + $3, not_eligible = not_eligible + $4,
                         out_of_stock = out_of_stock + $5
                     WHERE shop_id = $1 AND id = $2",
                    vec![
                        shop.clone().into(),
                        run.id.clone().into(),
                        issued.into(),
                        not_eligible.into(),
                        out_of_stock.into(),
                    ],
                )
                .await?;
                Ok(RunRow {
                    done: end,
                    issued: run.issued + issued,
                    not_eligible: run.not_eligible + not_eligible,
                    out_of_stock: run.out_of_stock + out_of_stock,
                    ..run
                })
            })
        })
        .await
    }

    /// Runs left unfinished and untouched for `idle_micros` (their runner
    /// stopped), oldest first: (shop, run id).
    pub async fn stalled_runs(
        &self,
        idle_micros: i64,
    ) -> Result<Vec<(String, String)>, CouponError> {
        let rows = self
            .read(
                "SELECT shop_id, id FROM issue_runs WHERE done < total AND updated_at < $1
                 ORDER BY updated_at LIMIT 100",
                vec![(now_micros() - idle_micros).into()],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "shop_id")?, r.try_get("", "id")?)))
            .collect()
    }
}

fn same_request(run: RunRow, hash: &str) -> Result<RunRow, CouponError> {
    if run.request_hash != hash {
        return Err(huitou_runtime::Failure::invalid_field(
            "request_id",
            "already names a different bulk run; use a new request id",
        )
        .into());
    }
    Ok(run)
}

async fn insert_customers(
    tx: &WriteTx,
    shop_id: &str,
    run_id: &str,
    customers: &[String],
) -> Result<(), CouponError> {
    const COLUMNS: [(&str, Col); 4] = [
        ("shop_id", Col::Text),
        ("run_id", Col::Text),
        ("position", Col::BigInt),
        ("customer_id", Col::Text),
    ];
    for (chunk_no, chunk) in customers.chunks(5_000).enumerate() {
        let rows: Vec<Vec<Value>> = chunk
            .iter()
            .enumerate()
            .map(|(i, c)| {
                vec![
                    shop_id.into(),
                    run_id.into(),
                    ((chunk_no * 5_000 + i) as i64).into(),
                    c.clone().into(),
                ]
            })
            .collect();
        bulk::insert(tx, "issue_run_customers", &COLUMNS, rows, "").await?;
    }
    Ok(())
}
