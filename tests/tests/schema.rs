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
