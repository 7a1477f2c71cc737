//! Page tokens (AIP-158): opaque to callers, bound to the filters they were
//! made with, so a token cannot be replayed against different filters.

use crate::auth::hex;
use crate::{Failure, FieldViolations};
use sha2::{Digest, Sha256};

/// Default page size.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size.
pub const MAX_PAGE_SIZE: usize = 500;

/// Checks a page size: 0 means the default, otherwise 1-500.
pub fn page_size(requested: i32, violations: &mut FieldViolations) -> usize {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n if (1..=MAX_PAGE_SIZE as i32).contains(&n) => n as usize,
        _ => {
            violations.add(
                "page_size",
                format!("must be 0 (default {DEFAULT_PAGE_SIZE}) or 1-{MAX_PAGE_SIZE}"),
            );
            DEFAULT_PAGE_SIZE
        }
    }
}

/// The fingerprint of a query's filters.
pub fn fingerprint(filters: &str) -> String {
    hex(&Sha256::digest(filters.as_bytes())[..6])
}

/// A token resuming after `last_key` under filters `fingerprint`.
pub fn encode(last_key: &str, fingerprint: &str) -> String {
    hex(format!("{fingerprint}|{last_key}").as_bytes())
}

/// Cuts `rows` (fetched as `size + 1` to see whether more follow) to the
/// page and returns the token of the next page, empty on the last.
pub fn next_page<T>(
    rows: &mut Vec<T>,
    size: usize,
    fingerprint: &str,
    key: impl Fn(&T) -> &str,
) -> String {
    if rows.len() <= size {
        return String::new();
    }
    rows.truncate(size);
    rows.last()
        .map(|r| encode(key(r), fingerprint))
        .unwrap_or_default()
}

/// The key to resume after, or `None` for the first page.
pub fn decode(token: &str, fingerprint: &str) -> Result<Option<String>, Failure> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Failure::invalid_field(
            "page_token",
            "is not a token from this list with these filters",
        )
    };
    if !token.len().is_multiple_of(2) || token.len() > 512 {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    let (fp, key) = text.split_once('|').ok_or_else(bad)?;
    if fp != fingerprint || key.is_empty() {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_filters() {
        let fp = fingerprint("tag=vip");
        let token = encode("0193-abc", &fp);
        assert_eq!(
            decode(&token, &fp).expect("decode"),
            Some("0193-abc".into())
        );
        assert!(decode(&token, &fingerprint("tag=other")).is_err());
        assert!(decode("zz", &fp).is_err());
        assert_eq!(decode("", &fp).expect("empty"), None);
    }

    #[test]
    fn the_next_page_starts_after_the_last_row_shown() {
        let fp = fingerprint("x");
        let mut rows = vec!["a", "b", "c"];
        let token = next_page(&mut rows, 2, &fp, |r| r);
        assert_eq!(rows, vec!["a", "b"]);
        assert_eq!(decode(&token, &fp).expect("token"), Some("b".into()));
        let mut last = vec!["a", "b"];
        assert_eq!(next_page(&mut last, 2, &fp, |r| r), "");
        assert_eq!(last.len(), 2);
    }

    #[test]
    fn page_sizes_are_bounded() {
        let mut v = FieldViolations::new();
        assert_eq!(page_size(0, &mut v), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10, &mut v), 10);
        assert!(v.is_empty());
        page_size(501, &mut v);
        page_size(-1, &mut v);
        assert!(!v.is_empty());
    }
}
