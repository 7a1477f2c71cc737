//! Coupons in the cache, for checkout reads.
//!
//! `ValidateCoupon` runs on every cart change and must not cost a database
//! read each time. A coupon row carries a version that every change bumps
//! in the same statement that makes the change (`version = version + 1`,
//! conditioned on the version read). Writers put the row they committed;
//! readers put what they read after a miss; the cache keeps whichever has
//! the higher version, so a slow reader can never put back a row older than
//! the latest write.
//!
//! The cache is advisory: every hold, redemption and release still decides
//! in the database on the version it read, so a stale entry can only make
//! a validation answer out of date (for at most [`TTL`]), never let a
//! coupon be used twice. The expiry sweeper removes the rows it expires;
//! a removed entry read back stale is harmless because checkout judges the
//! validity window and lapsed holds by the clock, not by the stored state.

use std::time::Duration;

use huitou_storage::cache::{get_versioned, shop_key};
use prost::Message;

use super::Store;
use super::coupons::CouponRow;
use crate::error::CouponError;

/// How long entries live: bounds what a failed cache write can leave stale.
pub const TTL: Duration = Duration::from_secs(60);

fn key(shop_id: &str, code: &str) -> String {
    shop_key(shop_id, &["coupon", code])
}

impl Store {
    /// A coupon for checkout: from the cache, else from the database (then
    /// cached). `None` when the shop has no such code.
    pub async fn coupon_for_checkout(
        &self,
        shop_id: &str,
        code: &str,
    ) -> Result<Option<CouponRow>, CouponError> {
        if let Some((_, bytes)) = get_versioned(&*self.cache, &key(shop_id, code)).await
            && let Ok(row) = CouponRow::decode(bytes.as_slice())
        {
            return Ok(Some(row));
        }
        let row = self.find_coupon(self.db.conn(), shop_id, code).await?;
        if let Some(row) = &row {
            self.remember_coupon(shop_id, row).await;
        }
        Ok(row)
    }

    /// Caches `row` unless a newer version is there already. A failed
    /// cache write is ignored: the entry it leaves lapses with [`TTL`].
    pub async fn remember_coupon(&self, shop_id: &str, row: &CouponRow) {
        let _ = self
            .cache
            .put_if_newer(
                &key(shop_id, &row.code),
                row.version,
                &row.encode_to_vec(),
                TTL,
            )
            .await;
    }

    /// Caches `row` once the transaction that wrote it commits.
    pub fn remember_after_commit(
        &self,
        tx: &huitou_storage::WriteTx,
        shop_id: &str,
        row: &CouponRow,
    ) {
        let (store, shop, row) = (self.clone(), shop_id.to_owned(), row.clone());
        tx.after_commit(Box::pin(async move {
            store.remember_coupon(&shop, &row).await;
        }));
    }

    /// Drops cached coupons a bulk change rewrote.
    pub async fn forget_coupons(&self, coupons: &[(String, String)]) {
        let keys: Vec<String> = coupons.iter().map(|(shop, code)| key(shop, code)).collect();
        let _ = self.cache.remove_many(&keys).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_row_survives_the_cache_encoding() {
        let row = CouponRow {
            code: "ABCD".into(),
            template_id: "t".into(),
            customer_id: "c".into(),
            state: 3,
            valid_from: -5,
            valid_until: 1_700_000_000_000_000,
            issue_reason: "生日".into(),
            issued_at: 7,
            order_no: "O1".into(),
            hold_until: None,
            discount_fen: 3_000,
            order_total_fen: 32_700,
            redeemed_at: Some(0),
            redeemed_by: String::new(),
            version: 9,
        };
        let back = CouponRow::decode(row.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, row);
    }
}
