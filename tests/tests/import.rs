//! Importing a shop's order history: bad rows reported and skipped, good
//! rows whole, statistics exact, and a second run resumes without duplicates.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use huitou_proto::customer::v1 as pb;
use huitou_tests::{Customers, TestSuite, ago};

fn row(
    n: i64,
    order_no: &str,
    nick: &str,
    status: pb::OrderStatus,
    quantity: i64,
    refunded: i64,
) -> pb::ImportedOrder {
    let paid = !matches!(status, pb::OrderStatus::Created | pb::OrderStatus::Closed);
    pb::ImportedOrder {
        row_number: n,
        order_no: order_no.into(),
        buyer_nick: nick.into(),
        status: status as i32,
        items: vec![pb::OrderItem {
            sku: format!("SKU{n}"),
            category: if n % 2 == 0 {
                "童装".into()
            } else {
                "玩具".into()
            },
            quantity,
            unit_price_fen: 1_000,
            title: String::new(),
        }],
        payable_fen: quantity * 1_000,
        refunded_fen: refunded,
        create_time: Some(ago(86_400 * (30 - n))),
        pay_time: paid.then(|| ago(86_400 * (30 - n) - 60)),
        ..Default::default()
    }
}

/// A buyer's statistics, read back by nick.
async fn stats_of(client: &mut Customers, nick: &str) -> pb::CustomerStats {
    client
        .get_customer(pb::GetCustomerRequest {
            buyer_nick: nick.into(),
            ..Default::default()
        })
        .await
        .expect("buyer")
        .into_inner()
        .customer
        .expect("customer")
        .stats
        .expect("stats")
}

fn history() -> Vec<pb::ImportOrdersRequest> {
    use pb::OrderStatus::*;
    let mut bad_amount = row(6, "H-6", "bob", Paid, 1, 0);
    bad_amount.payable_fen = 999;
    let mut bad_phone = row(8, "H-8", "dan", Paid, 1, 0);
    bad_phone.receiver = Some(pb::ContactDetails {
        phone: "12345".into(),
        ..Default::default()
    });
    let mut with_receiver = row(5, "H-5", "cat", Received, 1, 0);
    with_receiver.receiver = Some(pb::ContactDetails {
        name: "猫".into(),
        phone: "13500005555".into(),
        address: "上海市黄浦区南京东路 1 号".into(),
    });
    vec![
        pb::ImportOrdersRequest {
            import_id: "2025-history".into(),
            rows: vec![
                row(1, "H-1", "amy", Reviewed, 2, 0),
                row(2, "H-2", "amy", Refunded, 1, 1_000),
                row(3, "H-3", "amy", Shipped, 3, 500),
            ],
        },
        pb::ImportOrdersRequest {
            import_id: "2025-history".into(),
            rows: vec![
                row(4, "H-4", "bob", Closed, 1, 0),
                with_receiver,
                bad_amount,
            ],
        },
        pb::ImportOrdersRequest {
            import_id: "2025-history".into(),
            rows: vec![row(7, "H-2", "amy", Refunded, 1, 1_000), bad_phone],
        },
    ]
}

#[tokio::test]
async fn import_reports_bad_rows_keeps_stats_exact_and_resumes() {
    let suite = TestSuite::start("import").await;
    let mut client = suite.customers(&suite.shop.operator);
    let report = client
        .import_orders(tokio_stream::iter(history()))
        .await
        .expect("import")
        .into_inner();
    assert_eq!(report.rows_received, 8);
    assert_eq!(report.rows_imported, 5);
    assert_eq!(report.rows_skipped, 1, "H-2 twice");
    assert_eq!(report.rows_rejected, 2);
    assert_eq!(report.last_row_number, 8);
    let errors: Vec<(i64, &str)> = report
        .row_errors
        .iter()
        .map(|e| (e.row_number, e.field.as_str()))
        .collect();
    assert_eq!(errors, vec![(6, "payable_fen"), (8, "receiver.phone")]);

    let amy = stats_of(&mut client, "amy").await;
    assert_eq!(amy.order_count, 3);
    assert_eq!(amy.item_count, 6);
    assert_eq!(amy.spent_fen, 6_000 - 1_500);
    assert_eq!(amy.refunded_fen, 1_500);
    let bob = client
        .get_customer(pb::GetCustomerRequest {
            buyer_nick: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("bob")
        .into_inner()
        .customer
        .expect("c");
    assert_eq!(
        bob.stats.expect("stats").order_count,
        0,
        "a closed order does not count"
    );
    let cat = client
        .find_customer_by_phone(pb::FindCustomerByPhoneRequest {
            phone: "13500005555".into(),
        })
        .await
        .expect("receiver filled the profile")
        .into_inner()
        .customer
        .expect("c");
    assert_eq!(cat.buyer_nick, "cat");
    assert_eq!(cat.name, "猫*");
    let refunded = client
        .get_order(pb::GetOrderRequest {
            order_no: "H-2".into(),
            ..Default::default()
        })
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("o");
    assert_eq!(refunded.status, pb::OrderStatus::Refunded as i32);

    // Sending the same history again writes nothing new.
    let again = client
        .import_orders(tokio_stream::iter(history()))
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(
        (again.rows_imported, again.rows_skipped, again.rows_rejected),
        (0, 6, 2)
    );
    let progress = client
        .get_order_import(pb::GetOrderImportRequest {
            import_id: "2025-history".into(),
        })
        .await
        .expect("progress")
        .into_inner();
    assert_eq!((progress.rows_imported, progress.last_row_number), (5, 8));
    let amy_again = stats_of(&mut client, "amy").await;
    assert_eq!(amy_again, amy);

    // A stream that mixes import ids, or rows that go backwards, is refused.
    let mixed = client
        .import_orders(tokio_stream::iter(vec![
            pb::ImportOrdersRequest {
                import_id: "a".into(),
                rows: vec![],
            },
            pb::ImportOrdersRequest {
                import_id: "b".into(),
                rows: vec![],
            },
        ]))
        .await
        .expect_err("mixed ids");
    assert_eq!(mixed.code(), tonic::Code::InvalidArgument);
    let backwards = client
        .import_orders(tokio_stream::iter(vec![pb::ImportOrdersRequest {
            import_id: "c".into(),
            rows: vec![
                row(5, "B-5", "eve", pb::OrderStatus::Paid, 1, 0),
                row(4, "B-4", "eve", pb::OrderStatus::Paid, 1, 0),
            ],
        }]))
        .await
        .expect("partial")
        .into_inner();
    assert_eq!((backwards.rows_imported, backwards.rows_rejected), (1, 1));
    assert_eq!(backwards.row_errors[0].field, "row_number");
    suite.stop().await;
}

/// A batch that fails while the next one is being written beside it: the
/// import stops with the error, the next batch rolls back instead of
/// committing after the gap, progress stays where the last whole batch
/// left it, and running the import again writes every row exactly once.
#[tokio::test]
async fn a_failed_batch_stops_the_batch_beside_it_and_progress() {
    use pb::OrderStatus::Paid;
    use sea_orm::ConnectionTrait;
    let suite = TestSuite::start("import-fault").await;
    let mut client = suite.customers(&suite.shop.operator);
    // The database refuses one order of the second message (a fault no
    // validation can see: think of a full disk).
    let db = huitou_storage::Database::connect(&suite.database.config)
        .await
        .expect("db");
    let refuse = if suite.database.kind == "postgres" {
        vec![
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.order_no = 'F-5' THEN RAISE EXCEPTION 'disk full'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse_boom()",
        ]
    } else {
        vec![
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON orders WHEN NEW.order_no = 'F-5'
             BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        ]
    };
    for sql in &refuse {
        db.conn().execute_unprepared(sql).await.expect("trigger");
    }
    // Four messages, each with its own buyers, so each may be written
    // beside the one before it.
    let messages = || {
        (0..4)
            .map(|m| pb::ImportOrdersRequest {
                import_id: "faulty".into(),
                rows: (1..=3)
                    .map(|i| {
                        let n = m * 3 + i;
                        row(n, &format!("F-{n}"), &format!("buyer-{m}"), Paid, 1, 0)
                    })
                    .collect(),
            })
            .collect::<Vec<_>>()
    };
    let failed = client
        .import_orders(tokio_stream::iter(messages()))
        .await
        .expect_err("the second batch fails");
    assert_eq!(failed.code(), tonic::Code::Internal, "{failed:?}");
    if suite.database.kind == "postgres" {
        // The failure is answered only once the batches beside the failed
        // one have rolled back: none of this import's transactions is still
        // open, holding rows a resume or a migration would wait for.
        let open = db
            .conn()
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT state, query FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND xact_start IS NOT NULL
                   AND (query LIKE '%orders%' OR query LIKE '%customers%')",
            ))
            .await
            .expect("activity");
        let open: Vec<(String, String)> = open
            .iter()
            .map(|r| {
                (
                    r.try_get("", "state").unwrap_or_default(),
                    r.try_get("", "query").unwrap_or_default(),
                )
            })
            .collect();
        assert!(open.is_empty(), "transactions still open: {open:?}");
    }
    let progress = client
        .get_order_import(pb::GetOrderImportRequest {
            import_id: "faulty".into(),
        })
        .await
        .expect("progress")
        .into_inner();
    assert_eq!(
        (progress.rows_imported, progress.last_row_number),
        (3, 3),
        "only the first batch is recorded"
    );
    for later in ["F-7", "F-10"] {
        let missing = client
            .get_order(pb::GetOrderRequest {
                order_no: later.into(),
                ..Default::default()
            })
            .await
            .expect_err("not written");
        assert_eq!(missing.code(), tonic::Code::NotFound, "{later}");
    }
    let allow = if suite.database.kind == "postgres" {
        "DROP TRIGGER refuse_boom ON orders"
    } else {
        "DROP TRIGGER refuse_boom"
    };
    db.conn()
        .execute_unprepared(allow)
        .await
        .expect("drop trigger");
    let again = client
        .import_orders(tokio_stream::iter(messages()))
        .await
        .expect("resumed")
        .into_inner();
    assert_eq!((again.rows_imported, again.rows_skipped), (9, 3));
    for m in 0..4 {
        let stats = stats_of(&mut client, &format!("buyer-{m}")).await;
        assert_eq!(stats.order_count, 3, "buyer-{m}");
    }
    suite.stop().await;
}

#[tokio::test]
async fn buyers_shared_by_batches_in_flight_keep_exact_statistics() {
    use pb::OrderStatus::Paid;
    let suite = TestSuite::start("import-shared").await;
    let mut client = suite.customers(&suite.shop.operator);
    // Twelve messages of 40 rows over 30 buyers: every message shares
    // buyers with the ones before it (known buyers, and buyers the message
    // before creates), and each message repeats an order number of the
    // message before (skipped, not counted twice).
    let (buyers, messages, per_message) = (30i64, 12i64, 40i64);
    let mut expected = std::collections::BTreeMap::<String, (i64, i64)>::new();
    let mut stream: Vec<pb::ImportOrdersRequest> = Vec::new();
    for m in 0..messages {
        let mut rows = Vec::new();
        for i in 0..per_message {
            let n = m * per_message + i + 1;
            if i == 0
                && let Some(before) = stream.last().and_then(|b| b.rows.last())
            {
                // The previous message's last order, again.
                let mut again = before.clone();
                again.row_number = n;
                rows.push(again);
                continue;
            }
            let nick = format!("b{:02}", (n * 7) % buyers);
            let quantity = 1 + n % 3;
            let e = expected.entry(nick.clone()).or_default();
            e.0 += 1;
            e.1 += quantity * 1_000;
            let mut r = row(n, &format!("S-{n}"), &nick, Paid, quantity, 0);
            // An hour apart, the newest a day ago.
            r.create_time = Some(ago(86_400 + (messages * per_message - n) * 3_600));
            r.pay_time = Some(ago(86_400 + (messages * per_message - n) * 3_600 - 60));
            rows.push(r);
        }
        stream.push(pb::ImportOrdersRequest {
            import_id: "shared".into(),
            rows,
        });
    }
    let done = client
        .import_orders(tokio_stream::iter(stream))
        .await
        .expect("import")
        .into_inner();
    assert_eq!(
        (done.rows_imported, done.rows_skipped, done.rows_rejected),
        (messages * per_message - (messages - 1), messages - 1, 0)
    );
    assert_eq!(done.last_row_number, messages * per_message);
    for (nick, (orders, spent)) in expected {
        let stats = stats_of(&mut client, &nick).await;
        assert_eq!(
            (stats.order_count, stats.spent_fen),
            (orders, spent),
            "{nick}"
        );
    }
    suite.stop().await;
}

/// Imported text comes back exactly as sent, whatever it holds: on
/// PostgreSQL the rows travel as COPY text, where a tab, a line break or a
/// backslash would otherwise be read as syntax (decision 0023).
#[tokio::test]
async fn imported_text_comes_back_exactly_as_sent() {
    let suite = TestSuite::start("import-text").await;
    let mut client = suite.customers(&suite.shop.operator);
    let title = "童装\t套装\\2件\n(含\"帽子\")\r";
    let mut order = row(1, "T-1", "buyer\\tab", pb::OrderStatus::Paid, 1, 0);
    order.items[0].title = title.into();
    order.coupon_codes = vec!["C\\1".into()];
    let done = client
        .import_orders(tokio_stream::iter(vec![pb::ImportOrdersRequest {
            import_id: "text".into(),
            rows: vec![order],
        }]))
        .await
        .expect("import")
        .into_inner();
    assert_eq!(done.rows_imported, 1, "{done:?}");
    let back = client
        .get_order(pb::GetOrderRequest {
            order_no: "T-1".into(),
            ..Default::default()
        })
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(back.items[0].title, title);
    assert_eq!(back.coupon_codes, vec!["C\\1".to_owned()]);
    assert_eq!(back.buyer_nick, "buyer\\tab");
    suite.stop().await;
}

/// A batch whose transaction loses a race (PostgreSQL reports a
/// serialization failure) is written again, whole, from the message it
/// came in: every row once, the buyers' statistics exact.
#[tokio::test]
async fn a_batch_that_loses_a_race_is_written_whole_on_its_retry() {
    use pb::OrderStatus::Paid;
    use sea_orm::ConnectionTrait;
    let suite = TestSuite::start("import-retry").await;
    let mut client = suite.customers(&suite.shop.operator);
    if suite.database.kind == "postgres" {
        let db = huitou_storage::Database::connect(&suite.database.config)
            .await
            .expect("db");
        // A sequence is not rolled back: only the first attempt loses.
        for sql in [
            "CREATE SEQUENCE lose_once",
            "CREATE FUNCTION lose_once() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.order_no = 'R-6' AND nextval('lose_once') = 1 THEN
                 RAISE EXCEPTION 'lost a race' USING ERRCODE = 'serialization_failure';
               END IF;
               RETURN NEW;
             END $$",
            "CREATE TRIGGER lose_once BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION lose_once()",
        ] {
            db.conn().execute_unprepared(sql).await.expect("trigger");
        }
        db.close().await;
    }
    // Two messages; the second holds the row that loses once, and a row
    // refused by validation, which stays refused on the retry.
    let second: Vec<pb::ImportedOrder> = [4, 5, 6, 7]
        .into_iter()
        .map(|n| {
            let order_no = if n == 5 {
                String::new()
            } else {
                format!("R-{n}")
            };
            row(n, &order_no, &format!("buyer-{}", n % 2), Paid, 1, 0)
        })
        .collect();
    let messages = vec![
        pb::ImportOrdersRequest {
            import_id: "retry".into(),
            rows: (1..=3)
                .map(|n| {
                    row(
                        n,
                        &format!("R-{n}"),
                        &format!("buyer-{}", n % 2),
                        Paid,
                        1,
                        0,
                    )
                })
                .collect(),
        },
        pb::ImportOrdersRequest {
            import_id: "retry".into(),
            rows: second,
        },
    ];
    let done = client
        .import_orders(tokio_stream::iter(messages))
        .await
        .expect("import")
        .into_inner();
    assert_eq!(
        (done.rows_imported, done.rows_skipped, done.rows_rejected),
        (6, 0, 1),
        "{done:?}"
    );
    for (nick, orders) in [("buyer-0", 3), ("buyer-1", 3)] {
        let stats = stats_of(&mut client, nick).await;
        assert_eq!(stats.order_count, orders, "{nick}");
        assert_eq!(stats.spent_fen, orders * 1_000, "{nick}");
    }
    suite.stop().await;
}
