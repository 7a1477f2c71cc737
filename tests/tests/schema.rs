//! The schema a service migrates to, as stored: on PostgreSQL, text in byte
//! order (decision 0020) and outbox payloads compressed with LZ4; migrating
//! again changes nothing, and a table added later is put in byte order too.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use huitou_storage::Database;
use huitou_testkit::TestDatabase;
use sea_orm::{ConnectionTrait, Statement};

/// Text columns of the database's own tables not in byte order.
async fn text_not_in_byte_order(db: &Database) -> Vec<String> {
    let rows = db
        .conn()
        .query_all_raw(Statement::from_string(
            db.backend(),
            "SELECT table_name || '.' || column_name AS col FROM information_schema.columns
             WHERE table_schema = current_schema() AND data_type = 'text'
               AND collation_name IS DISTINCT FROM 'C'
             ORDER BY 1",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get::<String>("", "col").unwrap())
        .collect()
}

#[tokio::test]
async fn every_text_column_compares_in_byte_order_and_outbox_payloads_use_lz4() {
    let database = TestDatabase::new("schema").await;
    let db = Database::connect(&database.config).await.unwrap();
    huitou_customer::migrate(&db).await.unwrap();
    // Again: nothing left to do, nothing fails.
    huitou_customer::migrate(&db).await.unwrap();

    if database.kind == "postgres" {
        assert_eq!(text_not_in_byte_order(&db).await, Vec::<String>::new());
        let compression = db
            .conn()
            .query_one_raw(Statement::from_string(
                db.backend(),
                "SELECT attcompression::text AS c FROM pg_attribute
                 WHERE attrelid = 'outbox_events'::regclass AND attname = 'payload'",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<String>("", "c")
            .unwrap();
        // 'l' is LZ4; a server built without it keeps the default ('').
        let lz4_built = db
            .conn()
            .execute_unprepared("CREATE TEMP TABLE lz4_probe (b bytea COMPRESSION lz4)")
            .await
            .is_ok();
        assert_eq!(compression, if lz4_built { "l" } else { "" });

        // A table a later migration adds is converted at the next start,
        // its indexes with it, and its rows still found by key.
        db.conn()
            .execute_unprepared(
                "CREATE TABLE added_later (shop_id TEXT NOT NULL, nick TEXT NOT NULL, PRIMARY KEY (shop_id, nick));
                 INSERT INTO added_later VALUES ('s', '小明'), ('s', 'Zoe'), ('s', 'amy')",
            )
            .await
            .unwrap();
        assert_eq!(
            text_not_in_byte_order(&db).await,
            vec![
                "added_later.nick".to_owned(),
                "added_later.shop_id".to_owned()
            ]
        );
        huitou_customer::migrate(&db).await.unwrap();
        assert_eq!(text_not_in_byte_order(&db).await, Vec::<String>::new());
        let ordered: Vec<String> = db
            .conn()
            .query_all_raw(Statement::from_string(
                db.backend(),
                "SELECT nick FROM added_later WHERE shop_id = 's' ORDER BY nick",
            ))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String>("", "nick").unwrap())
            .collect();
        // Byte order: upper case before lower case, CJK after ASCII.
        assert_eq!(ordered, vec!["Zoe", "amy", "小明"]);
    }
    db.close().await;
    database.cleanup().await;
}

/// One `i64` column of the row that `sql` selects.
async fn one_i64(conn: &impl ConnectionTrait, sql: &str) -> Option<i64> {
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get::<Option<i64>>("", "v")
        .unwrap()
}

#[tokio::test]
async fn statistic_bands_match_the_filters_and_leave_most_orders_as_in_place_updates() {
    use huitou_customer::store::schema::{LAST_ORDER_PERIOD_MICROS, last_order_period, order_band};

    let database = TestDatabase::new("bands").await;
    let db = Database::connect(&database.config).await.unwrap();
    huitou_customer::migrate(&db).await.unwrap();
    let conn = db.conn();
    let day = 86_400_000_000i64;
    let counts = [
        0i64, 1, 4, 5, 9, 10, 19, 20, 49, 50, 99, 100, 199, 200, 499, 500, 999, 1000, 5000,
    ];
    let times = [
        None,
        Some(-day),
        Some(-1),
        Some(0),
        Some(LAST_ORDER_PERIOD_MICROS - 1),
        Some(LAST_ORDER_PERIOD_MICROS),
        Some(1_764_000_000_000_000),
        Some(1_764_000_000_000_000 + 45 * day),
    ];
    // The database's generated columns agree with the bounds the list's
    // filters compute in Rust, NULL staying NULL.
    for (i, count) in counts.iter().enumerate() {
        let at = times[i % times.len()];
        let at_sql = at.map_or("NULL".to_owned(), |t| t.to_string());
        conn.execute_unprepared(&format!(
            "INSERT INTO customers (shop_id, id, buyer_nick, order_count, last_order_at, created_at, updated_at)
             VALUES ('s', 'c{i:02}', 'n{i:02}', {count}, {at_sql}, 0, 0)"
        ))
        .await
        .unwrap();
        let band = one_i64(
            conn,
            &format!("SELECT order_band AS v FROM customers WHERE id = 'c{i:02}'"),
        )
        .await;
        assert_eq!(band, Some(order_band(*count)), "order band of {count}");
        let period = one_i64(
            conn,
            &format!("SELECT last_order_period AS v FROM customers WHERE id = 'c{i:02}'"),
        )
        .await;
        assert_eq!(period, at.map(last_order_period), "period of {at:?}");
    }

    if database.kind == "postgres" {
        use sea_orm::TransactionTrait;
        // A paid order within the buyer's band and period changes no
        // indexed value: PostgreSQL updates the row in place (HOT), with no
        // new index entry. Crossing into the next band is a plain update.
        let tx = conn.begin().await.unwrap();
        let updates =
            "SELECT n_tup_upd AS v FROM pg_stat_xact_user_tables WHERE relname = 'customers'";
        let hot =
            "SELECT n_tup_hot_upd AS v FROM pg_stat_xact_user_tables WHERE relname = 'customers'";
        let at = 1_764_000_000_000_000i64;
        tx.execute_unprepared(&format!(
            "INSERT INTO customers (shop_id, id, buyer_nick, order_count, spent_fen, last_order_at, created_at, updated_at)
             VALUES ('s', 'hot', 'hot', 2, 1000, {at}, 0, 0)"
        ))
        .await
        .unwrap();
        tx.execute_unprepared(&format!(
            "UPDATE customers SET order_count = 3, spent_fen = 2000, last_order_at = {}, updated_at = 1
             WHERE shop_id = 's' AND id = 'hot'",
            at + day
        ))
        .await
        .unwrap();
        assert_eq!(one_i64(&tx, updates).await, Some(1));
        assert_eq!(
            one_i64(&tx, hot).await,
            Some(1),
            "an order within the band is HOT"
        );
        tx.execute_unprepared(
            "UPDATE customers SET order_count = 5, updated_at = 2 WHERE shop_id = 's' AND id = 'hot'",
        )
        .await
        .unwrap();
        assert_eq!(one_i64(&tx, updates).await, Some(2));
        assert_eq!(
            one_i64(&tx, hot).await,
            Some(1),
            "crossing a band is not HOT"
        );
        tx.rollback().await.unwrap();
    }
    db.close().await;
    database.cleanup().await;
}

#[tokio::test]
async fn buyers_written_together_take_their_next_orders_in_place_together() {
    let database = TestDatabase::new("stats_room").await;
    let db = Database::connect(&database.config).await.unwrap();
    huitou_customer::migrate(&db).await.unwrap();
    if database.kind == "postgres" {
        use sea_orm::TransactionTrait;
        let conn = db.conn();
        // Buyers created together share pages, as an import's first round
        // or a day's new buyers do.
        let at = 1_764_000_000_000_000i64;
        conn.execute_unprepared(&format!(
            "INSERT INTO customers (shop_id, id, buyer_nick, order_count, item_count, spent_fen,
                                    first_order_at, last_order_at, categories, created_at, updated_at)
             SELECT 's', md5(n::text)::uuid::text, 'buyer_' || n, 1, 2, 19800, {at}, {at},
                    '{{\"童装\":1}}', {at}, {at}
             FROM generate_series(1, 300) AS n"
        ))
        .await
        .unwrap();
        // Then one transaction gives each of them an order within its band
        // and period, as a batch of recorded or imported orders does.
        let tx = conn.begin().await.unwrap();
        tx.execute_unprepared(&format!(
            "UPDATE customers SET order_count = 2, item_count = 4, spent_fen = 39600,
                                  last_order_at = {}, categories = '{{\"童装\":2}}', updated_at = {}
             WHERE shop_id = 's'",
            at + 1,
            at + 1
        ))
        .await
        .unwrap();
        let updated = one_i64(
            &tx,
            "SELECT n_tup_upd AS v FROM pg_stat_xact_user_tables WHERE relname = 'customers'",
        )
        .await;
        let in_place = one_i64(
            &tx,
            "SELECT n_tup_hot_upd AS v FROM pg_stat_xact_user_tables WHERE relname = 'customers'",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(updated, Some(300));
        // With full pages (the default fillfactor) about 2 % of these are
        // HOT: the rows beside each one are being rewritten too, and their
        // old versions cannot be pruned before the commit.
        assert!(
            in_place >= 270,
            "only {in_place} of 300 updates were in place (decision 0022)"
        );
    }
    db.close().await;
    database.cleanup().await;
}
