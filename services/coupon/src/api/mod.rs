//! `huitou.coupon.v1.CouponService`: check, scope to the caller's shop,
//! call the store, convert back. Rules live in `domain`, SQL in `store`.

pub mod convert;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use huitou_proto::coupon::v1 as pb;
use huitou_proto::coupon::v1::coupon_service_server::CouponService;
use huitou_runtime::auth::caller;
use huitou_runtime::{Caller, Failure, FieldViolations, paging};
use huitou_storage::cache::shop_key;
use huitou_storage::idempotency::{IdempotencyKey, check_request_id};
use huitou_storage::now_micros;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::domain::checkout::{self, Attempt, Refusal};
use crate::error::CouponError;
use crate::store::Store;
use crate::store::coupons::{Claim, CouponRow, IssueSpec};
use crate::store::runs::{NewRun, RunRow};
use convert::CheckedCart;

/// Most customers in one bulk run.
const MAX_RUN_CUSTOMERS: usize = 1_000_000;
/// Default and longest hold, seconds.
const DEFAULT_HOLD_SECONDS: i32 = 900;
/// How long a key that guessed too many codes is refused.
const GUESS_WINDOW: Duration = Duration::from_secs(60);

/// Counts lookups of codes that do not exist, per API key: past the limit
/// the key is refused before any lookup until the window ends. The count
/// lives in the cache (shared by replicas through Redis); the refusal is
/// remembered in the process so a blocked key costs no cache call.
struct Guesses {
    limit: i64,
    blocked: Mutex<HashMap<String, Instant>>,
}

impl Guesses {
    fn key(caller: &Caller) -> String {
        shop_key(&caller.shop_id, &["coupon-guess", &caller.key_id])
    }

    fn check(&self, caller: &Caller) -> Result<(), Failure> {
        let Ok(mut blocked) = self.blocked.lock() else {
            return Ok(());
        };
        let key = Self::key(caller);
        match blocked.get(&key) {
            Some(until) if *until > Instant::now() => Err(Failure::rate_limited(
                until.saturating_duration_since(Instant::now()),
            )),
            Some(_) => {
                blocked.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn miss(&self, store: &Store, caller: &Caller) -> Failure {
        let key = Self::key(caller);
        if let Ok(n) = store.cache.incr(&key, 1, GUESS_WINDOW).await
            && n > self.limit
        {
            if let Ok(mut blocked) = self.blocked.lock() {
                if blocked.len() > 100_000 {
                    blocked.clear();
                }
                blocked.insert(key, Instant::now() + GUESS_WINDOW);
            }
            return Failure::rate_limited(GUESS_WINDOW);
        }
        CouponError::CouponNotFound.into()
    }
}

/// The coupon API over a store.
pub struct CouponApi {
    store: Store,
    guesses: Arc<Guesses>,
}

impl CouponApi {
    /// The API over `store`, refusing keys past `unknown_codes_per_minute`
    /// lookups of codes that do not exist.
    pub fn new(store: Store, unknown_codes_per_minute: i64) -> Self {
        Self {
            store,
            guesses: Arc::new(Guesses {
                limit: unknown_codes_per_minute,
                blocked: Mutex::default(),
            }),
        }
    }

    /// The coupon a typed code names in the caller's shop, counting misses
    /// against the caller's guessing limit.
    async fn coupon(&self, caller: &Caller, code: &str) -> Result<CouponRow, Failure> {
        self.guesses.check(caller)?;
        match self
            .store
            .coupon_for_checkout(&caller.shop_id, code)
            .await?
        {
            Some(c) => Ok(c),
            None => Err(self.guesses.miss(&self.store, caller).await),
        }
    }

    async fn coupon_out(&self, shop: &str, row: &CouponRow) -> pb::Coupon {
        let template = self.store.template(shop, &row.template_id).await.ok();
        convert::coupon_out(row, template.as_deref(), now_micros())
    }

    async fn template_out(
        &self,
        shop: &str,
        t: &crate::template::Template,
        times: crate::store::templates::Times,
    ) -> Result<pb::CouponTemplate, CouponError> {
        let stock = self
            .store
            .stock_count(self.store.db.conn(), shop, t)
            .await?;
        Ok(convert::template_out(t, times, stock))
    }

    /// Holds or redeems after the checks common to both.
    async fn claim(
        &self,
        caller: &Caller,
        who: Checkout<'_>,
        cart: &CheckedCart,
        claim: Claim,
        key: Option<IdempotencyKey>,
    ) -> Result<(i64, pb::Coupon), Status> {
        let Checkout {
            code,
            customer_id: customer,
            order_no: order,
        } = who;
        let row = self.coupon(caller, code).await?;
        let template = self
            .store
            .template(&caller.shop_id, &row.template_id)
            .await?;
        if let (Claim::Redeem(total), None) = (claim, &key) {
            // Without a request id the order number is the idempotency key,
            // and the coupon as just read can be redeemed in one statement.
            let now = now_micros();
            let attempt = Attempt {
                code,
                customer_id: customer,
                order_no: order,
                cart: &cart.cart,
                tier_discount_applied: cart.tier_discount_applied,
                other_coupons: cart.other_coupons,
                friend_at_limit: false,
                now,
            };
            if let Some(done) = self
                .store
                .redeem_at_once(&caller.shop_id, &template, &row, &attempt, total)
                .await?
            {
                return Ok((
                    done.discount_fen,
                    convert::coupon_out(&done.coupon, Some(&template), now),
                ));
            }
        }
        let shop = caller.shop_id.clone();
        let (code, customer, order) = (code.to_owned(), customer.to_owned(), order.to_owned());
        let (lines, tier, others) = (
            cart.cart.clone(),
            cart.tier_discount_applied,
            cart.other_coupons,
        );
        let answer = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, code, customer, order, lines, template) = (
                    shop.clone(),
                    code.clone(),
                    customer.clone(),
                    order.clone(),
                    lines.clone(),
                    template.clone(),
                );
                Box::pin(async move {
                    let attempt = Attempt {
                        code: &code,
                        customer_id: &customer,
                        order_no: &order,
                        cart: &lines,
                        tier_discount_applied: tier,
                        other_coupons: others,
                        friend_at_limit: false,
                        now: now_micros(),
                    };
                    let claimed = store.claim(tx, &shop, &template, &attempt, claim).await?;
                    Ok(pb::RedeemCouponResponse {
                        discount_fen: claimed.discount_fen,
                        coupon: Some(convert::coupon_out(
                            &claimed.coupon,
                            Some(&template),
                            attempt.now,
                        )),
                    })
                })
            })
            .await?;
        Ok((answer.discount_fen, answer.coupon.unwrap_or_default()))
    }
}

/// Checks what every checkout call names (a code, the customer, the
/// order, the cart) into `v`; the canonical code and the checked cart.
/// A code with a typo is refused at once, before anything is looked up.
fn checkout_fields(
    code: &str,
    customer_id: &str,
    order_no: Option<&str>,
    cart: Option<&pb::Cart>,
    v: &mut FieldViolations,
) -> Result<(String, CheckedCart), Failure> {
    let code = convert::code_in(code, "code")?;
    convert::customer_id(customer_id, "customer_id", v);
    if let Some(order_no) = order_no {
        convert::order_no(order_no, "order_no", v);
    }
    Ok((code, convert::cart_in(cart, v)))
}

/// Which coupon, for whom, for which order.
#[derive(Clone, Copy)]
struct Checkout<'a> {
    code: &'a str,
    customer_id: &'a str,
    order_no: &'a str,
}

fn text(value: &str, field: &str, max: usize, v: &mut FieldViolations) {
    v.check(
        value.chars().count() <= max,
        field,
        format!("at most {max} characters"),
    );
}

fn template_id(value: &str, v: &mut FieldViolations) {
    v.check(
        !value.is_empty() && value.len() <= 64,
        "template_id",
        "must be 1-64 characters",
    );
}

/// Continues bulk runs whose runner stopped (a dropped process).
pub async fn resume_stalled_runs(store: &Store) -> Result<(), CouponError> {
    for (shop, id) in store.stalled_runs(60_000_000).await? {
        if let Some(run) = store.find_run(store.db.conn(), &shop, &id).await? {
            tracing::info!(shop, run = %id, done = run.done, total = run.total, "resuming bulk run");
            drive_run(store, &shop, run, None).await?;
        }
    }
    Ok(())
}

/// Works through a run batch by batch, reporting progress to `progress`
/// while anyone listens.
async fn drive_run(
    store: &Store,
    shop: &str,
    mut run: RunRow,
    progress: Option<tokio::sync::mpsc::Sender<Result<pb::BulkIssueCouponsResponse, Status>>>,
) -> Result<RunRow, CouponError> {
    let send = |run: &RunRow| {
        if let Some(p) = &progress {
            let _ = p.try_send(Ok(run.progress()));
        }
    };
    send(&run);
    while run.done < run.total {
        let next = store.run_batch(shop, &run).await?;
        if next.done == run.done {
            // Another runner holds it; report where it is and stop.
            break;
        }
        run = next;
        send(&run);
    }
    Ok(run)
}

#[tonic::async_trait]
impl CouponService for CouponApi {
    async fn create_template(
        &self,
        request: Request<pb::CreateTemplateRequest>,
    ) -> Result<Response<pb::CreateTemplateResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let message = crate::template::check_new(req.template.as_ref(), now_micros())?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "CreateTemplate", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, message) = (shop.clone(), message.clone());
                Box::pin(async move {
                    let (t, times) = store.create_template(tx, &shop, &message).await?;
                    let stock = store.stock_count(&**tx, &shop, &t).await?;
                    Ok(pb::CreateTemplateResponse {
                        template: Some(convert::template_out(&t, times, stock)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn update_template(
        &self,
        request: Request<pb::UpdateTemplateRequest>,
    ) -> Result<Response<pb::UpdateTemplateResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        template_id(&req.template_id, &mut v);
        if let Some(name) = &req.name {
            v.check(
                (1..=60).contains(&name.trim().chars().count()),
                "name",
                "must be 1-60 characters",
            );
        }
        v.check(
            (0..=100_000_000).contains(&req.add_stock),
            "add_stock",
            "must be 0-100000000",
        );
        if let Some(b) = req.agent_daily_budget {
            v.check(
                (0..=100_000).contains(&b),
                "agent_daily_budget",
                "must be 0-100000",
            );
        }
        v.finish()?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "UpdateTemplate", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, req) = (shop.clone(), req.clone());
                Box::pin(async move {
                    let (t, times) = store
                        .update_template(tx, &shop, &req.template_id, &req)
                        .await?;
                    let stock = store.stock_count(&**tx, &shop, &t).await?;
                    Ok(pb::UpdateTemplateResponse {
                        template: Some(convert::template_out(&t, times, stock)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::GetTemplateResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        template_id(&req.template_id, &mut v);
        v.finish()?;
        let (t, times) = self
            .store
            .load_template(self.store.db.conn(), &caller.shop_id, &req.template_id)
            .await?
            .ok_or(CouponError::TemplateNotFound)?;
        Ok(Response::new(pb::GetTemplateResponse {
            template: Some(self.template_out(&caller.shop_id, &t, times).await?),
        }))
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let fingerprint = paging::fingerprint(&format!("templates|{}", req.active_only));
        let after = paging::decode(&req.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .list_templates(&caller.shop_id, after.as_deref(), req.active_only, size + 1)
            .await?;
        let next_page_token = paging::next_page(&mut rows, size, &fingerprint, |(t, _)| &t.id);
        let mut templates = Vec::with_capacity(rows.len());
        for (t, times) in &rows {
            templates.push(self.template_out(&caller.shop_id, t, *times).await?);
        }
        Ok(Response::new(pb::ListTemplatesResponse {
            templates,
            next_page_token,
        }))
    }

    async fn get_template_results(
        &self,
        request: Request<pb::GetTemplateResultsRequest>,
    ) -> Result<Response<pb::GetTemplateResultsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        template_id(&req.template_id, &mut v);
        v.finish()?;
        let t = self
            .store
            .template(&caller.shop_id, &req.template_id)
            .await?;
        Ok(Response::new(pb::GetTemplateResultsResponse {
            results: Some(self.store.results(&caller.shop_id, &t).await?),
        }))
    }

    async fn issue_coupon(
        &self,
        request: Request<pb::IssueCouponRequest>,
    ) -> Result<Response<pb::IssueCouponResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        template_id(&req.template_id, &mut v);
        convert::customer_id(&req.customer_id, "customer_id", &mut v);
        text(&req.agent_id, "agent_id", 64, &mut v);
        text(&req.reason, "reason", 200, &mut v);
        v.finish()?;
        // A template read a moment ago is fine for the terms; `active` is
        // re-read inside the transaction.
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "IssueCoupon", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let issue_key = if req.request_id.is_empty() {
            // No request id: every call is a new coupon.
            format!("call:{}", crate::store::new_id())
        } else {
            format!("request:{}", req.request_id)
        };
        let reason = match (req.reason.is_empty(), req.agent_id.is_empty()) {
            (false, _) => req.reason.clone(),
            (true, false) => format!("agent {}", req.agent_id),
            (true, true) => format!("issued by {} key {}", caller.role.as_str(), caller.key_id),
        };
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, req, issue_key, reason) =
                    (shop.clone(), req.clone(), issue_key.clone(), reason.clone());
                Box::pin(async move {
                    let (template, _) = store
                        .load_template(&**tx, &shop, &req.template_id)
                        .await?
                        .ok_or(CouponError::TemplateNotFound)?;
                    let spec = IssueSpec {
                        key: issue_key,
                        reason: &reason,
                        agent: (!req.agent_id.is_empty()).then_some(req.agent_id.as_str()),
                    };
                    let now = now_micros();
                    let issued = store
                        .issue(tx, &shop, &template, &req.customer_id, &spec, now)
                        .await?;
                    Ok(pb::IssueCouponResponse {
                        coupon: Some(convert::coupon_out(&issued.coupon, Some(&template), now)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    type BulkIssueCouponsStream = ReceiverStream<Result<pb::BulkIssueCouponsResponse, Status>>;

    async fn bulk_issue_coupons(
        &self,
        request: Request<pb::BulkIssueCouponsRequest>,
    ) -> Result<Response<Self::BulkIssueCouponsStream>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        v.check(
            !req.request_id.is_empty(),
            "request_id",
            "is required: it names the run",
        );
        check_request_id(&req.request_id, &mut v);
        template_id(&req.template_id, &mut v);
        text(&req.reason, "reason", 200, &mut v);
        v.check(
            (1..=MAX_RUN_CUSTOMERS).contains(&req.customer_ids.len()),
            "customer_ids",
            format!("must list 1-{MAX_RUN_CUSTOMERS} customers"),
        );
        let mut seen = std::collections::HashSet::with_capacity(req.customer_ids.len());
        for (i, c) in req.customer_ids.iter().enumerate() {
            if c.trim().is_empty() || c.len() > 64 || c.trim() != c {
                v.add(
                    format!("customer_ids[{i}]"),
                    "must be 1-64 characters without surrounding spaces",
                );
            } else if !seen.insert(c.as_str()) {
                v.add(format!("customer_ids[{i}]"), "is listed twice");
            }
            if !v.is_empty() && i > 1000 {
                // Enough to show what is wrong without a million entries.
                break;
            }
        }
        v.finish()?;
        // The template must exist before the run is stored.
        self.store
            .template(&caller.shop_id, &req.template_id)
            .await?;
        let hash =
            IdempotencyKey::for_request(&caller.shop_id, "BulkIssueCoupons", &req.request_id, &req)
                .map(|k| k.request_hash().to_owned())
                .unwrap_or_default();
        let reason = if req.reason.is_empty() {
            format!("bulk run {}", req.request_id)
        } else {
            req.reason.clone()
        };
        let run = self
            .store
            .start_run(
                &caller.shop_id,
                &NewRun {
                    id: &req.request_id,
                    request_hash: &hash,
                    template_id: &req.template_id,
                    reason: &reason,
                    customers: &req.customer_ids,
                },
            )
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let store = self.store.clone();
        let shop = caller.shop_id.clone();
        // The run goes on when the caller hangs up: the stream only watches.
        tokio::spawn(async move {
            match drive_run(&store, &shop, run, Some(tx.clone())).await {
                Ok(run) => {
                    let _ = tx.send(Ok(run.progress())).await;
                }
                Err(e) => {
                    tracing::warn!(shop, error = %e, "bulk run stopped; it resumes on the next call or sweep");
                    let _ = tx.send(Err(e.into())).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn set_issue_rule(
        &self,
        request: Request<pb::SetIssueRuleRequest>,
    ) -> Result<Response<pb::SetIssueRuleResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let Some(rule) = req.rule else {
            return Err(Failure::invalid_field("rule", "is required").into());
        };
        let mut v = FieldViolations::new();
        v.check(
            matches!(pb::IssueTrigger::try_from(rule.trigger), Ok(t) if t != pb::IssueTrigger::Unspecified),
            "rule.trigger",
            "must be SECOND_PURCHASE, REVIEW, EVERY_PAID_ORDER, TIER_UPGRADE or BIRTHDAY",
        );
        v.check(
            !rule.template_id.is_empty() && rule.template_id.len() <= 64,
            "rule.template_id",
            "must be 1-64 characters",
        );
        v.check(
            !rule.positive_reviews_only || rule.trigger == pb::IssueTrigger::Review as i32,
            "rule.positive_reviews_only",
            "only applies to REVIEW rules",
        );
        v.finish()?;
        if self
            .store
            .load_template(self.store.db.conn(), &caller.shop_id, &rule.template_id)
            .await?
            .is_none()
        {
            return Err(Failure::invalid_field(
                "rule.template_id",
                "names no template in this shop",
            )
            .into());
        }
        let shop = caller.shop_id.clone();
        let stored = rule.clone();
        self.store
            .transaction(move |tx, store| {
                let (shop, rule) = (shop.clone(), rule.clone());
                Box::pin(async move { store.set_rule(tx, &shop, &rule).await })
            })
            .await?;
        Ok(Response::new(pb::SetIssueRuleResponse {
            rule: Some(stored),
        }))
    }

    async fn list_issue_rules(
        &self,
        request: Request<pb::ListIssueRulesRequest>,
    ) -> Result<Response<pb::ListIssueRulesResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(pb::ListIssueRulesResponse {
            rules: self
                .store
                .rules(self.store.db.conn(), &caller.shop_id)
                .await?,
        }))
    }

    async fn get_coupon(
        &self,
        request: Request<pb::GetCouponRequest>,
    ) -> Result<Response<pb::GetCouponResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let code = convert::code_in(&req.code, "code")?;
        let row = self.coupon(&caller, &code).await?;
        Ok(Response::new(pb::GetCouponResponse {
            coupon: Some(self.coupon_out(&caller.shop_id, &row).await),
        }))
    }

    async fn list_coupons(
        &self,
        request: Request<pb::ListCouponsRequest>,
    ) -> Result<Response<pb::ListCouponsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        convert::customer_id(&req.customer_id, "customer_id", &mut v);
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let fingerprint =
            paging::fingerprint(&format!("coupons|{}|{}", req.customer_id, req.usable_only));
        let after = match paging::decode(&req.page_token, &fingerprint)? {
            Some(key) => {
                let (at, code) = key.split_once('|').unwrap_or(("", ""));
                Some((
                    at.parse::<i64>().map_err(|_| {
                        Failure::invalid_field("page_token", "is not a token from this list")
                    })?,
                    code.to_owned(),
                ))
            }
            None => None,
        };
        let now = now_micros();
        let mut rows = self
            .store
            .list_coupons(
                &caller.shop_id,
                &req.customer_id,
                after,
                req.usable_only.then_some(now),
                size + 1,
            )
            .await?;
        let keys: Vec<String> = rows
            .iter()
            .map(|r| format!("{}|{}", r.issued_at, r.code))
            .collect();
        let mut next_page_token = String::new();
        if rows.len() > size {
            rows.truncate(size);
            next_page_token = paging::encode(&keys[size - 1], &fingerprint);
        }
        let mut coupons = Vec::with_capacity(rows.len());
        for r in &rows {
            coupons.push(self.coupon_out(&caller.shop_id, r).await);
        }
        Ok(Response::new(pb::ListCouponsResponse {
            coupons,
            next_page_token,
        }))
    }

    async fn validate_coupon(
        &self,
        request: Request<pb::ValidateCouponRequest>,
    ) -> Result<Response<pb::ValidateCouponResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let (code, cart) = checkout_fields(
            &req.code,
            &req.customer_id,
            (!req.order_no.is_empty()).then_some(req.order_no.as_str()),
            req.cart.as_ref(),
            &mut v,
        )?;
        v.finish()?;
        let row = self.coupon(&caller, &code).await?;
        let template = self
            .store
            .template(&caller.shop_id, &row.template_id)
            .await?;
        let friend = row.customer_id != req.customer_id;
        let friend_at_limit = friend
            && template.terms.shareable
            && self
                .store
                .at_limit(
                    self.store.db.conn(),
                    &caller.shop_id,
                    &template,
                    &req.customer_id,
                )
                .await?;
        let now = now_micros();
        let attempt = Attempt {
            code: &code,
            customer_id: &req.customer_id,
            order_no: &req.order_no,
            cart: &cart.cart,
            tier_discount_applied: cart.tier_discount_applied,
            other_coupons: cart.other_coupons,
            friend_at_limit,
            now,
        };
        let subtotal =
            crate::domain::discount::applicable_subtotal(&cart.cart, &template.terms.scope);
        let mut response = pb::ValidateCouponResponse {
            applicable_subtotal_fen: subtotal,
            coupon: Some(convert::coupon_out(&row, Some(&template), now)),
            ..Default::default()
        };
        match checkout::evaluate(&template.terms, &row.standing(), &attempt) {
            Ok(discount) => {
                response.usable = true;
                response.discount_fen = discount;
            }
            Err(refusal) => {
                response.refusal = refusal_out(refusal) as i32;
                response.refusal_detail = refusal.describe();
                if let Refusal::BelowMinimum { short_fen } = refusal {
                    response.short_fen = short_fen;
                }
            }
        }
        Ok(Response::new(response))
    }

    async fn hold_coupon(
        &self,
        request: Request<pb::HoldCouponRequest>,
    ) -> Result<Response<pb::HoldCouponResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let (code, cart) = checkout_fields(
            &req.code,
            &req.customer_id,
            Some(&req.order_no),
            req.cart.as_ref(),
            &mut v,
        )?;
        v.check(
            req.hold_seconds == 0 || (60..=3600).contains(&req.hold_seconds),
            "hold_seconds",
            "must be 60-3600, or 0 for 900",
        );
        v.finish()?;
        let seconds = if req.hold_seconds == 0 {
            DEFAULT_HOLD_SECONDS
        } else {
            req.hold_seconds
        };
        let until = now_micros() + i64::from(seconds) * 1_000_000;
        let (discount_fen, coupon) = self
            .claim(
                &caller,
                Checkout {
                    code: &code,
                    customer_id: &req.customer_id,
                    order_no: &req.order_no,
                },
                &cart,
                Claim::Hold(until),
                None,
            )
            .await?;
        Ok(Response::new(pb::HoldCouponResponse {
            discount_fen,
            coupon: Some(coupon),
        }))
    }

    async fn redeem_coupon(
        &self,
        request: Request<pb::RedeemCouponRequest>,
    ) -> Result<Response<pb::RedeemCouponResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let (code, cart) = checkout_fields(
            &req.code,
            &req.customer_id,
            Some(&req.order_no),
            req.cart.as_ref(),
            &mut v,
        )?;
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "RedeemCoupon", &req.request_id, &req);
        let total = cart.total_fen - cart.cart.shipping_fen;
        let (discount_fen, coupon) = self
            .claim(
                &caller,
                Checkout {
                    code: &code,
                    customer_id: &req.customer_id,
                    order_no: &req.order_no,
                },
                &cart,
                Claim::Redeem(total),
                key,
            )
            .await?;
        Ok(Response::new(pb::RedeemCouponResponse {
            discount_fen,
            coupon: Some(coupon),
        }))
    }

    async fn release_coupon(
        &self,
        request: Request<pb::ReleaseCouponRequest>,
    ) -> Result<Response<pb::ReleaseCouponResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let code = convert::code_in(&req.code, "code")?;
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        convert::order_no(&req.order_no, "order_no", &mut v);
        text(&req.reason, "reason", 200, &mut v);
        v.finish()?;
        // Counts a miss against guessing like any other lookup.
        self.coupon(&caller, &code).await?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "ReleaseCoupon", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, code, req) = (shop.clone(), code.clone(), req.clone());
                Box::pin(async move {
                    let now = now_micros();
                    let row = store
                        .release(tx, &shop, &code, &req.order_no, &req.reason, now)
                        .await?;
                    let template = store.template(&shop, &row.template_id).await.ok();
                    Ok(pb::ReleaseCouponResponse {
                        coupon: Some(convert::coupon_out(&row, template.as_deref(), now)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }
}

fn refusal_out(r: Refusal) -> pb::RefusalReason {
    match r {
        Refusal::Expired => pb::RefusalReason::Expired,
        Refusal::NotYetValid => pb::RefusalReason::NotYetValid,
        Refusal::BelowMinimum { .. } => pb::RefusalReason::BelowMinimum,
        Refusal::ItemsNotApplicable => pb::RefusalReason::ItemsNotApplicable,
        Refusal::LimitReached => pb::RefusalReason::LimitReached,
        Refusal::AlreadyUsed => pb::RefusalReason::AlreadyUsed,
        Refusal::HeldForAnotherOrder => pb::RefusalReason::HeldForAnotherOrder,
        Refusal::NotYours => pb::RefusalReason::NotYours,
        Refusal::DoesNotStack => pb::RefusalReason::DoesNotStack,
    }
}
