//! `huitou.loyalty.v1.LoyaltyService`: check, scope to the caller's shop,
//! call the store, convert back. Rules live in `domain`, SQL in `store`.

pub mod convert;

use huitou_proto::loyalty::v1 as pb;
use huitou_proto::loyalty::v1::loyalty_service_server::LoyaltyService;
use huitou_runtime::auth::caller;
use huitou_runtime::paging;
use huitou_runtime::{Caller, Failure, FieldViolations};
use huitou_storage::idempotency::{IdempotencyKey, check_request_id};
use huitou_storage::now_micros;
use tonic::{Request, Response, Status};

use crate::domain::pricing::{self, Buyer, Source, ZonePrice};
use crate::error::LoyaltyError;
use crate::store::Store;
use crate::store::catalog::PriceRow;
use crate::store::members::{MemberKey, MemberRow};

/// The loyalty API over a store.
pub struct LoyaltyApi {
    store: Store,
}

impl LoyaltyApi {
    /// The API over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn member_out(&self, shop: &str, row: MemberRow) -> Result<pb::Member, LoyaltyError> {
        let program = self.store.program(shop).await?;
        let view = self
            .store
            .member_view(self.store.db.conn(), &program, row, now_micros())
            .await?;
        Ok(convert::member(&program, &view))
    }

    async fn find(&self, shop: &str, key: &MemberKey) -> Result<MemberRow, LoyaltyError> {
        self.store
            .find_member(self.store.db.conn(), shop, key, false)
            .await
    }
}

fn actor(caller: &Caller) -> String {
    format!("{} key {}", caller.role.as_str(), caller.key_id)
}

fn text(value: &str, field: &str, max: usize, v: &mut FieldViolations) {
    v.check(
        !value.trim().is_empty() && value.chars().count() <= max,
        field,
        format!("must be 1-{max} characters"),
    );
}

const MAX_CART_LINES: usize = 200;
const MAX_PRICES: usize = 1000;
const MAX_ADJUSTMENT: i64 = 10_000_000;

#[tonic::async_trait]
impl LoyaltyService for LoyaltyApi {
    async fn get_program(
        &self,
        request: Request<pb::GetProgramRequest>,
    ) -> Result<Response<pb::GetProgramResponse>, Status> {
        let caller = caller(&request)?;
        let (program, updated) = self
            .store
            .load_program(self.store.db.conn(), &caller.shop_id)
            .await?;
        Ok(Response::new(pb::GetProgramResponse {
            program: Some(convert::program_out(&program)),
            update_time: updated.map(huitou_proto::timestamp_from_micros),
        }))
    }

    async fn update_program(
        &self,
        request: Request<pb::UpdateProgramRequest>,
    ) -> Result<Response<pb::UpdateProgramResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let program = convert::program_in(req.program.as_ref())?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "UpdateProgram", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, program) = (shop.clone(), program.clone());
                Box::pin(async move {
                    store.save_program(tx, &shop, &program).await?;
                    Ok(pb::UpdateProgramResponse {
                        program: Some(convert::program_out(&program)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::GetMemberResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let key = convert::member_key(&req.customer_id, &req.buyer_nick)?;
        let row = self.find(&caller.shop_id, &key).await?;
        Ok(Response::new(pb::GetMemberResponse {
            member: Some(self.member_out(&caller.shop_id, row).await?),
        }))
    }

    async fn get_member_price(
        &self,
        request: Request<pb::GetMemberPriceRequest>,
    ) -> Result<Response<pb::GetMemberPriceResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let key = convert::member_key(&req.customer_id, &req.buyer_nick)?;
        let mut v = FieldViolations::new();
        v.check(
            (1..=MAX_CART_LINES).contains(&req.lines.len()),
            "lines",
            format!("a cart has 1-{MAX_CART_LINES} lines"),
        );
        // Checkout path: field names are only formatted for a bad line.
        for (i, l) in req.lines.iter().enumerate() {
            if l.sku.trim().is_empty() || l.sku.len() > 64 && l.sku.chars().count() > 64 {
                v.add(format!("lines[{i}].sku"), "must be 1-64 characters");
            }
            if !(1..=10_000).contains(&l.quantity) {
                v.add(format!("lines[{i}].quantity"), "must be 1-10000");
            }
            if !(0..=100_000_000).contains(&l.unit_price_fen) {
                v.add(
                    format!("lines[{i}].unit_price_fen"),
                    "must be 0-100000000 fen",
                );
            }
        }
        v.finish()?;
        let shop = &caller.shop_id;
        let program = self.store.program(shop).await?;
        let member = self.store.checkout_standing(shop, &key).await?;
        let zone = self
            .store
            .zone_prices(shop, || req.lines.iter().map(|l| l.sku.clone()).collect())
            .await?;
        let no_prices = std::collections::HashMap::new();
        let zone = match &*zone {
            crate::store::checkout::Zone::All(map) => map,
            crate::store::checkout::Zone::TooMany => &no_prices,
        };
        let tier = program.tier_or_base(&member.tier_code);
        let buyer = Buyer {
            tier,
            per_mille: program.tiers[tier].price_per_mille,
            returning: member.returning,
        };
        let mut response = pb::GetMemberPriceResponse {
            tier_code: program.tiers[tier].code.clone(),
            tier_price_per_mille: buyer.per_mille,
            ..Default::default()
        };
        for l in &req.lines {
            let z = zone.get(&l.sku).map(|p| ZonePrice {
                price_fen: p.price_fen,
                returning_only: p.returning_only != 0,
                // A zone price for a tier no longer in the program is
                // offered to no one rather than to everyone.
                min_tier: if p.min_tier_code.is_empty() {
                    0
                } else {
                    program.tier_index(&p.min_tier_code).unwrap_or(usize::MAX)
                },
                label: p.label.clone(),
            });
            let (unit, source) = pricing::unit_price(l.unit_price_fen, buyer, z.as_ref());
            response.list_total_fen += l.unit_price_fen * l.quantity;
            response.member_total_fen += unit * l.quantity;
            response.lines.push(pb::PricedLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                list_unit_price_fen: l.unit_price_fen,
                member_unit_price_fen: unit,
                source: match source {
                    Source::List => pb::PriceSource::List,
                    Source::Tier => pb::PriceSource::Tier,
                    Source::PriceList => pb::PriceSource::MemberPriceList,
                } as i32,
                saving_fen: (l.unit_price_fen - unit) * l.quantity,
                label: match (source, z) {
                    (Source::PriceList, Some(z)) => z.label,
                    _ => String::new(),
                },
            });
        }
        Ok(Response::new(response))
    }

    async fn list_ledger_entries(
        &self,
        request: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let key = convert::member_key(&req.customer_id, &req.buyer_nick)?;
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let member = self.find(&caller.shop_id, &key).await?;
        let fingerprint = paging::fingerprint(&format!("ledger|{}", member.customer_id));
        let before = paging::decode(&req.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .entries(
                &caller.shop_id,
                &member.customer_id,
                before.as_deref(),
                size + 1,
            )
            .await?;
        let next = paging::next_page(&mut rows, size, &fingerprint, |e| &e.id);
        Ok(Response::new(pb::ListLedgerEntriesResponse {
            entries: rows.iter().map(convert::entry).collect(),
            next_page_token: next,
        }))
    }

    async fn list_tier_changes(
        &self,
        request: Request<pb::ListTierChangesRequest>,
    ) -> Result<Response<pb::ListTierChangesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let key = convert::member_key(&req.customer_id, &req.buyer_nick)?;
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let member = self.find(&caller.shop_id, &key).await?;
        let fingerprint = paging::fingerprint(&format!("tiers|{}", member.customer_id));
        let before = paging::decode(&req.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .tier_changes(
                &caller.shop_id,
                &member.customer_id,
                before.as_deref(),
                size + 1,
            )
            .await?;
        let next = paging::next_page(&mut rows, size, &fingerprint, |e| &e.id);
        Ok(Response::new(pb::ListTierChangesResponse {
            changes: rows.iter().map(convert::tier_change).collect(),
            next_page_token: next,
        }))
    }

    async fn adjust_points(
        &self,
        request: Request<pb::AdjustPointsRequest>,
    ) -> Result<Response<pb::AdjustPointsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.check(
            req.points != 0 && req.points.abs() <= MAX_ADJUSTMENT,
            "points",
            format!("must be non-zero and at most {MAX_ADJUSTMENT} either way"),
        );
        text(&req.reason, "reason", 256, &mut v);
        v.finish()?;
        let key = convert::member_key(&req.customer_id, &req.buyer_nick)?;
        let idem =
            IdempotencyKey::for_request(&caller.shop_id, "AdjustPoints", &req.request_id, &req);
        let (shop, who, points, reason) = (
            caller.shop_id.clone(),
            actor(&caller),
            req.points,
            req.reason.clone(),
        );
        let entry = self
            .store
            .write(idem.as_ref(), move |tx, store| {
                let (shop, key, who, reason) =
                    (shop.clone(), key.clone(), who.clone(), reason.clone());
                Box::pin(async move {
                    let mut m = store.find_member(&**tx, &shop, &key, true).await?;
                    let reason = format!("adjusted: {reason}");
                    let entry = if points > 0 {
                        let (program, _) = store.load_program(&**tx, &shop).await?;
                        store
                            .earn(
                                tx,
                                &program,
                                &mut m,
                                pb::EntryKind::Adjusted,
                                points,
                                reason,
                                "",
                                "",
                                &who,
                            )
                            .await?
                    } else {
                        store
                            .spend(tx, &mut m, pb::EntryKind::Adjusted, -points, reason, &who)
                            .await?
                    };
                    store.save_member(tx, &mut m).await?;
                    Ok(pb::AdjustPointsResponse {
                        entry: Some(convert::entry(&entry)),
                        member: None,
                    })
                })
            })
            .await?;
        let member = self
            .find(
                &caller.shop_id,
                &convert::member_key(&req.customer_id, &req.buyer_nick)?,
            )
            .await?;
        Ok(Response::new(pb::AdjustPointsResponse {
            member: Some(self.member_out(&caller.shop_id, member).await?),
            ..entry
        }))
    }

    async fn check_in(
        &self,
        request: Request<pb::CheckInRequest>,
    ) -> Result<Response<pb::CheckInResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let key = convert::member_key(&req.customer_id, &req.buyer_nick)?;
        let idem = IdempotencyKey::for_request(&caller.shop_id, "CheckIn", &req.request_id, &req);
        let (shop, who) = (caller.shop_id.clone(), actor(&caller));
        let answer = self
            .store
            .write(idem.as_ref(), move |tx, store| {
                let (shop, key, who) = (shop.clone(), key.clone(), who.clone());
                Box::pin(async move {
                    let mut m = store.find_member(&**tx, &shop, &key, true).await?;
                    let (program, _) = store.load_program(&**tx, &shop).await?;
                    let (today, _) = crate::store::points::local_day(&program, now_micros());
                    if m.last_check_in_day >= today {
                        return Ok(pb::CheckInResponse {
                            points: 0,
                            already_checked_in: true,
                            member: None,
                        });
                    }
                    m.last_check_in_day = today;
                    let points = program.earning.check_in_points;
                    if points > 0 {
                        store
                            .earn(
                                tx,
                                &program,
                                &mut m,
                                pb::EntryKind::CheckInEarned,
                                points,
                                "daily check-in".into(),
                                "",
                                "",
                                &who,
                            )
                            .await?;
                    }
                    store.save_member(tx, &mut m).await?;
                    Ok(pb::CheckInResponse {
                        points,
                        already_checked_in: false,
                        member: None,
                    })
                })
            })
            .await?;
        let member = self
            .find(
                &caller.shop_id,
                &convert::member_key(&req.customer_id, &req.buyer_nick)?,
            )
            .await?;
        Ok(Response::new(pb::CheckInResponse {
            member: Some(self.member_out(&caller.shop_id, member).await?),
            ..answer
        }))
    }

    async fn record_referral(
        &self,
        request: Request<pb::RecordReferralRequest>,
    ) -> Result<Response<pb::RecordReferralResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        text(
            &req.referrer_customer_id,
            "referrer_customer_id",
            64,
            &mut v,
        );
        text(&req.friend_customer_id, "friend_customer_id", 64, &mut v);
        v.check(
            req.referrer_customer_id != req.friend_customer_id,
            "friend_customer_id",
            "a customer cannot refer themselves",
        );
        v.finish()?;
        let idem =
            IdempotencyKey::for_request(&caller.shop_id, "RecordReferral", &req.request_id, &req);
        let (shop, who) = (caller.shop_id.clone(), actor(&caller));
        let (referrer, friend) = (
            req.referrer_customer_id.clone(),
            req.friend_customer_id.clone(),
        );
        let answer = self
            .store
            .write(idem.as_ref(), move |tx, store| {
                let (shop, who, referrer, friend) =
                    (shop.clone(), who.clone(), referrer.clone(), friend.clone());
                Box::pin(async move {
                    let f = store
                        .find_member(&**tx, &shop, &MemberKey::Id(friend.clone()), false)
                        .await?;
                    if f.paid_order_count == 0 {
                        return Err(Failure::failed_precondition(
                            "FRIEND_HAS_NOT_PAID",
                            "the referred friend has no paid order yet",
                        )
                        .into());
                    }
                    let mut m = store
                        .find_member(&**tx, &shop, &MemberKey::Id(referrer.clone()), true)
                        .await?;
                    let (program, _) = store.load_program(&**tx, &shop).await?;
                    let points = program.earning.referral_points;
                    let inserted = tx
                        .execute(
                            "INSERT INTO referrals (shop_id, friend_customer_id, referrer_customer_id, points, created_at)
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (shop_id, friend_customer_id) DO NOTHING",
                            vec![shop.clone().into(), friend.clone().into(), referrer.into(), points.into(), now_micros().into()],
                        )
                        .await?;
                    if inserted == 0 || points == 0 {
                        return Ok(pb::RecordReferralResponse { points: 0 });
                    }
                    store
                        .earn(
                            tx,
                            &program,
                            &mut m,
                            pb::EntryKind::ReferralEarned,
                            points,
                            format!("referred customer {friend}"),
                            "",
                            "",
                            &who,
                        )
                        .await?;
                    store.save_member(tx, &mut m).await?;
                    Ok(pb::RecordReferralResponse { points })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn set_member_prices(
        &self,
        request: Request<pb::SetMemberPricesRequest>,
    ) -> Result<Response<pb::SetMemberPricesResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.check(
            !(req.prices.is_empty() && req.remove_skus.is_empty()),
            "prices",
            "give prices to set or SKUs to remove",
        );
        v.check(
            req.prices.len() <= MAX_PRICES,
            "prices",
            format!("at most {MAX_PRICES}"),
        );
        v.check(
            req.remove_skus.len() <= MAX_PRICES,
            "remove_skus",
            format!("at most {MAX_PRICES}"),
        );
        let program = self.store.program(&caller.shop_id).await?;
        let mut seen = std::collections::HashSet::new();
        for (i, p) in req.prices.iter().enumerate() {
            text(&p.sku, &format!("prices[{i}].sku"), 64, &mut v);
            v.check(
                seen.insert(&p.sku),
                format!("prices[{i}].sku"),
                "is listed twice",
            );
            v.check(
                (0..=100_000_000).contains(&p.price_fen),
                format!("prices[{i}].price_fen"),
                "must be 0-100000000 fen",
            );
            v.check(
                p.label.chars().count() <= 32,
                format!("prices[{i}].label"),
                "at most 32 characters",
            );
            v.check(
                p.min_tier_code.is_empty() || program.tier_index(&p.min_tier_code).is_some(),
                format!("prices[{i}].min_tier_code"),
                "is not a tier of the program",
            );
        }
        for (i, sku) in req.remove_skus.iter().enumerate() {
            text(sku, &format!("remove_skus[{i}]"), 64, &mut v);
        }
        v.finish()?;
        let rows: Vec<PriceRow> = req
            .prices
            .iter()
            .map(|p| PriceRow {
                sku: p.sku.clone(),
                price_fen: p.price_fen,
                returning_only: i32::from(p.returning_customers_only),
                label: p.label.clone(),
                min_tier_code: p.min_tier_code.clone(),
            })
            .collect();
        let idem =
            IdempotencyKey::for_request(&caller.shop_id, "SetMemberPrices", &req.request_id, &req);
        let (shop, remove) = (caller.shop_id.clone(), req.remove_skus.clone());
        let answer = self
            .store
            .write(idem.as_ref(), move |tx, store| {
                let (shop, rows, remove) = (shop.clone(), rows.clone(), remove.clone());
                Box::pin(async move {
                    let (set_count, removed_count) =
                        store.set_prices(tx, &shop, &rows, &remove).await?;
                    Ok(pb::SetMemberPricesResponse {
                        set_count,
                        removed_count,
                    })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn list_member_prices(
        &self,
        request: Request<pb::ListMemberPricesRequest>,
    ) -> Result<Response<pb::ListMemberPricesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let fingerprint = paging::fingerprint("prices");
        let after = paging::decode(&req.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .list_prices(&caller.shop_id, after.as_deref(), size + 1)
            .await?;
        let next = paging::next_page(&mut rows, size, &fingerprint, |p| &p.sku);
        Ok(Response::new(pb::ListMemberPricesResponse {
            prices: rows
                .iter()
                .map(|p| pb::MemberPrice {
                    sku: p.sku.clone(),
                    price_fen: p.price_fen,
                    returning_customers_only: p.returning_only != 0,
                    label: p.label.clone(),
                    min_tier_code: p.min_tier_code.clone(),
                })
                .collect(),
            next_page_token: next,
        }))
    }

    async fn upsert_reward(
        &self,
        request: Request<pb::UpsertRewardRequest>,
    ) -> Result<Response<pb::UpsertRewardResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let reward = convert::reward_in(req.reward.as_ref())?;
        let idem =
            IdempotencyKey::for_request(&caller.shop_id, "UpsertReward", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let answer = self
            .store
            .write(idem.as_ref(), move |tx, store| {
                let (shop, reward) = (shop.clone(), reward.clone());
                Box::pin(async move {
                    store.upsert_reward(tx, &shop, &reward).await?;
                    Ok(pb::UpsertRewardResponse {
                        reward: Some(convert::reward_out(&reward)),
                    })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn list_rewards(
        &self,
        request: Request<pb::ListRewardsRequest>,
    ) -> Result<Response<pb::ListRewardsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let rows = self.store.rewards(&caller.shop_id, req.active_only).await?;
        Ok(Response::new(pb::ListRewardsResponse {
            rewards: rows.iter().map(convert::reward_out).collect(),
        }))
    }

    async fn exchange_reward(
        &self,
        request: Request<pb::ExchangeRewardRequest>,
    ) -> Result<Response<pb::ExchangeRewardResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        v.check(
            !req.request_id.is_empty(),
            "request_id",
            "is required: an exchange must never be made twice",
        );
        check_request_id(&req.request_id, &mut v);
        crate::domain::program::check_code(&req.reward_code, &['-'], "reward_code", &mut v);
        v.finish()?;
        let key = convert::member_key(&req.customer_id, &req.buyer_nick)?;
        let idem =
            IdempotencyKey::for_request(&caller.shop_id, "ExchangeReward", &req.request_id, &req);
        let (shop, who, code) = (
            caller.shop_id.clone(),
            actor(&caller),
            req.reward_code.clone(),
        );
        let answer = self
            .store
            .write(idem.as_ref(), move |tx, store| {
                let (shop, key, who, code) = (shop.clone(), key.clone(), who.clone(), code.clone());
                Box::pin(async move {
                    let mut m = store.find_member(&**tx, &shop, &key, true).await?;
                    let x = store.exchange(tx, &mut m, &code, &who).await?;
                    store.save_member(tx, &mut m).await?;
                    Ok(pb::ExchangeRewardResponse {
                        exchange_id: x.id,
                        points_spent: -x.entry.points,
                        entry: Some(convert::entry(&x.entry)),
                        fulfilment_task_id: x.task_id,
                        free_shipping_card_id: x.card_id,
                        member: None,
                    })
                })
            })
            .await?;
        let member = self
            .find(
                &caller.shop_id,
                &convert::member_key(&req.customer_id, &req.buyer_nick)?,
            )
            .await?;
        Ok(Response::new(pb::ExchangeRewardResponse {
            member: Some(self.member_out(&caller.shop_id, member).await?),
            ..answer
        }))
    }

    async fn list_fulfilment_tasks(
        &self,
        request: Request<pb::ListFulfilmentTasksRequest>,
    ) -> Result<Response<pb::ListFulfilmentTasksResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let fingerprint = paging::fingerprint(&format!("tasks|{}", req.include_done));
        let after = paging::decode(&req.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .tasks(
                &caller.shop_id,
                req.include_done,
                after.as_deref(),
                size + 1,
            )
            .await?;
        let next = paging::next_page(&mut rows, size, &fingerprint, |t| &t.id);
        Ok(Response::new(pb::ListFulfilmentTasksResponse {
            tasks: rows.iter().map(convert::task).collect(),
            next_page_token: next,
        }))
    }

    async fn complete_fulfilment_task(
        &self,
        request: Request<pb::CompleteFulfilmentTaskRequest>,
    ) -> Result<Response<pb::CompleteFulfilmentTaskResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        text(&req.task_id, "task_id", 64, &mut v);
        text(&req.carrier, "carrier", 32, &mut v);
        text(&req.tracking_number, "tracking_number", 64, &mut v);
        v.finish()?;
        let shop = caller.shop_id.clone();
        let task = self
            .store
            .transaction(move |tx, store| {
                let (shop, req) = (shop.clone(), req.clone());
                Box::pin(async move {
                    store
                        .complete_task(tx, &shop, &req.task_id, &req.carrier, &req.tracking_number)
                        .await
                })
            })
            .await?;
        Ok(Response::new(pb::CompleteFulfilmentTaskResponse {
            task: Some(convert::task(&task)),
        }))
    }
}
