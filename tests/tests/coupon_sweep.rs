//! The coupon service's periodic work at fixed clocks: the "expires soon"
//! reminder once per coupon, expiry when the window closes, and birthday
//! coupons once per buyer and year — each with its outbox event.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use huitou_coupon::domain::checkout::Attempt;
use huitou_coupon::domain::discount::{Cart, Line};
use huitou_coupon::domain::rules::DAY_MICROS;
use huitou_coupon::store::Store;
use huitou_coupon::store::buyers::BuyerChange;
use huitou_coupon::store::coupons::{Claim, IssueSpec};
use huitou_coupon::{CouponConfig, CouponService};
use huitou_proto::coupon::v1 as pb;
use huitou_proto::coupon::v1::coupon_template::{Benefit, Validity};
use huitou_testkit::TestDatabase;

const SHOP: &str = "shop-sweep";

async fn events(store: &Store, event_type: &str) -> i64 {
    huitou_storage::outbox::stored_events(&store.db)
        .await
        .expect("outbox")
        .iter()
        .filter(|e| e.event_type() == event_type)
        .count() as i64
}

async fn template(store: &Store, name: &str) -> huitou_coupon::template::Template {
    let message = huitou_coupon::template::check_new(
        Some(&pb::CouponTemplate {
            name: name.into(),
            benefit: Some(Benefit::AmountOff(pb::AmountOff { amount_fen: 500 })),
            validity: Some(Validity::ValidDaysAfterIssue(30)),
            ..Default::default()
        }),
        0,
    )
    .expect("valid template");
    let (t, _) = store
        .transaction(move |tx, store| {
            let message = message.clone();
            Box::pin(async move { store.create_template(tx, SHOP, &message).await })
        })
        .await
        .expect("create");
    t
}

/// A coupon service's store on a fresh database.
async fn open(label: &str) -> (TestDatabase, Store) {
    let db = TestDatabase::new(label).await;
    let service = CouponService::open(
        &CouponConfig {
            database: db.config.clone(),
            ..Default::default()
        },
        true,
    )
    .await
    .expect("open");
    let store = service.store.clone();
    (db, store)
}

#[tokio::test]
async fn reminders_once_then_expiry_and_birthdays_once_a_year() {
    let (db, store) = open("coupon-sweep").await;
    let t = template(&store, "五元券").await;
    // 2026-03-10 12:00 UTC (20:00 in Shanghai).
    let issued_at = 1_773_144_000_000_000;
    let coupon = store
        .transaction({
            let t = t.clone();
            move |tx, store| {
                let t = t.clone();
                Box::pin(async move {
                    let spec = IssueSpec {
                        key: "k1".into(),
                        reason: "test",
                        agent: None,
                    };
                    store.issue(tx, SHOP, &t, "c-1", &spec, issued_at).await
                })
            }
        })
        .await
        .expect("issue")
        .coupon;

    // A second coupon, used the day after it was given: its window closing
    // changes nothing (no expiry, no event); the sweeper only marks it seen.
    let used = store
        .transaction({
            let t = t.clone();
            move |tx, store| {
                let t = t.clone();
                Box::pin(async move {
                    let spec = IssueSpec {
                        key: "k2".into(),
                        reason: "test",
                        agent: None,
                    };
                    let c = store.issue(tx, SHOP, &t, "c-2", &spec, issued_at).await?;
                    let cart = Cart {
                        lines: vec![Line {
                            sku: "S".into(),
                            category: "C".into(),
                            quantity: 1,
                            unit_price_fen: 10_000,
                        }],
                        shipping_fen: 0,
                    };
                    let attempt = Attempt {
                        code: &c.coupon.code,
                        customer_id: "c-2",
                        order_no: "O-2",
                        cart: &cart,
                        tier_discount_applied: false,
                        other_coupons: false,
                        friend_at_limit: false,
                        now: issued_at + DAY_MICROS,
                    };
                    store
                        .claim(tx, SHOP, &t, &attempt, Claim::Redeem(10_000))
                        .await
                })
            }
        })
        .await
        .expect("issue and redeem")
        .coupon;
    assert_eq!(used.state, 3);

    // 26 days on: nothing yet. 27.5 days on: one reminder, and only one.
    let r = store
        .sweep(issued_at + 26 * DAY_MICROS, 3)
        .await
        .expect("sweep");
    assert_eq!((r.expired, r.reminded), (0, 0));
    let r = store
        .sweep(issued_at + 27 * DAY_MICROS + DAY_MICROS / 2, 3)
        .await
        .expect("sweep");
    assert_eq!((r.expired, r.reminded), (0, 1));
    let r = store
        .sweep(issued_at + 28 * DAY_MICROS, 3)
        .await
        .expect("sweep");
    assert_eq!((r.expired, r.reminded), (0, 0));
    assert_eq!(events(&store, "coupon.expiring_soon").await, 1);

    // The window closes at 30 days: expired once, with its event.
    let r = store
        .sweep(issued_at + 30 * DAY_MICROS, 3)
        .await
        .expect("sweep");
    assert_eq!((r.expired, r.reminded), (1, 0));
    let r = store
        .sweep(issued_at + 31 * DAY_MICROS, 3)
        .await
        .expect("sweep");
    assert_eq!(r.expired, 0);
    assert_eq!(events(&store, "coupon.expired").await, 1);
    let row = store
        .find_coupon(store.db.conn(), SHOP, &coupon.code)
        .await
        .expect("find")
        .expect("coupon");
    assert_eq!(row.state, 4);
    let row = store
        .find_coupon(store.db.conn(), SHOP, &used.code)
        .await
        .expect("find")
        .expect("coupon");
    assert_eq!(row.state, 3, "a used coupon stays used");
    let unswept = store
        .read(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM coupons WHERE swept = 0",
            vec![],
        )
        .await
        .expect("count");
    let unswept: i64 = unswept[0].try_get("", "n").expect("n");
    assert_eq!(
        unswept, 0,
        "both coupons whose window closed were seen once"
    );

    // Birthdays: the rule's template goes to buyers born today in its
    // time zone, once a year however often the run comes.
    let gift = template(&store, "生日券").await;
    store
        .transaction({
            let gift = gift.id.clone();
            move |tx, store| {
                let gift = gift.clone();
                Box::pin(async move {
                    store
                        .set_rule(
                            tx,
                            SHOP,
                            &pb::IssueRule {
                                trigger: pb::IssueTrigger::Birthday as i32,
                                template_id: gift,
                                active: true,
                                positive_reviews_only: false,
                            },
                        )
                        .await?;
                    // 20:00 UTC on 10 March is already 11 March in Shanghai.
                    store
                        .change_buyer(
                            tx,
                            SHOP,
                            "born-0311",
                            BuyerChange::Birthday {
                                month: 3,
                                day: 11,
                                at: 1,
                            },
                        )
                        .await?;
                    store
                        .change_buyer(
                            tx,
                            SHOP,
                            "born-0310",
                            BuyerChange::Birthday {
                                month: 3,
                                day: 10,
                                at: 1,
                            },
                        )
                        .await
                })
            }
        })
        .await
        .expect("rule and buyers");
    let evening = 1_773_172_800_000_000; // 2026-03-10 20:00 UTC
    assert_eq!(store.birthday_gifts(evening).await.expect("gifts"), 1);
    assert_eq!(
        store
            .birthday_gifts(evening + 3_600_000_000)
            .await
            .expect("again"),
        0
    );
    let got = store
        .list_coupons(SHOP, "born-0311", None, None, 10)
        .await
        .expect("list");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].template_id, gift.id);
    assert!(
        store
            .list_coupons(SHOP, "born-0310", None, None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    // A year later, again.
    assert_eq!(
        store
            .birthday_gifts(evening + 365 * DAY_MICROS)
            .await
            .expect("next year"),
        1
    );
    store.db.clone().close().await;
    db.cleanup().await;
}

/// Tier and profile changes the relay delivers late, after newer ones: the
/// newer tier stays, an older birthday does not overwrite a newer one, and
/// nothing brings a birthday back after an erasure (no birthday coupon for
/// an erased customer).
#[tokio::test]
async fn late_tier_and_profile_changes_do_not_undo_newer_ones_or_an_erasure() {
    let (db, store) = open("coupon-late").await;
    let apply = |customer: &'static str, changes: Vec<BuyerChange<'static>>| {
        let store = store.clone();
        async move {
            store
                .transaction(move |tx, store| {
                    let changes = changes.clone();
                    Box::pin(async move {
                        for change in changes {
                            store.change_buyer(tx, SHOP, customer, change).await?;
                        }
                        Ok(())
                    })
                })
                .await
                .expect("changes");
            store
                .buyer(store.db.conn(), SHOP, customer)
                .await
                .expect("buyer")
        }
    };
    use BuyerChange::{Birthday, Erased, Tier};
    // GOLD at 200, then PLATINUM at 300, delivered the other way round.
    let b = apply(
        "tiered",
        vec![
            Tier {
                code: "PLATINUM",
                at: 300,
            },
            Tier {
                code: "GOLD",
                at: 200,
            },
        ],
    )
    .await;
    assert_eq!(b.tier_code, "PLATINUM");
    // The birthday set to 5 May at 200, corrected to 6 May at 300, late.
    let b = apply(
        "born",
        vec![
            Birthday {
                month: 5,
                day: 6,
                at: 300,
            },
            Birthday {
                month: 5,
                day: 5,
                at: 200,
            },
        ],
    )
    .await;
    assert_eq!((b.birthday_month, b.birthday_day), (5, 6));
    // Erased, then a profile from before the erasure arrives, and one
    // claiming to be later: the birthday stays forgotten.
    let b = apply(
        "erased",
        vec![
            Birthday {
                month: 3,
                day: 11,
                at: 100,
            },
            Erased,
            Birthday {
                month: 3,
                day: 11,
                at: 90,
            },
            Birthday {
                month: 3,
                day: 11,
                at: 500,
            },
        ],
    )
    .await;
    assert_eq!((b.birthday_month, b.birthday_day), (0, 0));
    store.db.clone().close().await;
    db.cleanup().await;
}
