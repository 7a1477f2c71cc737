//! The coupon service as a storefront and an operator use it: templates,
//! issuing within every limit, validate / hold / redeem / release, issue
//! rules set off by other services' events, bulk runs, and the races.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::time::Duration;

use huitou_proto::coupon::v1 as pb;
use huitou_proto::coupon::v1::coupon_template::{Benefit, Validity};
use huitou_proto::customer::v1 as cpb;
use huitou_tests::{Coupons, TestSuite, ago, bad_fields, reason};
use tonic::Code;

fn threshold_template(name: &str, stock: Option<i64>, per_customer: i32) -> pb::CouponTemplate {
    pb::CouponTemplate {
        name: name.into(),
        benefit: Some(Benefit::Threshold(pb::ThresholdOff {
            threshold_fen: 29_900,
            amount_fen: 3_000,
        })),
        validity: Some(Validity::ValidDaysAfterIssue(30)),
        per_customer_limit: per_customer,
        stock,
        agent_daily_budget: 2,
        ..Default::default()
    }
}

async fn create(ops: &mut Coupons, template: pb::CouponTemplate) -> pb::CouponTemplate {
    ops.create_template(pb::CreateTemplateRequest {
        template: Some(template),
        ..Default::default()
    })
    .await
    .expect("create template")
    .into_inner()
    .template
    .expect("template")
}

fn issue(template_id: &str, customer: &str) -> pb::IssueCouponRequest {
    pb::IssueCouponRequest {
        template_id: template_id.into(),
        customer_id: customer.into(),
        ..Default::default()
    }
}

async fn issued(client: &mut Coupons, template_id: &str, customer: &str) -> pb::Coupon {
    client
        .issue_coupon(issue(template_id, customer))
        .await
        .expect("issue")
        .into_inner()
        .coupon
        .expect("coupon")
}

fn cart(unit_fen: i64, quantity: i64) -> pb::Cart {
    pb::Cart {
        lines: vec![pb::CartLine {
            sku: "SKU-1".into(),
            category: "童装".into(),
            quantity,
            unit_price_fen: unit_fen,
        }],
        shipping_fen: 800,
        total_fen: unit_fen * quantity + 800,
        ..Default::default()
    }
}

fn redeem(code: &str, customer: &str, order: &str) -> pb::RedeemCouponRequest {
    pb::RedeemCouponRequest {
        code: code.into(),
        customer_id: customer.into(),
        order_no: order.into(),
        cart: Some(cart(19_900, 2)),
        ..Default::default()
    }
}

fn validate(code: &str, customer: &str, cart: pb::Cart) -> pb::ValidateCouponRequest {
    pb::ValidateCouponRequest {
        code: code.into(),
        customer_id: customer.into(),
        cart: Some(cart),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_coupon_validates_holds_redeems_once_and_comes_back() {
    let suite = TestSuite::start("coupon-flow").await;
    let mut ops = suite.coupons(&suite.shop.operator);
    let mut front = suite.coupons(&suite.shop.storefront);
    let t = create(&mut ops, threshold_template("满299减30", Some(100), 2)).await;
    assert_eq!(t.remaining, Some(100));
    assert_eq!(t.time_zone, "Asia/Shanghai");
    let coupon = issued(&mut front, &t.template_id, "c-1").await;
    assert_eq!(coupon.state, pb::CouponState::Active as i32);
    assert_eq!(coupon.code.len(), 16, "grouped as XXXX-XXXX-XXXX-X");

    // Validation explains itself and changes nothing.
    let small = front
        .validate_coupon(validate(&coupon.code, "c-1", cart(19_900, 1)))
        .await
        .expect("validate")
        .into_inner();
    assert!(!small.usable);
    assert_eq!(small.refusal, pb::RefusalReason::BelowMinimum as i32);
    assert_eq!(small.short_fen, 10_000);
    assert!(
        small.refusal_detail.contains("100.00"),
        "{}",
        small.refusal_detail
    );
    let big = front
        .validate_coupon(validate(&coupon.code, "c-1", cart(19_900, 2)))
        .await
        .expect("validate")
        .into_inner();
    assert!(big.usable);
    assert_eq!(big.discount_fen, 3_000);
    let stranger = front
        .validate_coupon(validate(&coupon.code, "c-2", cart(19_900, 2)))
        .await
        .expect("validate")
        .into_inner();
    assert_eq!(stranger.refusal, pb::RefusalReason::NotYours as i32);
    let mut stacked = cart(19_900, 2);
    stacked.other_coupon_codes = vec!["ANOTHER".into()];
    let stacked = front
        .validate_coupon(validate(&coupon.code, "c-1", stacked))
        .await
        .expect("validate")
        .into_inner();
    assert_eq!(stacked.refusal, pb::RefusalReason::DoesNotStack as i32);

    // Another shop's code is not found; a typo is caught before any lookup.
    let mut other = suite.coupons(&suite.other_shop.storefront);
    let err = other
        .validate_coupon(validate(&coupon.code, "c-1", cart(19_900, 2)))
        .await
        .expect_err("other shop");
    assert_eq!(err.code(), Code::NotFound);
    let mut typo = coupon.code.clone().into_bytes();
    typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
    let err = front
        .validate_coupon(validate(
            std::str::from_utf8(&typo).unwrap(),
            "c-1",
            cart(19_900, 2),
        ))
        .await
        .expect_err("typo");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "CODE_TYPO");

    // A hold keeps it for one pending order.
    let held = front
        .hold_coupon(pb::HoldCouponRequest {
            code: coupon.code.clone(),
            customer_id: "c-1".into(),
            order_no: "O-1".into(),
            cart: Some(cart(19_900, 2)),
            hold_seconds: 600,
        })
        .await
        .expect("hold")
        .into_inner();
    assert_eq!(held.discount_fen, 3_000);
    assert_eq!(
        held.coupon.as_ref().unwrap().state,
        pb::CouponState::Held as i32
    );
    let err = front
        .redeem_coupon(redeem(&coupon.code, "c-1", "O-2"))
        .await
        .expect_err("held for O-1");
    assert_eq!(reason(&err), "COUPON_HELD_FOR_ANOTHER_ORDER");

    // Redeemed once; the same order again gets the first answer; another
    // order is refused.
    let first = front
        .redeem_coupon(redeem(&coupon.code, "c-1", "O-1"))
        .await
        .expect("redeem")
        .into_inner();
    assert_eq!(first.discount_fen, 3_000);
    let again = front
        .redeem_coupon(redeem(&coupon.code, "c-1", "O-1"))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again, first);
    let err = front
        .redeem_coupon(redeem(&coupon.code, "c-1", "O-3"))
        .await
        .expect_err("used");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "COUPON_ALREADY_USED");

    let results = ops
        .get_template_results(pb::GetTemplateResultsRequest {
            template_id: t.template_id.clone(),
        })
        .await
        .expect("results")
        .into_inner()
        .results
        .unwrap();
    assert_eq!(
        (
            results.issued,
            results.redeemed,
            results.discount_cost_fen,
            results.order_gmv_fen
        ),
        (1, 1, 3_000, 39_800)
    );
    assert_eq!(results.redemption_per_mille, 1000);

    // Released by the wrong order: refused; by its order: usable again.
    let err = front
        .release_coupon(pb::ReleaseCouponRequest {
            code: coupon.code.clone(),
            order_no: "O-9".into(),
            ..Default::default()
        })
        .await
        .expect_err("wrong order");
    assert_eq!(reason(&err), "NOT_THIS_ORDER");
    let back = front
        .release_coupon(pb::ReleaseCouponRequest {
            code: coupon.code.clone(),
            order_no: "O-1".into(),
            reason: "order cancelled".into(),
            ..Default::default()
        })
        .await
        .expect("release")
        .into_inner()
        .coupon
        .unwrap();
    assert_eq!(back.state, pb::CouponState::Active as i32);
    let listed = front
        .list_coupons(pb::ListCouponsRequest {
            customer_id: "c-1".into(),
            usable_only: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.coupons.len(), 1);
    assert_eq!(listed.coupons[0].code, coupon.code);
    suite.stop().await;
}

#[tokio::test]
async fn issuing_keeps_to_limits_budgets_stock_and_request_ids() {
    let suite = TestSuite::start("coupon-limits").await;
    let mut ops = suite.coupons(&suite.shop.operator);
    let mut front = suite.coupons(&suite.shop.storefront);
    let t = create(&mut ops, threshold_template("限量券", Some(4), 2)).await;

    // A retried request gets the same coupon and takes no more stock.
    let mut once = issue(&t.template_id, "c-1");
    once.request_id = "issue-c1-1".into();
    let a = front
        .issue_coupon(once.clone())
        .await
        .expect("issue")
        .into_inner();
    let b = front.issue_coupon(once).await.expect("retry").into_inner();
    assert_eq!(a, b);
    issued(&mut front, &t.template_id, "c-1").await;
    let err = front
        .issue_coupon(issue(&t.template_id, "c-1"))
        .await
        .expect_err("limit");
    assert_eq!(reason(&err), "LIMIT_REACHED");

    // An agent's budget is per day: two, then refused.
    let agent = |customer: &str| pb::IssueCouponRequest {
        agent_id: "客服小王".into(),
        ..issue(&t.template_id, customer)
    };
    front.issue_coupon(agent("c-2")).await.expect("agent 1");
    let c = front
        .issue_coupon(agent("c-3"))
        .await
        .expect("agent 2")
        .into_inner()
        .coupon
        .unwrap();
    assert_eq!(c.issue_reason, "agent 客服小王");
    let err = front.issue_coupon(agent("c-4")).await.expect_err("budget");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(reason(&err), "AGENT_BUDGET_SPENT");

    // The stock of four is spent; a refused issue took none.
    let err = front
        .issue_coupon(issue(&t.template_id, "c-5"))
        .await
        .expect_err("stock");
    assert_eq!(reason(&err), "OUT_OF_STOCK");
    let got = ops
        .get_template(pb::GetTemplateRequest {
            template_id: t.template_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .template
        .unwrap();
    assert_eq!((got.issued, got.remaining), (4, Some(0)));

    // More stock, then paused.
    ops.update_template(pb::UpdateTemplateRequest {
        template_id: t.template_id.clone(),
        add_stock: 1,
        ..Default::default()
    })
    .await
    .expect("add stock");
    issued(&mut front, &t.template_id, "c-5").await;
    ops.update_template(pb::UpdateTemplateRequest {
        template_id: t.template_id.clone(),
        active: Some(false),
        add_stock: 5,
        ..Default::default()
    })
    .await
    .expect("pause");
    let err = front
        .issue_coupon(issue(&t.template_id, "c-6"))
        .await
        .expect_err("paused");
    assert_eq!(reason(&err), "TEMPLATE_PAUSED");

    // Audiences: new buyers only refuses nobody unknown yet; storefront
    // keys cannot define templates.
    let err = front
        .create_template(pb::CreateTemplateRequest {
            template: Some(threshold_template("x", None, 0)),
            ..Default::default()
        })
        .await
        .expect_err("storefront");
    assert_eq!(err.code(), Code::PermissionDenied);
    suite.stop().await;
}

#[tokio::test]
async fn bad_input_is_named_and_changes_nothing_and_guessing_is_limited() {
    let suite = TestSuite::start("coupon-bad-input").await;
    let mut ops = suite.coupons(&suite.shop.operator);
    let mut front = suite.coupons(&suite.shop.storefront);
    let mut bad = threshold_template("", Some(0), -1);
    bad.benefit = Some(Benefit::PercentOff(pb::PercentOff {
        per_mille: 1000,
        cap_fen: -1,
    }));
    let err = ops
        .create_template(pb::CreateTemplateRequest {
            template: Some(bad),
            ..Default::default()
        })
        .await
        .expect_err("bad template");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = bad_fields(&err);
    for f in [
        "template.name",
        "template.percent_off.per_mille",
        "template.percent_off.cap_fen",
        "template.per_customer_limit",
        "template.stock",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
    }
    let listed = ops
        .list_templates(pb::ListTemplatesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.templates.is_empty(), "a refused template was stored");

    let t = create(&mut ops, threshold_template("好券", None, 0)).await;
    let coupon = issued(&mut front, &t.template_id, "c-1").await;
    let mut wrong_total = cart(19_900, 2);
    wrong_total.total_fen += 1;
    let err = front
        .redeem_coupon(pb::RedeemCouponRequest {
            cart: Some(wrong_total),
            ..redeem(&coupon.code, "c-1", "O-1")
        })
        .await
        .expect_err("total");
    assert_eq!(bad_fields(&err), vec!["cart.total_fen"]);
    let mut negative = cart(19_900, 2);
    negative.lines[0].unit_price_fen = -5;
    let err = front
        .redeem_coupon(pb::RedeemCouponRequest {
            cart: Some(negative),
            ..redeem(&coupon.code, "c-1", "O-1")
        })
        .await
        .expect_err("negative");
    assert_eq!(bad_fields(&err), vec!["cart.lines[0].unit_price_fen"]);
    let still = front
        .get_coupon(pb::GetCouponRequest {
            code: coupon.code.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .coupon
        .unwrap();
    assert_eq!(still.state, pb::CouponState::Active as i32);

    // Well-formed codes that do not exist: the 21st miss in a minute is
    // refused with retry info, and then even a real code is refused.
    let mut refused = None;
    for i in 0..25 {
        let code = huitou_coupon::domain::code::from_random(&[i as u8; 12]);
        match front.get_coupon(pb::GetCouponRequest { code }).await {
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) if e.code() == Code::ResourceExhausted => {
                refused = Some(i);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused, Some(20));
    let err = front
        .get_coupon(pb::GetCouponRequest {
            code: coupon.code.clone(),
        })
        .await
        .expect_err("blocked key");
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Another key of the shop is not blocked.
    ops.get_coupon(pb::GetCouponRequest { code: coupon.code })
        .await
        .expect("operator key");
    suite.stop().await;
}

fn order(order_no: &str, nick: &str, status: cpb::OrderStatus) -> cpb::RecordOrderRequest {
    cpb::RecordOrderRequest {
        order_no: order_no.into(),
        buyer_nick: nick.into(),
        status: status as i32,
        items: vec![cpb::OrderItem {
            sku: "SKU-1".into(),
            category: "童装".into(),
            quantity: 2,
            unit_price_fen: 19_900,
            title: String::new(),
        }],
        payable_fen: 39_800,
        create_time: Some(ago(3600)),
        pay_time: (status == cpb::OrderStatus::Paid).then(|| ago(3500)),
        ..Default::default()
    }
}

async fn coupons_when(client: &mut Coupons, customer: &str, count: usize) -> Vec<pb::Coupon> {
    for _ in 0..600 {
        let listed = client
            .list_coupons(pb::ListCouponsRequest {
                customer_id: customer.into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .coupons;
        if listed.len() >= count {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{customer} never got {count} coupons");
}

#[tokio::test]
async fn rules_issue_on_a_second_purchase_and_closed_orders_give_coupons_back() {
    let suite = TestSuite::start("coupon-events").await;
    let mut ops = suite.coupons(&suite.shop.operator);
    let mut front = suite.coupons(&suite.shop.storefront);
    let mut orders = suite.customers(&suite.shop.storefront);
    let t = create(&mut ops, threshold_template("复购券", None, 0)).await;
    ops.set_issue_rule(pb::SetIssueRuleRequest {
        rule: Some(pb::IssueRule {
            trigger: pb::IssueTrigger::SecondPurchase as i32,
            template_id: t.template_id.clone(),
            active: true,
            positive_reviews_only: false,
        }),
    })
    .await
    .expect("rule");
    let err = ops
        .set_issue_rule(pb::SetIssueRuleRequest {
            rule: Some(pb::IssueRule {
                trigger: pb::IssueTrigger::Birthday as i32,
                template_id: "no-such-template".into(),
                active: true,
                positive_reviews_only: true,
            }),
        })
        .await
        .expect_err("bad rule");
    assert_eq!(
        bad_fields(&err),
        vec!["rule.positive_reviews_only".to_string()]
    );

    let first = orders
        .record_order(order("E-1", "tb_wang", cpb::OrderStatus::Paid))
        .await
        .expect("first order")
        .into_inner()
        .order
        .unwrap();
    let customer = first.customer_id.clone();
    orders
        .record_order(order("E-2", "tb_wang", cpb::OrderStatus::Paid))
        .await
        .expect("second order");
    let got = coupons_when(&mut front, &customer, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].issue_reason, "second purchase");
    // A third purchase is not a second one.
    orders
        .record_order(order("E-3", "tb_wang", cpb::OrderStatus::Paid))
        .await
        .expect("third order");

    // Held for an order that is then cancelled: back to the customer.
    let code = got[0].code.clone();
    front
        .hold_coupon(pb::HoldCouponRequest {
            code: code.clone(),
            customer_id: customer.clone(),
            order_no: "E-4".into(),
            cart: Some(cart(19_900, 2)),
            hold_seconds: 0,
        })
        .await
        .expect("hold");
    let mut pending = order("E-4", "tb_wang", cpb::OrderStatus::Created);
    pending.coupon_codes = vec![code.clone()];
    orders.record_order(pending).await.expect("pending order");
    orders
        .close_order(cpb::CloseOrderRequest {
            order_no: "E-4".into(),
            ..Default::default()
        })
        .await
        .expect("close");
    for _ in 0..600 {
        let c = front
            .get_coupon(pb::GetCouponRequest { code: code.clone() })
            .await
            .expect("get")
            .into_inner()
            .coupon
            .unwrap();
        if c.state == pb::CouponState::Active as i32 {
            assert!(c.order_no.is_empty());
            let listed = coupons_when(&mut front, &customer, 1).await;
            assert_eq!(listed.len(), 1, "the third order issued nothing");
            suite.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the closed order never gave the coupon back");
}

#[tokio::test]
async fn a_bulk_run_streams_progress_stops_at_the_stock_and_resumes_without_issuing_twice() {
    let suite = TestSuite::start("coupon-bulk").await;
    let mut ops = suite.coupons(&suite.shop.operator);
    let t = create(&mut ops, threshold_template("老客回馈", Some(1_000), 1)).await;
    let customers: Vec<String> = (0..1_200).map(|i| format!("bulk-{i:04}")).collect();
    let request = pb::BulkIssueCouponsRequest {
        request_id: "run-1".into(),
        template_id: t.template_id.clone(),
        customer_ids: customers.clone(),
        reason: "双11老客回馈".into(),
    };
    let mut stream = ops
        .bulk_issue_coupons(request.clone())
        .await
        .expect("run")
        .into_inner();
    let mut last = None;
    let mut updates = 0;
    while let Some(p) = stream.message().await.expect("progress") {
        updates += 1;
        last = Some(p);
    }
    let last = last.expect("progress");
    assert!(updates >= 3, "progress came in {updates} messages");
    assert!(last.finished);
    assert_eq!(
        (last.total, last.done, last.issued, last.out_of_stock),
        (1_200, 1_200, 1_000, 200)
    );
    // The same request id: the finished run, nothing issued again.
    let mut again = ops
        .bulk_issue_coupons(request.clone())
        .await
        .expect("again")
        .into_inner();
    let mut last_again = None;
    while let Some(p) = again.message().await.expect("progress") {
        last_again = Some(p);
    }
    assert_eq!(last_again.unwrap().issued, 1_000);
    let results = ops
        .get_template_results(pb::GetTemplateResultsRequest {
            template_id: t.template_id.clone(),
        })
        .await
        .expect("results")
        .into_inner()
        .results
        .unwrap();
    assert_eq!(results.issued, 1_000);
    // The same id for a different run is refused.
    let err = ops
        .bulk_issue_coupons(pb::BulkIssueCouponsRequest {
            customer_ids: vec!["someone".into()],
            ..request
        })
        .await
        .expect_err("reused id");
    assert_eq!(bad_fields(&err), vec!["request_id"]);
    suite.stop().await;
}

#[tokio::test]
async fn a_shared_coupon_credits_its_holder_and_counts_against_the_friends_limit() {
    let suite = TestSuite::start("coupon-share").await;
    let mut ops = suite.coupons(&suite.shop.operator);
    let mut front = suite.coupons(&suite.shop.storefront);
    let mut shared = threshold_template("好友券", None, 1);
    shared.shareable = true;
    let t = create(&mut ops, shared).await;
    let a = issued(&mut front, &t.template_id, "holder-a").await;
    let b = issued(&mut front, &t.template_id, "holder-b").await;
    assert_eq!(a.share_payload, format!("coupon:{}", a.code));

    // A friend redeems A through its share payload: the holder is named.
    let used = front
        .redeem_coupon(redeem(&a.share_payload, "friend", "F-1"))
        .await
        .expect("friend redeems")
        .into_inner()
        .coupon
        .unwrap();
    assert_eq!(used.redeemed_by_customer_id, "friend");
    assert_eq!(used.customer_id, "holder-a");
    // The friend's one coupon of this template is used: B is refused.
    let second = front
        .validate_coupon(validate(&b.code, "friend", cart(19_900, 2)))
        .await
        .expect("validate")
        .into_inner();
    assert_eq!(second.refusal, pb::RefusalReason::LimitReached as i32);
    let err = front
        .redeem_coupon(redeem(&b.code, "friend", "F-2"))
        .await
        .expect_err("over the friend's limit");
    assert_eq!(reason(&err), "LIMIT_REACHED");
    // Given back, A counts no more against the friend.
    front
        .release_coupon(pb::ReleaseCouponRequest {
            code: a.code.clone(),
            order_no: "F-1".into(),
            ..Default::default()
        })
        .await
        .expect("release");
    front
        .redeem_coupon(redeem(&b.code, "friend", "F-2"))
        .await
        .expect("now within the limit");
    let results = ops
        .get_template_results(pb::GetTemplateResultsRequest {
            template_id: t.template_id.clone(),
        })
        .await
        .expect("results")
        .into_inner()
        .results
        .unwrap();
    assert_eq!((results.redeemed, results.redeemed_by_friends), (1, 1));
    suite.stop().await;
}

#[tokio::test]
async fn points_buy_a_coupon_and_come_back_when_it_cannot_be_issued() {
    use huitou_proto::loyalty::v1 as lpb;
    let suite = TestSuite::start("coupon-exchange").await;
    let mut ops = suite.coupons(&suite.shop.operator);
    let mut loyalty_ops = suite.loyalty(&suite.shop.operator);
    let mut loyalty = suite.loyalty(&suite.shop.storefront);
    let mut customers = suite.customers(&suite.shop.operator);
    let customer = customers
        .upsert_customer(cpb::UpsertCustomerRequest {
            buyer_nick: "tb_points".into(),
            ..Default::default()
        })
        .await
        .expect("customer")
        .into_inner()
        .customer
        .expect("customer")
        .id;
    // The member appears from the customer service's event.
    let mut balance = None;
    for _ in 0..300 {
        if loyalty
            .get_member(lpb::GetMemberRequest {
                customer_id: customer.clone(),
                ..Default::default()
            })
            .await
            .is_ok()
        {
            balance = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(balance.is_some(), "the member never appeared");
    loyalty_ops
        .adjust_points(lpb::AdjustPointsRequest {
            customer_id: customer.clone(),
            points: 500,
            reason: "welcome".into(),
            ..Default::default()
        })
        .await
        .expect("points");
    // One coupon per customer: the second purchase cannot be issued.
    let template = create(&mut ops, threshold_template("积分换券", Some(10), 1)).await;
    loyalty_ops
        .upsert_reward(lpb::UpsertRewardRequest {
            reward: Some(lpb::Reward {
                code: "C30".into(),
                name: "满299减30券".into(),
                kind: lpb::RewardKind::Coupon as i32,
                points_cost: 100,
                coupon_template_id: template.template_id.clone(),
                active: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("reward");
    let exchange = |id: &str| lpb::ExchangeRewardRequest {
        request_id: id.into(),
        customer_id: customer.clone(),
        reward_code: "C30".into(),
        ..Default::default()
    };
    let first = loyalty
        .exchange_reward(exchange("c30-0001"))
        .await
        .expect("exchange")
        .into_inner();
    assert_eq!(first.member.expect("member").balance_points, 400);
    let got = coupons_when(&mut ops, &customer, 1).await;
    assert_eq!(got[0].issue_reason, "points exchange");
    assert_eq!(got[0].template_id, template.template_id);

    // The second is refused by the coupon service: the points come back.
    let second = loyalty
        .exchange_reward(exchange("c30-0002"))
        .await
        .expect("exchange")
        .into_inner();
    assert_eq!(second.member.expect("member").balance_points, 300);
    let mut returned = false;
    for _ in 0..300 {
        let m = loyalty
            .get_member(lpb::GetMemberRequest {
                customer_id: customer.clone(),
                ..Default::default()
            })
            .await
            .expect("member")
            .into_inner()
            .member
            .expect("member");
        if m.balance_points == 400 {
            returned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(returned, "the points of the refused coupon never came back");
    let entries = loyalty
        .list_ledger_entries(lpb::ListLedgerEntriesRequest {
            customer_id: customer.clone(),
            ..Default::default()
        })
        .await
        .expect("ledger")
        .into_inner()
        .entries;
    let back = entries
        .iter()
        .find(|e| e.kind == lpb::EntryKind::ExchangeReturned as i32)
        .expect("a returned entry");
    assert_eq!(back.points, 100);
    assert!(back.reason.contains("LIMIT_REACHED"), "{}", back.reason);
    assert_eq!(coupons_when(&mut ops, &customer, 1).await.len(), 1);
    suite.stop().await;
}

/// Paid, shipped, received and reviewed: what a review rule needs.
async fn reviewed(orders: &mut huitou_tests::Customers, order_no: &str, rating: cpb::ReviewRating) {
    orders
        .ship_order(cpb::ShipOrderRequest {
            order_no: order_no.into(),
            shipment: Some(cpb::Shipment {
                carrier: "顺丰".into(),
                tracking_number: format!("SF{order_no}"),
            }),
            ..Default::default()
        })
        .await
        .expect("ship");
    orders
        .confirm_order_received(cpb::ConfirmOrderReceivedRequest {
            order_no: order_no.into(),
            ..Default::default()
        })
        .await
        .expect("receive");
    orders
        .review_order(cpb::ReviewOrderRequest {
            order_no: order_no.into(),
            rating: rating as i32,
            text: "评价".into(),
            ..Default::default()
        })
        .await
        .expect("review");
}

/// Across the three services: an order that lifts the buyer a tier in
/// loyalty issues the tier-upgrade coupon; any genuine review earns the
/// review coupon (DOMAIN.md §3: rewarding only good reviews is the shop's
/// choice, and then a bad review earns nothing).
#[tokio::test]
async fn tier_upgrades_and_reviews_issue_their_rules_coupons() {
    let suite = TestSuite::start("coupon-tier-review").await;
    let mut ops = suite.coupons(&suite.shop.operator);
    let mut front = suite.coupons(&suite.shop.storefront);
    let mut orders = suite.customers(&suite.shop.storefront);
    let upgrade = create(&mut ops, threshold_template("升级礼券", None, 0)).await;
    let review = create(&mut ops, threshold_template("评价返券", None, 0)).await;
    let rule =
        |trigger: pb::IssueTrigger, template: &str, good_only: bool| pb::SetIssueRuleRequest {
            rule: Some(pb::IssueRule {
                trigger: trigger as i32,
                template_id: template.into(),
                active: true,
                positive_reviews_only: good_only,
            }),
        };
    ops.set_issue_rule(rule(
        pb::IssueTrigger::TierUpgrade,
        &upgrade.template_id,
        false,
    ))
    .await
    .expect("upgrade rule");
    ops.set_issue_rule(rule(pb::IssueTrigger::Review, &review.template_id, false))
        .await
        .expect("review rule");

    // 600 yuan paid lifts a new member past SENIOR (500 yuan) at once.
    let mut big = order("TR-1", "tb_zhao", cpb::OrderStatus::Paid);
    big.items[0].unit_price_fen = 30_000;
    big.payable_fen = 60_000;
    let customer = orders
        .record_order(big)
        .await
        .expect("order")
        .into_inner()
        .order
        .unwrap()
        .customer_id;
    let got = coupons_when(&mut front, &customer, 1).await;
    assert_eq!(got[0].issue_reason, "tier upgrade");
    assert_eq!(got[0].template_id, upgrade.template_id);

    // A bad review is a genuine review: it earns the coupon by default.
    reviewed(&mut orders, "TR-1", cpb::ReviewRating::Bad).await;
    let got = coupons_when(&mut front, &customer, 2).await;
    assert!(
        got.iter()
            .any(|c| c.issue_reason == "review" && c.template_id == review.template_id)
    );

    // Good reviews only: a bad one earns nothing, a good one does.
    ops.set_issue_rule(rule(pb::IssueTrigger::Review, &review.template_id, true))
        .await
        .expect("good reviews only");
    for (no, rating) in [
        ("TR-2", cpb::ReviewRating::Bad),
        ("TR-3", cpb::ReviewRating::Good),
    ] {
        orders
            .record_order(order(no, "tb_zhao", cpb::OrderStatus::Paid))
            .await
            .expect("order");
        reviewed(&mut orders, no, rating).await;
    }
    let got = coupons_when(&mut front, &customer, 3).await;
    // Events arrive in order: by the time the good review's coupon is
    // there, the bad review was applied and earned nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_after = coupons_when(&mut front, &customer, 3).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got_after.len(), 3, "the bad review earned no coupon");
    assert_eq!(
        got_after
            .iter()
            .filter(|c| c.issue_reason == "review")
            .count(),
        2
    );
    assert_eq!(
        got_after
            .iter()
            .filter(|c| c.issue_reason == "tier upgrade")
            .count(),
        1,
        "later orders lifted no tier"
    );
    suite.stop().await;
}

#[tokio::test]
async fn deliveries_that_meet_the_same_buyers_in_opposite_orders_do_not_deadlock() {
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{OrderPaid, OrderSnapshot, TierChanged};
    let suite = TestSuite::start("coupon-buyer-order").await;
    let inbox = huitou_tests::Inbox::of(&suite, "coupon");
    for round in 0..huitou_tests::race_rounds(10) {
        let buyers: Vec<String> = (0..60).map(|i| format!("c-{round}-{i:02}")).collect();
        // Order events from the customer service meet the buyers in one
        // order, tier changes from loyalty in the other, at the same time.
        let paid: Vec<_> = buyers
            .iter()
            .map(|c| {
                inbox.envelope(Payload::OrderPaid(OrderPaid {
                    order: Some(OrderSnapshot {
                        order_id: format!("id-{c}"),
                        order_no: format!("no-{c}"),
                        customer_id: c.clone(),
                        status: "PAID".into(),
                        payable_fen: 100,
                        goods_fen: 100,
                        paid_order_sequence: 1,
                        pay_time: Some(ago(5)),
                        ..Default::default()
                    }),
                }))
            })
            .collect();
        let tiers: Vec<_> = buyers
            .iter()
            .rev()
            .map(|c| {
                let mut e = inbox.envelope(Payload::TierChanged(TierChanged {
                    customer_id: c.clone(),
                    from_tier_code: String::new(),
                    to_tier_code: "gold".into(),
                    upgrade: true,
                    reason: "test".into(),
                }));
                e.source_service = "loyalty".into();
                e
            })
            .collect();
        let (a, b) = tokio::join!(inbox.deliver(paid), inbox.deliver(tiers));
        assert_eq!(
            (a.applied_count, b.applied_count),
            (60, 60),
            "round {round}"
        );
    }
    suite.stop().await;
}
