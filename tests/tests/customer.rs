//! The customer service as a storefront and an operator use it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use huitou_proto::customer::v1 as pb;
use huitou_tests::{TestSuite, ago, bad_fields, reason};
use tonic::Code;

fn item(sku: &str, category: &str, quantity: i64, unit_price_fen: i64) -> pb::OrderItem {
    pb::OrderItem {
        sku: sku.into(),
        category: category.into(),
        quantity,
        unit_price_fen,
        title: String::new(),
    }
}

fn paid_order(order_no: &str, nick: &str, items: Vec<pb::OrderItem>) -> pb::RecordOrderRequest {
    let payable = items.iter().map(|i| i.quantity * i.unit_price_fen).sum();
    pb::RecordOrderRequest {
        order_no: order_no.into(),
        buyer_nick: nick.into(),
        status: pb::OrderStatus::Paid as i32,
        items,
        payable_fen: payable,
        create_time: Some(ago(3600)),
        pay_time: Some(ago(3500)),
        ..Default::default()
    }
}

#[tokio::test]
async fn walkthrough_profile_orders_reveal_and_audit() {
    let suite = TestSuite::start("walkthrough").await;
    let mut store = suite.customers(&suite.shop.storefront);
    let mut ops = suite.customers(&suite.shop.operator);

    let created = store
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "tb_alice".into(),
            name: Some("张三".into()),
            phone: Some("13812345678".into()),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert!(created.created);
    let customer = created.customer.expect("customer");
    assert_eq!(customer.phone, "138****5678");
    assert_eq!(customer.name, "张*");

    let updated = store
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "tb_alice".into(),
            email: Some("Alice@Example.com".into()),
            region: Some("浙江 杭州".into()),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert!(!updated.created);
    let c = updated.customer.expect("customer");
    assert_eq!(
        (c.email.as_str(), c.region.as_str(), c.phone.as_str()),
        ("a***@example.com", "浙江 杭州", "138****5678")
    );

    // An order through its lifecycle.
    let recorded = store
        .record_order(pb::RecordOrderRequest {
            order_no: "T1001".into(),
            buyer_nick: "tb_alice".into(),
            status: pb::OrderStatus::Created as i32,
            items: vec![
                item("SKU-1", "童装", 2, 9_900),
                item("SKU-2", "玩具", 1, 5_000),
            ],
            discount_fen: 1_000,
            shipping_fen: 800,
            payable_fen: 19_800 + 5_000 - 1_000 + 800,
            create_time: Some(ago(7200)),
            ..Default::default()
        })
        .await
        .expect("record")
        .into_inner();
    assert!(recorded.created);
    let before_pay = store
        .get_customer(pb::GetCustomerRequest {
            buyer_nick: "tb_alice".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .customer
        .expect("customer");
    assert_eq!(
        before_pay.stats.expect("stats").order_count,
        0,
        "unpaid orders do not count"
    );

    store
        .pay_order(pb::PayOrderRequest {
            order_no: "T1001".into(),
            pay_time: Some(ago(7000)),
            ..Default::default()
        })
        .await
        .expect("pay");
    store
        .ship_order(pb::ShipOrderRequest {
            order_no: "T1001".into(),
            shipment: Some(pb::Shipment {
                carrier: "顺丰".into(),
                tracking_number: "SF123456".into(),
            }),
            ..Default::default()
        })
        .await
        .expect("ship");
    store
        .confirm_order_received(pb::ConfirmOrderReceivedRequest {
            order_no: "T1001".into(),
            ..Default::default()
        })
        .await
        .expect("receive");
    let reviewed = store
        .review_order(pb::ReviewOrderRequest {
            order_no: "T1001".into(),
            rating: pb::ReviewRating::Good as i32,
            text: "质量很好".into(),
            ..Default::default()
        })
        .await
        .expect("review")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(reviewed.status, pb::OrderStatus::Reviewed as i32);
    let refunded = store
        .refund_order(pb::RefundOrderRequest {
            order_no: "T1001".into(),
            refund_no: "R1".into(),
            amount_fen: 5_000,
            reason: "玩具少件".into(),
            ..Default::default()
        })
        .await
        .expect("refund")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(
        (refunded.refunded_fen, refunded.status),
        (5_000, pb::OrderStatus::Reviewed as i32)
    );

    store
        .record_order(paid_order(
            "T1002",
            "tb_alice",
            vec![item("SKU-1", "童装", 1, 9_900)],
        ))
        .await
        .expect("second order");

    let after = store
        .get_customer(pb::GetCustomerRequest {
            customer_id: customer.id.clone(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .customer
        .expect("customer");
    let stats = after.stats.expect("stats");
    assert_eq!(stats.order_count, 2);
    assert_eq!(stats.item_count, 4);
    assert_eq!(stats.spent_fen, 24_600 - 5_000 + 9_900);
    assert_eq!(stats.refunded_fen, 5_000);
    assert_eq!(stats.categories[0].category, "童装");
    assert_eq!(stats.categories[0].quantity, 3);
    assert!(
        stats.first_order_time.expect("first").seconds
            < stats.last_order_time.expect("last").seconds
    );

    // Find by phone, in either form; reveal as an operator; see the audit.
    for phone in ["13812345678", "+86 138 1234 5678"] {
        let found = store
            .find_customer_by_phone(pb::FindCustomerByPhoneRequest {
                phone: phone.into(),
            })
            .await
            .expect("find")
            .into_inner()
            .customer
            .expect("customer");
        assert_eq!(found.id, customer.id);
    }
    let revealed = ops
        .reveal_contact(pb::RevealContactRequest {
            customer_id: customer.id.clone(),
            field: pb::ContactField::Phone as i32,
            reason: "客户来电要求修改收货信息".into(),
        })
        .await
        .expect("reveal")
        .into_inner();
    assert_eq!(revealed.value, "13812345678");
    let audit = ops
        .list_audit_entries(pb::ListAuditEntriesRequest {
            customer_id: customer.id.clone(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner();
    assert_eq!(audit.entries.len(), 1);
    let entry = &audit.entries[0];
    assert_eq!(entry.id, revealed.audit_entry_id);
    assert_eq!(entry.field, pb::ContactField::Phone as i32);
    assert_eq!(entry.actor_role, "operator");
    assert_eq!(entry.reason, "客户来电要求修改收货信息");

    let orders = store
        .list_orders(pb::ListOrdersRequest {
            customer_id: customer.id.clone(),
            ..Default::default()
        })
        .await
        .expect("orders")
        .into_inner();
    assert_eq!(
        orders
            .orders
            .iter()
            .map(|o| o.order_no.as_str())
            .collect::<Vec<_>>(),
        vec!["T1002", "T1001"]
    );
    suite.stop().await;
}

#[tokio::test]
async fn shops_never_see_each_other() {
    let suite = TestSuite::start("tenancy").await;
    let mut mine = suite.customers(&suite.shop.operator);
    let mut theirs = suite.customers(&suite.other_shop.operator);
    let customer = mine
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "shared_nick".into(),
            phone: Some("13900001111".into()),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .customer
        .expect("customer");
    mine.record_order(paid_order(
        "T-1",
        "shared_nick",
        vec![item("S", "c", 1, 100)],
    ))
    .await
    .expect("order");

    let by_id = theirs
        .get_customer(pb::GetCustomerRequest {
            customer_id: customer.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("other shop");
    assert_eq!(by_id.code(), Code::NotFound);
    let by_phone = theirs
        .find_customer_by_phone(pb::FindCustomerByPhoneRequest {
            phone: "13900001111".into(),
        })
        .await
        .expect_err("other shop");
    assert_eq!(by_phone.code(), Code::NotFound);
    let order = theirs
        .get_order(pb::GetOrderRequest {
            order_no: "T-1".into(),
            ..Default::default()
        })
        .await
        .expect_err("other shop");
    assert_eq!(order.code(), Code::NotFound);
    let reveal = theirs
        .reveal_contact(pb::RevealContactRequest {
            customer_id: customer.id.clone(),
            field: pb::ContactField::Phone as i32,
            reason: "trying to peek".into(),
        })
        .await
        .expect_err("other shop");
    assert_eq!(reveal.code(), Code::NotFound);
    let listed = theirs
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.customers.is_empty());
    // The same nick in the other shop is a different customer.
    let theirs_created = theirs
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "shared_nick".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert!(theirs_created.created);
    assert_ne!(theirs_created.customer.expect("customer").id, customer.id);
    suite.stop().await;
}

#[tokio::test]
async fn roles_limit_what_a_key_may_do() {
    let suite = TestSuite::start("roles").await;
    let mut storefront = suite.customers(&suite.shop.storefront);
    let customer = storefront
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "b1".into(),
            phone: Some("13700002222".into()),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .customer
        .expect("customer");
    let denied = storefront
        .reveal_contact(pb::RevealContactRequest {
            customer_id: customer.id.clone(),
            field: pb::ContactField::Phone as i32,
            reason: "just curious".into(),
        })
        .await
        .expect_err("storefront cannot reveal");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let erase = storefront
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: customer.id.clone(),
            reason: "buyer asked".into(),
            ..Default::default()
        })
        .await
        .expect_err("storefront cannot erase");
    assert_eq!(erase.code(), Code::PermissionDenied);
    let settings = suite
        .shops(&suite.shop.storefront)
        .update_shop(pb::UpdateShopRequest {
            name: Some("新名字".into()),
            ..Default::default()
        })
        .await
        .expect_err("storefront cannot change settings");
    assert_eq!(settings.code(), Code::PermissionDenied);
    let keys = suite
        .shops(&suite.shop.operator)
        .create_api_key(pb::CreateApiKeyRequest {
            role: pb::Role::Admin as i32,
            label: "sneaky".into(),
        })
        .await
        .expect_err("operators cannot mint keys");
    assert_eq!(keys.code(), Code::PermissionDenied);

    // No key, a malformed key, an unknown key: UNAUTHENTICATED.
    for key in [
        "",
        "not-a-key",
        "hk_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    ] {
        let status = suite
            .customers(key)
            .list_customers(pb::ListCustomersRequest::default())
            .await
            .expect_err("unauthenticated");
        assert_eq!(status.code(), Code::Unauthenticated, "{key}");
    }

    // An admin mints a key, and revoking it stops it at once on this replica.
    let mut admin = suite.shops(&suite.shop.admin);
    let minted = admin
        .create_api_key(pb::CreateApiKeyRequest {
            role: pb::Role::Storefront as i32,
            label: "pos".into(),
        })
        .await
        .expect("mint")
        .into_inner();
    let mut fresh = suite.customers(&minted.api_key);
    fresh
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .expect("works");
    admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: minted.key.expect("key").id,
        })
        .await
        .expect("revoke");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let revoked = fresh
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(revoked.code(), Code::Unauthenticated);

    // Operators change settings; the time zone is checked.
    let mut ops = suite.shops(&suite.shop.operator);
    let bad_tz = ops
        .update_shop(pb::UpdateShopRequest {
            time_zone: Some("Mars/Olympus".into()),
            ..Default::default()
        })
        .await
        .expect_err("bad zone");
    assert_eq!(bad_fields(&bad_tz), vec!["time_zone"]);
    let shop = ops
        .update_shop(pb::UpdateShopRequest {
            time_zone: Some("Asia/Urumqi".into()),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .shop
        .expect("shop");
    assert_eq!(shop.time_zone, "Asia/Urumqi");
    suite.stop().await;
}

#[tokio::test]
async fn bad_input_names_every_field_and_writes_nothing() {
    let suite = TestSuite::start("badinput").await;
    let mut client = suite.customers(&suite.shop.storefront);
    let status = client
        .record_order(pb::RecordOrderRequest {
            order_no: "T-BAD".into(),
            buyer_nick: "new_buyer".into(),
            status: pb::OrderStatus::Unspecified as i32,
            items: vec![item("S1", "c", 0, -5)],
            discount_fen: -1,
            payable_fen: 12345,
            create_time: Some(ago(-86_400)),
            receiver: Some(pb::ContactDetails {
                phone: "12345".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = bad_fields(&status);
    for f in [
        "status",
        "items[0].quantity",
        "items[0].unit_price_fen",
        "discount_fen",
        "payable_fen",
        "create_time",
        "receiver.phone",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
    }
    let missing = client
        .get_customer(pb::GetCustomerRequest {
            buyer_nick: "new_buyer".into(),
            ..Default::default()
        })
        .await
        .expect_err("nothing written");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(reason(&missing), "CUSTOMER_NOT_FOUND");

    let bad_profile = client
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "x".into(),
            phone: Some("02112345678".into()),
            email: Some("not-an-email".into()),
            wechat_id: Some("1bad".into()),
            birthday: Some(pb::Birthday {
                year: 2023,
                month: 2,
                day: 29,
            }),
            ..Default::default()
        })
        .await
        .expect_err("invalid profile");
    let fields = bad_fields(&bad_profile);
    for f in ["phone", "email", "wechat_id", "birthday"] {
        assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
    }
    let page = client
        .list_customers(pb::ListCustomersRequest {
            page_size: 10_000,
            ..Default::default()
        })
        .await
        .expect_err("page size");
    assert_eq!(bad_fields(&page), vec!["page_size"]);
    suite.stop().await;
}

#[tokio::test]
async fn request_ids_replay_the_first_answer_and_refuse_reuse() {
    let suite = TestSuite::start("idempotency").await;
    let mut client = suite.customers(&suite.shop.storefront);
    let request = pb::UpsertCustomerRequest {
        request_id: "req-1".into(),
        buyer_nick: "repeat".into(),
        region: Some("上海".into()),
        ..Default::default()
    };
    let first = client
        .upsert_customer(request.clone())
        .await
        .expect("first")
        .into_inner();
    let second = client
        .upsert_customer(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, second, "a retry gets the first answer");
    assert!(second.created, "the replayed answer still says created");

    let reused = client
        .upsert_customer(pb::UpsertCustomerRequest {
            region: Some("北京".into()),
            ..request
        })
        .await
        .expect_err("reuse");
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert_eq!(reason(&reused), "REQUEST_ID_REUSED");
    let now = client
        .get_customer(pb::GetCustomerRequest {
            buyer_nick: "repeat".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .customer
        .expect("customer");
    assert_eq!(now.region, "上海", "the refused request changed nothing");

    // Orders are idempotent on their number even without a request id.
    let order = paid_order("T-IDEM", "repeat", vec![item("S", "c", 1, 1_000)]);
    let a = client
        .record_order(order.clone())
        .await
        .expect("record")
        .into_inner();
    let b = client
        .record_order(order.clone())
        .await
        .expect("again")
        .into_inner();
    assert!(a.created && !b.created);
    assert_eq!(a.order, b.order);
    let conflict = client
        .record_order(pb::RecordOrderRequest {
            items: vec![item("S", "c", 2, 1_000)],
            payable_fen: 2_000,
            ..order
        })
        .await
        .expect_err("different contents");
    assert_eq!(conflict.code(), Code::AlreadyExists);
    let stats = client
        .get_customer(pb::GetCustomerRequest {
            buyer_nick: "repeat".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .customer
        .expect("customer")
        .stats
        .expect("stats");
    assert_eq!((stats.order_count, stats.spent_fen), (1, 1_000));

    // A refund retried by number changes nothing the second time.
    for _ in 0..2 {
        client
            .refund_order(pb::RefundOrderRequest {
                order_no: "T-IDEM".into(),
                refund_no: "RF-1".into(),
                amount_fen: 400,
                ..Default::default()
            })
            .await
            .expect("refund");
    }
    let order = client
        .get_order(pb::GetOrderRequest {
            order_no: "T-IDEM".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(order.refunded_fen, 400);
    suite.stop().await;
}

#[tokio::test]
async fn impossible_moves_are_failed_precondition() {
    let suite = TestSuite::start("transitions").await;
    let mut client = suite.customers(&suite.shop.storefront);
    client
        .record_order(pb::RecordOrderRequest {
            order_no: "T-NEW".into(),
            buyer_nick: "b".into(),
            status: pb::OrderStatus::Created as i32,
            items: vec![item("S", "c", 1, 100)],
            payable_fen: 100,
            create_time: Some(ago(100)),
            ..Default::default()
        })
        .await
        .expect("record");
    let ship = client
        .ship_order(pb::ShipOrderRequest {
            order_no: "T-NEW".into(),
            shipment: Some(pb::Shipment {
                carrier: "圆通".into(),
                tracking_number: "YT1".into(),
            }),
            ..Default::default()
        })
        .await
        .expect_err("unpaid cannot ship");
    assert_eq!(ship.code(), Code::FailedPrecondition);
    assert_eq!(reason(&ship), "ORDER_TRANSITION_INVALID");
    let review = client
        .review_order(pb::ReviewOrderRequest {
            order_no: "T-NEW".into(),
            rating: pb::ReviewRating::Bad as i32,
            ..Default::default()
        })
        .await
        .expect_err("unpaid cannot be reviewed");
    assert_eq!(review.code(), Code::FailedPrecondition);
    client
        .close_order(pb::CloseOrderRequest {
            order_no: "T-NEW".into(),
            ..Default::default()
        })
        .await
        .expect("close");
    let pay = client
        .pay_order(pb::PayOrderRequest {
            order_no: "T-NEW".into(),
            ..Default::default()
        })
        .await
        .expect_err("closed cannot be paid");
    assert_eq!(pay.code(), Code::FailedPrecondition);
    let unknown = client
        .pay_order(pb::PayOrderRequest {
            order_no: "T-NONE".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    suite.stop().await;
}

#[tokio::test]
async fn concurrent_orders_for_one_buyer_keep_stats_exact() {
    let suite = TestSuite::start("concurrency").await;
    let client = suite.customers(&suite.shop.storefront);
    let mut tasks = Vec::new();
    for i in 0..32i64 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let order = paid_order(
                &format!("T-C{i}"),
                "busy_buyer",
                vec![item(
                    "S",
                    if i % 2 == 0 { "a" } else { "b" },
                    1 + i % 3,
                    100 + i,
                )],
            );
            c.record_order(order).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("order accepted");
    }
    let mut refunds = Vec::new();
    for i in 0..8i64 {
        let mut c = client.clone();
        refunds.push(tokio::spawn(async move {
            c.refund_order(pb::RefundOrderRequest {
                order_no: format!("T-C{i}"),
                refund_no: "R".into(),
                amount_fen: 50,
                ..Default::default()
            })
            .await
            .map(|_| ())
        }));
    }
    for t in refunds {
        t.await.expect("join").expect("refund accepted");
    }
    let mut c = client.clone();
    let stats = c
        .get_customer(pb::GetCustomerRequest {
            buyer_nick: "busy_buyer".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .customer
        .expect("customer")
        .stats
        .expect("stats");
    let expected_items: i64 = (0..32).map(|i| 1 + i % 3).sum();
    let expected_spend: i64 = (0..32).map(|i| (1 + i % 3) * (100 + i)).sum::<i64>() - 8 * 50;
    assert_eq!(stats.order_count, 32);
    assert_eq!(stats.item_count, expected_items);
    assert_eq!(stats.spent_fen, expected_spend);
    assert_eq!(stats.refunded_fen, 400);
    let category_total: i64 = stats.categories.iter().map(|c| c.quantity).sum();
    assert_eq!(category_total, expected_items);
    suite.stop().await;
}

#[tokio::test]
async fn listing_filters_and_pages_without_gaps() {
    let suite = TestSuite::start("listing").await;
    let mut client = suite.customers(&suite.shop.operator);
    for i in 0..25 {
        let nick = format!("buyer{i:02}");
        client
            .upsert_customer(pb::UpsertCustomerRequest {
                buyer_nick: nick.clone(),
                ..Default::default()
            })
            .await
            .expect("create");
        for n in 0..(i % 4) {
            client
                .record_order(paid_order(
                    &format!("T{i}-{n}"),
                    &nick,
                    vec![item("S", "c", 1, 100)],
                ))
                .await
                .expect("order");
        }
        if i % 5 == 0 {
            let id = client
                .get_customer(pb::GetCustomerRequest {
                    buyer_nick: nick,
                    ..Default::default()
                })
                .await
                .expect("get")
                .into_inner()
                .customer
                .expect("c")
                .id;
            client
                .update_customer_tags(pb::UpdateCustomerTagsRequest {
                    customer_id: id,
                    add_tags: vec!["vip".into()],
                    ..Default::default()
                })
                .await
                .expect("tag");
        }
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_customers(pb::ListCustomersRequest {
                page_size: 7,
                page_token: token.clone(),
                min_order_count: Some(1),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.customers.into_iter().map(|c| c.buyer_nick));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (0..25)
        .filter(|i| i % 4 != 0)
        .map(|i| format!("buyer{i:02}"))
        .collect();
    assert_eq!(seen, expected);
    let vip = client
        .list_customers(pb::ListCustomersRequest {
            tag: "vip".into(),
            max_order_count: Some(2),
            ..Default::default()
        })
        .await
        .expect("vip")
        .into_inner();
    let names: Vec<String> = vip.customers.into_iter().map(|c| c.buyer_nick).collect();
    assert_eq!(names, vec!["buyer00", "buyer05", "buyer10", "buyer20"]);
    // A token is bound to its filters.
    let first = client
        .list_customers(pb::ListCustomersRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("first")
        .into_inner();
    let wrong = client
        .list_customers(pb::ListCustomersRequest {
            page_size: 2,
            page_token: first.next_page_token,
            tag: "vip".into(),
            ..Default::default()
        })
        .await
        .expect_err("mismatched token");
    assert_eq!(bad_fields(&wrong), vec!["page_token"]);
    suite.stop().await;
}

#[tokio::test]
async fn consent_tags_attributes_and_erasure() {
    let suite = TestSuite::start("profile").await;
    let mut client = suite.customers(&suite.shop.operator);
    let id = client
        .upsert_customer(pb::UpsertCustomerRequest {
            buyer_nick: "carol".into(),
            name: Some("李四".into()),
            phone: Some("13600003333".into()),
            wechat_id: Some("carol_wx88".into()),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .customer
        .expect("c")
        .id;
    let c = client
        .set_consent(pb::SetConsentRequest {
            customer_id: id.clone(),
            channel: pb::Channel::Sms as i32,
            granted: true,
            source: "checkout checkbox".into(),
            ..Default::default()
        })
        .await
        .expect("grant")
        .into_inner()
        .customer
        .expect("c");
    assert!(
        c.consents
            .iter()
            .any(|x| x.channel == pb::Channel::Sms as i32 && x.granted)
    );
    let c = client
        .set_consent(pb::SetConsentRequest {
            customer_id: id.clone(),
            channel: pb::Channel::Sms as i32,
            granted: false,
            source: "SMS reply T".into(),
            ..Default::default()
        })
        .await
        .expect("withdraw")
        .into_inner()
        .customer
        .expect("c");
    let sms = c
        .consents
        .iter()
        .find(|x| x.channel == pb::Channel::Sms as i32)
        .expect("sms");
    assert!(!sms.granted);
    assert_eq!(sms.source, "SMS reply T");

    let c = client
        .set_customer_attributes(pb::SetCustomerAttributesRequest {
            customer_id: id.clone(),
            set: [(
                "skin_type".to_owned(),
                pb::AttributeValue {
                    value: Some(pb::attribute_value::Value::TextValue("干性".into())),
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .expect("attribute")
        .into_inner()
        .customer
        .expect("c");
    assert!(c.attributes.contains_key("skin_type"));
    let wrong_type = client
        .set_customer_attributes(pb::SetCustomerAttributesRequest {
            customer_id: id.clone(),
            set: [(
                "skin_type".to_owned(),
                pb::AttributeValue {
                    value: Some(pb::attribute_value::Value::IntValue(3)),
                },
            )]
            .into(),
            ..Default::default()
        })
        .await
        .expect_err("type is fixed");
    assert_eq!(bad_fields(&wrong_type), vec!["set[skin_type]"]);

    client
        .record_order(paid_order("T-E1", "carol", vec![item("S", "c", 2, 500)]))
        .await
        .expect("order");
    let erased = client
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: id.clone(),
            reason: "buyer asked under PIPL".into(),
            ..Default::default()
        })
        .await
        .expect("erase")
        .into_inner()
        .customer
        .expect("c");
    assert!(erased.erase_time.is_some());
    assert!(erased.phone.is_empty() && erased.name.is_empty() && erased.wechat_id.is_empty());
    assert!(erased.attributes.is_empty() && erased.consents.is_empty());
    assert_ne!(erased.buyer_nick, "carol");
    assert_eq!(
        erased.stats.expect("stats").spent_fen,
        1_000,
        "aggregates stay"
    );
    let by_phone = client
        .find_customer_by_phone(pb::FindCustomerByPhoneRequest {
            phone: "13600003333".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(by_phone.code(), Code::NotFound);
    let reveal = client
        .reveal_contact(pb::RevealContactRequest {
            customer_id: id.clone(),
            field: pb::ContactField::Phone as i32,
            reason: "after erasure".into(),
        })
        .await
        .expect_err("erased");
    assert_eq!(reason(&reveal), "CUSTOMER_ERASED");
    let audit = client
        .list_audit_entries(pb::ListAuditEntriesRequest {
            customer_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner();
    assert_eq!(
        audit.entries[0].action,
        pb::AuditAction::EraseCustomer as i32
    );
    suite.stop().await;
}

#[tokio::test]
async fn replicas_sharing_redis_read_each_others_writes_at_once() {
    let suite = TestSuite::start("replicas").await;
    if suite.settings.customer.cache.redis_url.is_empty() {
        // Replicas share a cache only through Redis; the embedded default is
        // one process. This runs in the PostgreSQL + Redis pass of CI.
        eprintln!("needs Redis; set {}", huitou_testkit::REDIS_ENV);
        suite.stop().await;
        return;
    }
    let (channel, _stop_replica) = suite.replica().await;
    let mut a = suite.customers(&suite.shop.storefront);
    let mut b = suite.customers_via(channel, &suite.shop.storefront);
    for round in 0..20i64 {
        a.record_order(paid_order(
            &format!("RP-{round}"),
            "shared",
            vec![item("S", "c", 1, 100)],
        ))
        .await
        .expect("write on replica A");
        let read = b
            .get_customer(pb::GetCustomerRequest {
                buyer_nick: "shared".into(),
                ..Default::default()
            })
            .await
            .expect("read on replica B")
            .into_inner()
            .customer
            .expect("customer");
        assert_eq!(
            read.stats.expect("stats").order_count,
            round + 1,
            "round {round}"
        );
    }
    suite.stop().await;
}

#[tokio::test]
async fn concurrent_repeats_of_one_order_record_it_once() {
    let suite = TestSuite::start("repeats").await;
    let client = suite.customers(&suite.shop.storefront);
    let mut calls = Vec::new();
    for i in 0..24 {
        let mut c = client.clone();
        calls.push(tokio::spawn(async move {
            // Every third call differs in contents: it must be refused, not merged.
            let quantity = if i % 3 == 2 { 2 } else { 1 };
            c.record_order(paid_order(
                "SAME-1",
                "twin",
                vec![item("S", "c", quantity, 700)],
            ))
            .await
        }));
    }
    let mut created = 0;
    let mut repeats = 0;
    let mut conflicts = 0;
    for call in calls {
        match call.await.expect("join") {
            Ok(r) if r.get_ref().created => created += 1,
            Ok(_) => repeats += 1,
            Err(s) if s.code() == Code::AlreadyExists => conflicts += 1,
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    // Whichever contents won, every call agrees with it: exactly one created.
    assert_eq!(created, 1);
    assert_eq!(created + repeats + conflicts, 24);
    let mut c = client.clone();
    let stats = c
        .get_customer(pb::GetCustomerRequest {
            buyer_nick: "twin".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .customer
        .expect("customer")
        .stats
        .expect("stats");
    assert_eq!(stats.order_count, 1);
    suite.stop().await;
}

/// A storefront retrying an order already recorded, in a burst of new
/// orders from other buyers: the retry shares a batch with new orders (the
/// batch's one statement finds the number taken, and its orders go one by
/// one). Every new order is recorded once, the retry is answered as a
/// repeat, and no buyer's statistics count an order twice.
#[tokio::test]
async fn a_retry_among_new_orders_is_a_repeat_and_counts_once() {
    let suite = TestSuite::start("retry-in-burst").await;
    let client = suite.customers(&suite.shop.storefront);
    let mut c = client.clone();
    let first = c
        .record_order(paid_order("KEEP-1", "loyal", vec![item("S", "c", 1, 900)]))
        .await
        .expect("first")
        .into_inner();
    assert!(first.created);
    for round in 0..5 {
        let mut calls = Vec::new();
        for i in 0..30 {
            let mut c = client.clone();
            let order = if i == 10 {
                paid_order("KEEP-1", "loyal", vec![item("S", "c", 1, 900)])
            } else {
                paid_order(
                    &format!("NEW-{round}-{i}"),
                    &format!("buyer-{round}-{i}"),
                    vec![item("S", "c", 2, 500)],
                )
            };
            calls.push(tokio::spawn(async move {
                (
                    i,
                    c.record_order(order).await.map(|r| r.into_inner().created),
                )
            }));
        }
        for call in calls {
            let (i, created) = call.await.expect("join");
            let created = created.expect("recorded");
            assert_eq!(created, i != 10, "call {i} of round {round}");
        }
    }
    let mut c = client.clone();
    let stats = |nick: &str| pb::GetCustomerRequest {
        buyer_nick: nick.into(),
        ..Default::default()
    };
    let loyal = c
        .get_customer(stats("loyal"))
        .await
        .expect("loyal")
        .into_inner()
        .customer
        .expect("customer")
        .stats
        .expect("stats");
    assert_eq!((loyal.order_count, loyal.spent_fen), (1, 900));
    let new = c
        .get_customer(stats("buyer-4-29"))
        .await
        .expect("new buyer")
        .into_inner()
        .customer
        .expect("customer")
        .stats
        .expect("stats");
    assert_eq!((new.order_count, new.spent_fen), (1, 1000));
    suite.stop().await;
}

/// Two operators at once give two customers a value under the same new
/// attribute name, one as text, one as a number. The shop's name gets one
/// type: one call succeeds, the other is refused on its field and writes
/// nothing, however their transactions interleave.
#[tokio::test]
async fn a_new_attribute_name_gets_one_type_when_two_set_it_at_once() {
    let suite = TestSuite::start("attribute-race").await;
    let mut client = suite.customers(&suite.shop.operator);
    let mut ids = Vec::new();
    for nick in ["ada", "bo"] {
        ids.push(
            client
                .upsert_customer(pb::UpsertCustomerRequest {
                    buyer_nick: nick.into(),
                    ..Default::default()
                })
                .await
                .expect("create")
                .into_inner()
                .customer
                .expect("customer")
                .id,
        );
    }
    let values = [
        pb::attribute_value::Value::TextValue("干性".into()),
        pb::attribute_value::Value::IntValue(3),
    ];
    for round in 0..huitou_tests::race_rounds(20) {
        let name = format!("trait_{round}");
        let calls: Vec<_> = ids
            .iter()
            .zip(values.iter())
            .map(|(id, value)| {
                let mut c = client.clone();
                let request = pb::SetCustomerAttributesRequest {
                    customer_id: id.clone(),
                    set: [(
                        name.clone(),
                        pb::AttributeValue {
                            value: Some(value.clone()),
                        },
                    )]
                    .into(),
                    ..Default::default()
                };
                tokio::spawn(async move { c.set_customer_attributes(request).await })
            })
            .collect();
        let mut holders = Vec::new();
        for (i, call) in calls.into_iter().enumerate() {
            match call.await.expect("join") {
                Ok(_) => holders.push(i),
                Err(s) => {
                    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
                    assert_eq!(bad_fields(&s), vec![format!("set[{name}]")]);
                }
            }
        }
        assert_eq!(holders.len(), 1, "round {round}: both types were accepted");
        for (i, id) in ids.iter().enumerate() {
            let customer = client
                .get_customer(pb::GetCustomerRequest {
                    customer_id: id.clone(),
                    ..Default::default()
                })
                .await
                .expect("get")
                .into_inner()
                .customer
                .expect("customer");
            let held = customer.attributes.get(&name).and_then(|v| v.value.clone());
            if holders.contains(&i) {
                assert_eq!(held.as_ref(), Some(&values[i]));
            } else {
                assert_eq!(held, None, "round {round}: the refused value was written");
            }
        }
    }
    suite.stop().await;
}
