//! The loyalty service moved by customer-service events, as a storefront
//! and an operator use it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::time::Duration;

use huitou_loyalty::domain::DAY_MICROS;
use huitou_proto::customer::v1 as cpb;
use huitou_proto::loyalty::v1 as pb;
use huitou_tests::{Inbox, Loyalty, TestSuite, ago, bad_fields, reason};
use tonic::Code;

fn paid_order(order_no: &str, nick: &str, sku: &str, fen: i64) -> cpb::RecordOrderRequest {
    cpb::RecordOrderRequest {
        order_no: order_no.into(),
        buyer_nick: nick.into(),
        status: cpb::OrderStatus::Paid as i32,
        items: vec![cpb::OrderItem {
            sku: sku.into(),
            category: "童装".into(),
            quantity: 1,
            unit_price_fen: fen,
            title: String::new(),
        }],
        payable_fen: fen,
        create_time: Some(ago(3600)),
        pay_time: Some(ago(3500)),
        ..Default::default()
    }
}

fn nick(n: &str) -> pb::GetMemberRequest {
    pb::GetMemberRequest {
        buyer_nick: n.into(),
        ..Default::default()
    }
}

/// Waits until the member satisfies `done` (events arrive through the
/// relay a moment after the customer service commits).
async fn member_when(
    client: &mut Loyalty,
    who: &str,
    done: impl Fn(&pb::Member) -> bool,
) -> pb::Member {
    // Generous: a busy database (CI runs both backends) can delay the relay.
    for _ in 0..600 {
        if let Ok(r) = client.get_member(nick(who)).await
            && let Some(m) = r.into_inner().member
            && done(&m)
        {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("member {who} never reached the expected state");
}

/// A program whose points are available at once (no return window).
async fn immediate_program(ops: &mut Loyalty) {
    let mut program = ops
        .get_program(pb::GetProgramRequest {})
        .await
        .expect("program")
        .into_inner()
        .program
        .expect("program");
    program.return_window_days = 0;
    ops.update_program(pb::UpdateProgramRequest {
        program: Some(program),
        ..Default::default()
    })
    .await
    .expect("update program");
}

#[tokio::test]
async fn orders_earn_points_refunds_take_them_back_and_tiers_rise_at_once() {
    let suite = TestSuite::start("loyalty-flow").await;
    let mut orders = suite.customers(&suite.shop.storefront);
    let mut ops = suite.loyalty(&suite.shop.operator);
    let mut front = suite.loyalty(&suite.shop.storefront);
    immediate_program(&mut ops).await;

    // 600.00 元 paid: 600 points at REGULAR, and SENIOR (500 元) at once.
    orders
        .record_order(paid_order("L1", "tb_li", "SKU-1", 60_000))
        .await
        .expect("order");
    let m = member_when(&mut front, "tb_li", |m| m.balance_points > 0).await;
    assert_eq!(m.balance_points, 600);
    assert_eq!(m.available_points, 600);
    assert_eq!(m.tier_code, "SENIOR");
    assert_eq!(m.paid_order_count, 1);
    assert_eq!(m.window_spend_fen, 60_000);

    // A partial refund of a third takes back a third of the points.
    orders
        .refund_order(cpb::RefundOrderRequest {
            order_no: "L1".into(),
            refund_no: "R1".into(),
            amount_fen: 20_000,
            reason: "尺码不合适".into(),
            ..Default::default()
        })
        .await
        .expect("refund");
    let m = member_when(&mut front, "tb_li", |m| m.balance_points < 600).await;
    assert_eq!(m.balance_points, 400);
    // The tier stays until requalification, as the downgrade policy says.
    assert_eq!(m.tier_code, "SENIOR");

    // Every entry explains itself, and the balance is their sum.
    let ledger = front
        .list_ledger_entries(pb::ListLedgerEntriesRequest {
            buyer_nick: "tb_li".into(),
            ..Default::default()
        })
        .await
        .expect("ledger")
        .into_inner();
    assert_eq!(ledger.entries.len(), 2);
    assert_eq!(ledger.entries.iter().map(|e| e.points).sum::<i64>(), 400);
    assert_eq!(ledger.entries[0].kind, pb::EntryKind::RefundReversed as i32);
    assert!(ledger.entries[1].reason.contains("order L1 paid 600.00"));
    assert!(!ledger.entries[1].source_event_id.is_empty());
    let changes = front
        .list_tier_changes(pb::ListTierChangesRequest {
            buyer_nick: "tb_li".into(),
            ..Default::default()
        })
        .await
        .expect("tier changes")
        .into_inner();
    assert_eq!(changes.changes.len(), 1);
    assert_eq!(changes.changes[0].to_tier_code, "SENIOR");

    // Another shop sees nothing of this member.
    let mut other = suite.loyalty(&suite.other_shop.operator);
    let err = other.get_member(nick("tb_li")).await.expect_err("hidden");
    assert_eq!(err.code(), Code::NotFound);
    suite.stop().await;
}

#[tokio::test]
async fn member_prices_combine_tier_discount_and_the_old_customer_zone() {
    let suite = TestSuite::start("loyalty-prices").await;
    let mut orders = suite.customers(&suite.shop.storefront);
    let mut ops = suite.loyalty(&suite.shop.operator);
    let mut front = suite.loyalty(&suite.shop.storefront);
    ops.set_member_prices(pb::SetMemberPricesRequest {
        prices: vec![pb::MemberPrice {
            sku: "NEW-1".into(),
            price_fen: 990,
            returning_customers_only: true,
            label: "破零价".into(),
            min_tier_code: String::new(),
        }],
        ..Default::default()
    })
    .await
    .expect("zone prices");
    // A new buyer (customer created, nothing paid) sees list prices.
    suite
        .customers(&suite.shop.storefront)
        .upsert_customer(cpb::UpsertCustomerRequest {
            buyer_nick: "tb_new".into(),
            ..Default::default()
        })
        .await
        .expect("customer");
    member_when(&mut front, "tb_new", |_| true).await;
    let cart = |who: &str| pb::GetMemberPriceRequest {
        buyer_nick: who.into(),
        lines: vec![
            pb::CartLine {
                sku: "NEW-1".into(),
                quantity: 2,
                unit_price_fen: 5_900,
            },
            pb::CartLine {
                sku: "OLD-1".into(),
                quantity: 1,
                unit_price_fen: 10_000,
            },
        ],
        ..Default::default()
    };
    let priced = front
        .get_member_price(cart("tb_new"))
        .await
        .expect("price")
        .into_inner();
    assert_eq!(priced.tier_code, "REGULAR");
    assert_eq!(priced.member_total_fen, priced.list_total_fen);

    // A returning GOLD buyer gets the zone price and the 9折 tier price.
    orders
        .record_order(paid_order("P1", "tb_gold", "OLD-1", 250_000))
        .await
        .expect("order");
    member_when(&mut front, "tb_gold", |m| m.tier_code == "GOLD").await;
    let priced = front
        .get_member_price(cart("tb_gold"))
        .await
        .expect("price")
        .into_inner();
    assert_eq!(priced.lines[0].member_unit_price_fen, 990);
    assert_eq!(
        priced.lines[0].source,
        pb::PriceSource::MemberPriceList as i32
    );
    assert_eq!(priced.lines[0].label, "破零价");
    assert_eq!(priced.lines[1].member_unit_price_fen, 9_000);
    assert_eq!(priced.member_total_fen, 2 * 990 + 9_000);
    assert_eq!(priced.list_total_fen, 2 * 5_900 + 10_000);

    let err = front
        .get_member_price(pb::GetMemberPriceRequest {
            buyer_nick: "nobody".into(),
            ..cart("x")
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let mut bad = cart("tb_gold");
    bad.lines[1].unit_price_fen = -1;
    let err = front.get_member_price(bad).await.expect_err("negative");
    assert_eq!(bad_fields(&err), vec!["lines[1].unit_price_fen"]);
    suite.stop().await;
}

#[tokio::test]
async fn bad_programs_and_adjustments_are_refused_and_change_nothing() {
    let suite = TestSuite::start("loyalty-bad").await;
    let mut ops = suite.loyalty(&suite.shop.operator);
    let mut front = suite.loyalty(&suite.shop.storefront);
    let program = ops
        .get_program(pb::GetProgramRequest {})
        .await
        .expect("program")
        .into_inner()
        .program
        .expect("program");

    let mut overlapping = program.clone();
    overlapping.tiers[2].min_spend_fen = overlapping.tiers[1].min_spend_fen;
    let err = ops
        .update_program(pb::UpdateProgramRequest {
            program: Some(overlapping),
            ..Default::default()
        })
        .await
        .expect_err("overlap");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), vec!["program.tiers[2].min_spend_fen"]);

    let mut too_deep = program.clone();
    too_deep.tiers[3].price_per_mille = 600;
    let err = ops
        .update_program(pb::UpdateProgramRequest {
            program: Some(too_deep),
            ..Default::default()
        })
        .await
        .expect_err("floor");
    assert_eq!(bad_fields(&err), vec!["program.tiers[3].price_per_mille"]);

    let err = front
        .update_program(pb::UpdateProgramRequest {
            program: Some(program.clone()),
            ..Default::default()
        })
        .await
        .expect_err("storefront");
    assert_eq!(err.code(), Code::PermissionDenied);
    let stored = ops
        .get_program(pb::GetProgramRequest {})
        .await
        .expect("program")
        .into_inner();
    assert!(stored.update_time.is_none(), "nothing was stored");

    suite
        .customers(&suite.shop.storefront)
        .upsert_customer(cpb::UpsertCustomerRequest {
            buyer_nick: "tb_adj".into(),
            ..Default::default()
        })
        .await
        .expect("customer");
    member_when(&mut front, "tb_adj", |_| true).await;
    let err = ops
        .adjust_points(pb::AdjustPointsRequest {
            buyer_nick: "tb_adj".into(),
            points: 50,
            ..Default::default()
        })
        .await
        .expect_err("no reason");
    assert_eq!(bad_fields(&err), vec!["reason"]);
    let err = ops
        .adjust_points(pb::AdjustPointsRequest {
            buyer_nick: "tb_adj".into(),
            points: -1,
            reason: "纠错".into(),
            ..Default::default()
        })
        .await
        .expect_err("below zero");
    assert_eq!(reason(&err), "NOT_ENOUGH_POINTS");
    let err = ops
        .adjust_points(pb::AdjustPointsRequest {
            buyer_nick: "nobody".into(),
            points: 5,
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    // The same request id twice adds once.
    let grant = pb::AdjustPointsRequest {
        request_id: "7d0c4b8e-adjust-1".into(),
        buyer_nick: "tb_adj".into(),
        points: 100,
        reason: "客服补偿".into(),
        ..Default::default()
    };
    let first = ops.adjust_points(grant.clone()).await.expect("adjust");
    let again = ops.adjust_points(grant).await.expect("retry");
    assert_eq!(
        first.into_inner().entry.expect("entry").entry_id,
        again.into_inner().entry.expect("entry").entry_id
    );
    let m = front.get_member(nick("tb_adj")).await.expect("member");
    assert_eq!(m.into_inner().member.expect("member").balance_points, 100);
    suite.stop().await;
}

#[tokio::test]
async fn concurrent_exchanges_never_spend_more_than_the_balance() {
    let suite = TestSuite::start("loyalty-race").await;
    let mut ops = suite.loyalty(&suite.shop.operator);
    let mut front = suite.loyalty(&suite.shop.storefront);
    suite
        .customers(&suite.shop.storefront)
        .upsert_customer(cpb::UpsertCustomerRequest {
            buyer_nick: "tb_race".into(),
            ..Default::default()
        })
        .await
        .expect("customer");
    member_when(&mut front, "tb_race", |_| true).await;
    ops.adjust_points(pb::AdjustPointsRequest {
        buyer_nick: "tb_race".into(),
        points: 100,
        reason: "活动赠送".into(),
        ..Default::default()
    })
    .await
    .expect("grant");
    ops.upsert_reward(pb::UpsertRewardRequest {
        reward: Some(pb::Reward {
            code: "MUG".into(),
            name: "马克杯".into(),
            kind: pb::RewardKind::Gift as i32,
            points_cost: 10,
            active: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("reward");

    let mut calls = Vec::new();
    for i in 0..64 {
        let mut client = suite.loyalty(&suite.shop.storefront);
        calls.push(tokio::spawn(async move {
            client
                .exchange_reward(pb::ExchangeRewardRequest {
                    request_id: format!("race-{i:02}-0000"),
                    buyer_nick: "tb_race".into(),
                    reward_code: "MUG".into(),
                    ..Default::default()
                })
                .await
        }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.expect("task") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(reason(&e), "NOT_ENOUGH_POINTS", "{e:?}"),
        }
    }
    assert_eq!(ok, 10, "exactly the balance is spent");
    let m = front
        .get_member(nick("tb_race"))
        .await
        .expect("member")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(m.balance_points, 0);
    let tasks = ops
        .list_fulfilment_tasks(pb::ListFulfilmentTasksRequest::default())
        .await
        .expect("tasks")
        .into_inner();
    assert_eq!(tasks.tasks.len(), 10, "every exchange has its gift task");
    suite.stop().await;
}

#[tokio::test]
async fn the_review_run_expires_points_warns_and_drops_tiers_after_grace() {
    let suite = TestSuite::start("loyalty-nightly").await;
    let mut orders = suite.customers(&suite.shop.storefront);
    let mut ops = suite.loyalty(&suite.shop.operator);
    let mut front = suite.loyalty(&suite.shop.storefront);
    immediate_program(&mut ops).await;
    orders
        .record_order(paid_order("N1", "tb_night", "SKU-9", 250_000))
        .await
        .expect("order");
    let m = member_when(&mut front, "tb_night", |m| m.tier_code == "GOLD").await;
    assert_eq!(m.balance_points, 2_500);

    let config = suite.settings.loyalty.clone().expect("loyalty config");
    let loyalty = huitou_loyalty::LoyaltyService::open(&config, false)
        .await
        .expect("open");
    let now = huitou_storage::now_micros();
    let day = DAY_MICROS;

    // 340 days on: the points expire within 30 days, a warning goes out once.
    let r = loyalty.store.nightly(now + 340 * day).await.expect("run");
    assert_eq!(r.expiry_warnings, 1);
    let r = loyalty.store.nightly(now + 341 * day).await.expect("run");
    assert_eq!(r.expiry_warnings, 0, "warned once");

    // 366 days on: the points expired; the tier is due for requalification
    // (the order fell out of the window), so a drop is announced, not made.
    let r = loyalty.store.nightly(now + 366 * day).await.expect("run");
    assert_eq!(r.points_expired, 2_500);
    assert_eq!(r.drops_announced, 1);
    let m = front
        .get_member(nick("tb_night"))
        .await
        .expect("member")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(m.balance_points, 0);
    assert_eq!(m.tier_code, "GOLD");
    assert_eq!(m.tier_drop_code, "REGULAR");

    // After the 30-day grace the tier drops.
    let r = loyalty.store.nightly(now + 397 * day).await.expect("run");
    assert_eq!(r.tiers_dropped, 1);
    let m = front
        .get_member(nick("tb_night"))
        .await
        .expect("member")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(m.tier_code, "REGULAR");
    let ledger = front
        .list_ledger_entries(pb::ListLedgerEntriesRequest {
            buyer_nick: "tb_night".into(),
            ..Default::default()
        })
        .await
        .expect("ledger")
        .into_inner();
    assert_eq!(ledger.entries[0].kind, pb::EntryKind::Expired as i32);
    assert_eq!(ledger.entries.iter().map(|e| e.points).sum::<i64>(), 0);
    suite.stop().await;
}

#[tokio::test]
async fn a_redelivered_batch_changes_nothing_and_a_mixed_one_applies_only_the_new() {
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{CustomerCreated, OrderPaid, OrderSnapshot};

    let suite = TestSuite::start("loyalty-redeliver").await;
    let mut front = suite.loyalty(&suite.shop.storefront);
    let inbox = Inbox::of(&suite, "loyalty");
    let envelope = |payload| inbox.envelope(payload);
    let paid = |order: &str, fen: i64| {
        Payload::OrderPaid(OrderPaid {
            order: Some(OrderSnapshot {
                order_id: format!("id-{order}"),
                order_no: order.into(),
                customer_id: "cust-batch".into(),
                status: "PAID".into(),
                payable_fen: fen,
                goods_fen: fen,
                pay_time: Some(ago(5)),
                ..Default::default()
            }),
        })
    };
    let deliver = |events| inbox.deliver(events);
    let batch = vec![
        envelope(Payload::CustomerCreated(CustomerCreated {
            customer_id: "cust-batch".into(),
            buyer_nick: "tb_batch".into(),
        })),
        envelope(paid("B1", 10_000)),
        envelope(paid("B2", 50_000)),
    ];
    let first = deliver(batch.clone()).await;
    assert_eq!((first.applied_count, first.duplicate_count), (3, 0));
    let m = front
        .get_member(nick("tb_batch"))
        .await
        .expect("member")
        .into_inner()
        .member
        .expect("member");
    // 100 + 500 points (the second order at REGULAR, before its own upgrade).
    assert_eq!(m.balance_points, 600);
    assert_eq!(m.tier_code, "SENIOR");
    assert_eq!(m.paid_order_count, 2);

    let again = deliver(batch.clone()).await;
    assert_eq!((again.applied_count, again.duplicate_count), (0, 3));
    let mut mixed = batch.clone();
    mixed.push(envelope(paid("B3", 1_000)));
    // The same order paid again under a new event id changes nothing either.
    mixed.push(envelope(paid("B1", 10_000)));
    let answer = deliver(mixed).await;
    assert_eq!((answer.applied_count, answer.duplicate_count), (2, 3));
    let m = front
        .get_member(nick("tb_batch"))
        .await
        .expect("member")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(m.balance_points, 600 + 10 * 110 / 100);
    assert_eq!(m.paid_order_count, 3);
    let ledger = front
        .list_ledger_entries(pb::ListLedgerEntriesRequest {
            buyer_nick: "tb_batch".into(),
            ..Default::default()
        })
        .await
        .expect("ledger")
        .into_inner();
    assert_eq!(ledger.entries.len(), 3);
    assert_eq!(
        ledger.entries.iter().map(|e| e.points).sum::<i64>(),
        m.balance_points
    );
    suite.stop().await;
}

/// The relay retries a failed delivery after later events have gone, so
/// a refund or a review can reach loyalty before the order's payment. The
/// member ends where in-order delivery leaves another: the points earned,
/// the refunded share taken back, the review bonus given, and the late
/// payment changes nothing.
#[tokio::test]
async fn a_refund_or_review_before_its_payment_ends_as_in_order() {
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{
        CustomerCreated, OrderPaid, OrderRefunded, OrderReviewed, OrderSnapshot,
    };

    let suite = TestSuite::start("loyalty-reordered").await;
    let mut front = suite.loyalty(&suite.shop.storefront);
    let inbox = Inbox::of(&suite, "loyalty");
    let snapshot = |customer: &str, order: &str, fen: i64, refunded: i64| OrderSnapshot {
        order_id: format!("id-{customer}-{order}"),
        order_no: format!("{customer}-{order}"),
        customer_id: customer.into(),
        status: if refunded > 0 { "REFUNDED" } else { "PAID" }.into(),
        payable_fen: fen,
        goods_fen: fen,
        refunded_fen: refunded,
        pay_time: Some(ago(60)),
        ..Default::default()
    };
    // Per customer: created; P paid 100 元, then 40 元 refunded; Q paid
    // 30 元, then reviewed; S paid 20 元, reviewed, then wholly refunded.
    let events = |customer: &str| {
        let created = inbox.envelope(Payload::CustomerCreated(CustomerCreated {
            customer_id: customer.into(),
            buyer_nick: format!("nick-{customer}"),
        }));
        let paid_p = inbox.envelope(Payload::OrderPaid(OrderPaid {
            order: Some(snapshot(customer, "P", 10_000, 0)),
        }));
        let paid_q = inbox.envelope(Payload::OrderPaid(OrderPaid {
            order: Some(snapshot(customer, "Q", 3_000, 0)),
        }));
        let refund_p = inbox.envelope(Payload::OrderRefunded(OrderRefunded {
            order: Some(snapshot(customer, "P", 10_000, 4_000)),
            refund_no: "R1".into(),
            amount_fen: 4_000,
            ..Default::default()
        }));
        let review_q = inbox.envelope(Payload::OrderReviewed(OrderReviewed {
            order: Some(snapshot(customer, "Q", 3_000, 0)),
            rating: "GOOD".into(),
            text_length: 12,
        }));
        let paid_s = inbox.envelope(Payload::OrderPaid(OrderPaid {
            order: Some(snapshot(customer, "S", 2_000, 0)),
        }));
        let review_s = inbox.envelope(Payload::OrderReviewed(OrderReviewed {
            order: Some(snapshot(customer, "S", 2_000, 0)),
            rating: "GOOD".into(),
            text_length: 8,
        }));
        let refund_s = inbox.envelope(Payload::OrderRefunded(OrderRefunded {
            order: Some(snapshot(customer, "S", 2_000, 2_000)),
            refund_no: "R2".into(),
            amount_fen: 2_000,
            ..Default::default()
        }));
        [
            created, paid_p, paid_q, refund_p, review_q, paid_s, review_s, refund_s,
        ]
    };
    let answer = inbox.deliver(events("in-order").to_vec()).await;
    assert_eq!(answer.applied_count, 8);
    let [
        created,
        paid_p,
        paid_q,
        refund_p,
        review_q,
        paid_s,
        review_s,
        refund_s,
    ] = events("reordered");
    let early = inbox
        .deliver(vec![created, refund_p, review_q, refund_s, review_s])
        .await;
    assert_eq!(early.applied_count, 5);
    let late = inbox.deliver(vec![paid_p, paid_q, paid_s]).await;
    assert_eq!((late.applied_count, late.duplicate_count), (3, 0));

    let mut standing = Vec::new();
    for who in ["in-order", "reordered"] {
        let m = front
            .get_member(nick(&format!("nick-{who}")))
            .await
            .expect("member")
            .into_inner()
            .member
            .expect("member");
        let ledger = front
            .list_ledger_entries(pb::ListLedgerEntriesRequest {
                buyer_nick: format!("nick-{who}"),
                ..Default::default()
            })
            .await
            .expect("ledger")
            .into_inner();
        let mut kinds: Vec<(i32, i64)> =
            ledger.entries.iter().map(|e| (e.kind, e.points)).collect();
        kinds.sort();
        assert_eq!(
            ledger.entries.iter().map(|e| e.points).sum::<i64>(),
            m.balance_points,
            "{who}"
        );
        standing.push((m.balance_points, m.paid_order_count, m.tier_code, kinds));
    }
    // 100 + 30 earned, 40 of the 100 taken back, 20 for Q's review; S's
    // 20 earned and taken back, its review's 20 kept.
    assert_eq!(standing[0].0, 100 + 30 - 40 + 20 + 20);
    assert_eq!(standing[0], standing[1]);
    suite.stop().await;
}

#[tokio::test]
async fn check_ins_referrals_rewards_and_gift_tasks() {
    let suite = TestSuite::start("loyalty-extras").await;
    let mut orders = suite.customers(&suite.shop.storefront);
    let mut ops = suite.loyalty(&suite.shop.operator);
    let mut front = suite.loyalty(&suite.shop.storefront);
    immediate_program(&mut ops).await;
    for who in ["tb_ref", "tb_friend"] {
        orders
            .upsert_customer(cpb::UpsertCustomerRequest {
                buyer_nick: who.into(),
                ..Default::default()
            })
            .await
            .expect("customer");
    }
    let referrer = member_when(&mut front, "tb_ref", |_| true).await;
    let friend = member_when(&mut front, "tb_friend", |_| true).await;

    // The daily check-in pays once per day.
    let first = front
        .check_in(pb::CheckInRequest {
            buyer_nick: "tb_ref".into(),
            ..Default::default()
        })
        .await
        .expect("check in")
        .into_inner();
    assert_eq!((first.points, first.already_checked_in), (5, false));
    let again = front
        .check_in(pb::CheckInRequest {
            buyer_nick: "tb_ref".into(),
            ..Default::default()
        })
        .await
        .expect("check in")
        .into_inner();
    assert_eq!((again.points, again.already_checked_in), (0, true));
    assert_eq!(again.member.expect("member").balance_points, 5);

    // A referral pays once the friend has paid, and once per friend.
    let referral = || pb::RecordReferralRequest {
        referrer_customer_id: referrer.customer_id.clone(),
        friend_customer_id: friend.customer_id.clone(),
        ..Default::default()
    };
    let err = front
        .record_referral(referral())
        .await
        .expect_err("friend has not paid");
    assert_eq!(reason(&err), "FRIEND_HAS_NOT_PAID");
    orders
        .record_order(paid_order("F1", "tb_friend", "SKU-1", 5_000))
        .await
        .expect("order");
    member_when(&mut front, "tb_friend", |m| m.paid_order_count == 1).await;
    let paid = front.record_referral(referral()).await.expect("referral");
    assert_eq!(paid.into_inner().points, 100);
    let twice = front.record_referral(referral()).await.expect("referral");
    assert_eq!(twice.into_inner().points, 0);
    let err = front
        .record_referral(pb::RecordReferralRequest {
            friend_customer_id: referrer.customer_id.clone(),
            ..referral()
        })
        .await
        .expect_err("self");
    assert_eq!(bad_fields(&err), vec!["friend_customer_id"]);

    // Rewards are checked, and a gift's task is completed once.
    let err = ops
        .upsert_reward(pb::UpsertRewardRequest {
            reward: Some(pb::Reward {
                code: "card".into(),
                name: "包邮卡".into(),
                kind: pb::RewardKind::FreeShippingCard as i32,
                points_cost: 0,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad reward");
    assert_eq!(
        bad_fields(&err),
        vec![
            "reward.code",
            "reward.points_cost",
            "reward.free_shipping_orders"
        ]
    );
    ops.upsert_reward(pb::UpsertRewardRequest {
        reward: Some(pb::Reward {
            code: "TOTE".into(),
            name: "帆布袋".into(),
            kind: pb::RewardKind::Gift as i32,
            points_cost: 50,
            stock: Some(1),
            active: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("reward");
    let exchange = |id: &str| pb::ExchangeRewardRequest {
        request_id: id.into(),
        buyer_nick: "tb_ref".into(),
        reward_code: "TOTE".into(),
        ..Default::default()
    };
    let got = front
        .exchange_reward(exchange("tote-0001"))
        .await
        .expect("exchange")
        .into_inner();
    assert_eq!(got.member.expect("member").balance_points, 5 + 100 - 50);
    let err = front
        .exchange_reward(exchange("tote-0002"))
        .await
        .expect_err("out of stock");
    assert_eq!(reason(&err), "REWARD_OUT_OF_STOCK");
    let err = front
        .complete_fulfilment_task(pb::CompleteFulfilmentTaskRequest {
            task_id: got.fulfilment_task_id.clone(),
            carrier: "顺丰".into(),
            tracking_number: "SF1".into(),
        })
        .await
        .expect_err("storefront");
    assert_eq!(err.code(), Code::PermissionDenied);
    let done = ops
        .complete_fulfilment_task(pb::CompleteFulfilmentTaskRequest {
            task_id: got.fulfilment_task_id.clone(),
            carrier: "顺丰".into(),
            tracking_number: "SF1".into(),
        })
        .await
        .expect("complete")
        .into_inner()
        .task
        .expect("task");
    assert!(done.done);
    let open = ops
        .list_fulfilment_tasks(pb::ListFulfilmentTasksRequest::default())
        .await
        .expect("tasks")
        .into_inner();
    assert!(open.tasks.is_empty(), "shipped tasks leave the open list");

    // The ledger pages: one entry per page, every entry once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = front
            .list_ledger_entries(pb::ListLedgerEntriesRequest {
                buyer_nick: "tb_ref".into(),
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.entries.into_iter().map(|e| e.points));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec![-50, 100, 5]);
    suite.stop().await;
}

#[tokio::test]
async fn only_huitou_services_may_check_api_keys() {
    use huitou_proto::customer::v1::shop_service_client::ShopServiceClient;
    let suite = TestSuite::start("verify-key").await;
    let mut shops = ShopServiceClient::with_interceptor(
        suite.channel(),
        huitou_tests::bearer(&suite.shop.admin),
    );
    let err = shops
        .verify_api_key(cpb::VerifyApiKeyRequest {
            key_id: "x".into(),
            secret_sha256: "0".repeat(64),
        })
        .await
        .expect_err("shop keys cannot check keys");
    assert_eq!(err.code(), Code::PermissionDenied);
    suite.stop().await;
}

/// Profile events the relay delivers late: a birthday sent before the
/// member's `customer.created` still earns the birthday-month bonus, an
/// older profile delivered after a newer one does not undo it, and an
/// erasure delivered before the creation keeps the real nick from coming
/// back.
#[tokio::test]
async fn a_birthday_or_an_erasure_before_the_customers_creation_is_kept() {
    use chrono::Datelike;
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{
        CustomerCreated, CustomerErased, CustomerUpdated, OrderPaid, OrderSnapshot,
    };

    let suite = TestSuite::start("loyalty-late-profile").await;
    let mut front = suite.loyalty(&suite.shop.operator);
    let inbox = Inbox::of(&suite, "loyalty");
    // This month in the shop's time zone (Asia/Shanghai, UTC+8).
    let month = (chrono::Utc::now() + chrono::Duration::hours(8)).month() as i32;
    let created = |customer: &str| {
        inbox.envelope_at(
            30,
            Payload::CustomerCreated(CustomerCreated {
                customer_id: customer.into(),
                buyer_nick: format!("tb_{customer}"),
            }),
        )
    };
    let birthday = |customer: &str| {
        inbox.envelope_at(
            20,
            Payload::CustomerUpdated(CustomerUpdated {
                customer_id: customer.into(),
                changed_fields: vec!["birthday".into()],
                birthday_month: month,
                birthday_day: 1,
                ..Default::default()
            }),
        )
    };
    let paid = |customer: &str| {
        inbox.envelope_at(
            10,
            Payload::OrderPaid(OrderPaid {
                order: Some(OrderSnapshot {
                    order_id: format!("id-{customer}"),
                    order_no: format!("B-{customer}"),
                    customer_id: customer.into(),
                    status: "PAID".into(),
                    payable_fen: 10_000,
                    goods_fen: 10_000,
                    pay_time: Some(ago(10)),
                    ..Default::default()
                }),
            }),
        )
    };
    inbox
        .deliver(vec![
            created("inorder"),
            birthday("inorder"),
            paid("inorder"),
        ])
        .await;
    for event in [birthday("late"), created("late"), paid("late")] {
        assert_eq!(inbox.deliver(vec![event]).await.applied_count, 1);
    }
    // A birthday corrected to this month, then the older profile (with the
    // month it replaced) delivered late: the correction stands.
    let older = inbox.envelope_at(
        25,
        Payload::CustomerUpdated(CustomerUpdated {
            customer_id: "corrected".into(),
            changed_fields: vec!["birthday".into()],
            birthday_month: month % 12 + 1,
            birthday_day: 1,
            ..Default::default()
        }),
    );
    for event in [
        created("corrected"),
        birthday("corrected"),
        older,
        paid("corrected"),
    ] {
        assert_eq!(inbox.deliver(vec![event]).await.applied_count, 1);
    }
    for who in ["inorder", "late", "corrected"] {
        let ledger = front
            .list_ledger_entries(pb::ListLedgerEntriesRequest {
                buyer_nick: format!("tb_{who}"),
                ..Default::default()
            })
            .await
            .expect("ledger")
            .into_inner();
        assert_eq!(ledger.entries.len(), 1, "{who}");
        assert!(
            ledger.entries[0].reason.contains("birthday month"),
            "{who}: {:?}",
            ledger.entries[0].reason
        );
    }

    // Erased, and only then created: the nick stays the pseudonym.
    inbox
        .deliver(vec![inbox.envelope_at(
            5,
            Payload::CustomerErased(CustomerErased {
                customer_id: "gone".into(),
            }),
        )])
        .await;
    inbox.deliver(vec![created("gone")]).await;
    let by_nick = front.get_member(nick("tb_gone")).await.unwrap_err();
    assert_eq!(by_nick.code(), Code::NotFound);
    let member = front
        .get_member(pb::GetMemberRequest {
            customer_id: "gone".into(),
            ..Default::default()
        })
        .await
        .expect("member by id")
        .into_inner()
        .member
        .expect("member");
    assert_eq!(member.buyer_nick, "erased:gone");
    suite.stop().await;
}

/// Deliveries from several producers (and replicas of one) reach loyalty
/// at once. Two that meet the same members in opposite orders, or a
/// refund that would lock its order before its member while a payment of
/// the same member holds the member, must not deadlock (decision 0014).
#[tokio::test]
async fn deliveries_that_meet_the_same_members_in_opposite_orders_do_not_deadlock() {
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{
        CustomerCreated, CustomerUpdated, OrderPaid, OrderRefunded, OrderReviewed, OrderSnapshot,
    };

    let suite = TestSuite::start("loyalty-lock-order").await;
    let inbox = Inbox::of(&suite, "loyalty");
    let snapshot = |customer: &str, order: &str, refunded: i64| OrderSnapshot {
        order_id: format!("id-{customer}-{order}"),
        order_no: format!("{customer}-{order}"),
        customer_id: customer.into(),
        status: if refunded > 0 { "REFUNDED" } else { "PAID" }.into(),
        payable_fen: 10_000,
        goods_fen: 10_000,
        refunded_fen: refunded,
        pay_time: Some(ago(60)),
        ..Default::default()
    };
    for round in 0..huitou_tests::race_rounds(10) {
        let members: Vec<String> = (0..40).map(|i| format!("m-{round}-{i:02}")).collect();
        // Each member exists and has a paid order X.
        let mut setup = Vec::new();
        for m in &members {
            setup.push(inbox.envelope(Payload::CustomerCreated(CustomerCreated {
                customer_id: m.clone(),
                buyer_nick: format!("nick-{m}"),
            })));
            setup.push(inbox.envelope(Payload::OrderPaid(OrderPaid {
                order: Some(snapshot(m, "X", 0)),
            })));
        }
        assert_eq!(inbox.deliver(setup).await.applied_count, 80);

        // Payments meet the members in one order, profile changes in the
        // other.
        let paid: Vec<_> = members
            .iter()
            .map(|m| {
                inbox.envelope(Payload::OrderPaid(OrderPaid {
                    order: Some(snapshot(m, "Y", 0)),
                }))
            })
            .collect();
        let updated: Vec<_> = members
            .iter()
            .rev()
            .map(|m| {
                inbox.envelope(Payload::CustomerUpdated(CustomerUpdated {
                    customer_id: m.clone(),
                    birthday_month: 5,
                    ..Default::default()
                }))
            })
            .collect();
        let (a, b) = tokio::join!(inbox.deliver(paid), inbox.deliver(updated));
        assert_eq!(
            (a.applied_count, b.applied_count),
            (40, 40),
            "round {round}"
        );

        // A review of X beside a payment of Z and a refund of X for the
        // same members: the refund's delivery holds each member when it
        // reaches X.
        let reviews: Vec<_> = members
            .iter()
            .map(|m| {
                inbox.envelope(Payload::OrderReviewed(OrderReviewed {
                    order: Some(snapshot(m, "X", 0)),
                    rating: "GOOD".into(),
                    text_length: 10,
                }))
            })
            .collect();
        let mut refunds = Vec::new();
        for m in &members {
            refunds.push(inbox.envelope(Payload::OrderPaid(OrderPaid {
                order: Some(snapshot(m, "Z", 0)),
            })));
            refunds.push(inbox.envelope(Payload::OrderRefunded(OrderRefunded {
                order: Some(snapshot(m, "X", 5_000)),
                refund_no: "R1".into(),
                amount_fen: 5_000,
                ..Default::default()
            })));
        }
        let (a, b) = tokio::join!(inbox.deliver(reviews), inbox.deliver(refunds));
        assert_eq!(
            (a.applied_count, b.applied_count),
            (40, 80),
            "round {round}"
        );
    }
    suite.stop().await;
}
