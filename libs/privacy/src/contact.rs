//! Contact values: what is acceptable, the one normal form used for lookups,
//! and the masked form shown to anyone who has not revealed the value.

/// A phone number in its normal form: `+` and digits (E.164). Mainland
/// mobiles are `+86` and 11 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    /// Accepts an 11-digit mainland mobile (`13812345678`, spaces or dashes
    /// allowed) or E.164 (`+8613812345678`, `+447911123456`).
    pub fn parse(input: &str) -> Result<Phone, &'static str> {
        let compact: String = input.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if compact.is_empty() {
            return Err("must not be empty");
        }
        if let Some(digits) = compact.strip_prefix('+') {
            if !digits.bytes().all(|b| b.is_ascii_digit()) || !(8..=15).contains(&digits.len()) {
                return Err("must be an 11-digit mainland mobile or E.164 (+ and 8-15 digits)");
            }
            if digits.starts_with('0') {
                return Err("E.164 country codes do not start with 0");
            }
            if let Some(national) = digits.strip_prefix("86")
                && !is_mainland_mobile(national)
            {
                return Err("a +86 number must be an 11-digit mobile starting 13-19");
            }
            return Ok(Phone(compact));
        }
        if is_mainland_mobile(&compact) {
            return Ok(Phone(format!("+86{compact}")));
        }
        Err("must be an 11-digit mainland mobile (1[3-9] and 9 digits) or E.164 (+8613812345678)")
    }

    /// The normal form, e.g. `+8613812345678`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form people know: the 11 digits for mainland mobiles, E.164 otherwise.
    pub fn display(&self) -> &str {
        self.0.strip_prefix("+86").unwrap_or(&self.0)
    }
}

fn is_mainland_mobile(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && b.iter().all(u8::is_ascii_digit)
}

/// Checks an email address: one `@`, a local part and a dotted domain.
pub fn check_email(input: &str) -> Result<(), &'static str> {
    if input.len() > 254 {
        return Err("must be at most 254 characters");
    }
    let (local, domain) = input.split_once('@').ok_or("must contain @")?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err("must be local@domain");
    }
    let labels_ok = domain
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !domain.contains('.') || !labels_ok {
        return Err("the domain must be like example.com");
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces");
    }
    Ok(())
}

/// Checks a WeChat id: 6-20 characters, letters, digits, `-` or `_`,
/// starting with a letter.
pub fn check_wechat_id(input: &str) -> Result<(), &'static str> {
    let ok_len = (6..=20).contains(&input.len());
    let first_letter = input
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic());
    let ok_chars = input
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok_len && first_letter && ok_chars {
        Ok(())
    } else {
        Err("must be 6-20 letters, digits, '-' or '_', starting with a letter")
    }
}

/// `138****1234` for mainland mobiles; for other numbers the country code
/// prefix and the last 4 digits.
pub fn mask_phone(phone: &Phone) -> String {
    let shown = phone.display();
    let chars: Vec<char> = shown.chars().collect();
    let keep_head = if shown.starts_with('+') {
        3
    } else {
        3.min(chars.len())
    };
    let keep_tail = 4.min(chars.len().saturating_sub(keep_head));
    let hidden = chars.len() - keep_head - keep_tail;
    let mut out: String = chars[..keep_head].iter().collect();
    out.extend(std::iter::repeat_n('*', hidden.max(1)));
    out.extend(&chars[chars.len() - keep_tail..]);
    out
}

/// `张*` / `欧阳**`: the first character, the rest starred.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => {
            let rest = chars.count().max(1);
            std::iter::once(first)
                .chain(std::iter::repeat_n('*', rest))
                .collect()
        }
    }
}

/// `a***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// `wx****d`: the first two and the last character.
pub fn mask_wechat_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() < 4 {
        return "****".into();
    }
    let head: String = chars[..2].iter().collect();
    format!("{head}****{}", chars[chars.len() - 1])
}

/// The first 6 characters (province and city, usually), then `****`.
pub fn mask_address(address: &str) -> String {
    let head: String = address.chars().take(6).collect();
    if address.chars().count() <= 6 {
        let shorter: String = address.chars().take(2).collect();
        return format!("{shorter}****");
    }
    format!("{head}****")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mainland_and_e164_phones_normalise_to_one_form() {
        let a = Phone::parse("13812345678").expect("mainland");
        let b = Phone::parse("+86 138-1234-5678").expect("e164");
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "+8613812345678");
        assert_eq!(mask_phone(&a), "138****5678");
        let uk = Phone::parse("+447911123456").expect("uk");
        assert_eq!(mask_phone(&uk), "+44******3456");
    }

    #[test]
    fn non_mobiles_are_refused() {
        for bad in [
            "",
            "12345678901",
            "1381234567",
            "138123456789",
            "+8612345678901",
            "+0123456789",
            "02112345678",
            "abc",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn masks_hide_most_of_each_value() {
        assert_eq!(mask_name("张三"), "张*");
        assert_eq!(mask_name("欧阳娜娜"), "欧***");
        assert_eq!(mask_email("alice@example.com"), "a***@example.com");
        assert_eq!(mask_wechat_id("wxid_abcdef"), "wx****f");
        assert_eq!(
            mask_address("浙江省杭州市西湖区文三路 1 号"),
            "浙江省杭州市****"
        );
        assert_eq!(mask_address("杭州"), "杭州****");
    }

    #[test]
    fn emails_and_wechat_ids_are_checked() {
        assert!(check_email("a.b@example.com").is_ok());
        for bad in [
            "",
            "a",
            "a@b",
            "@b.com",
            "a@@b.com",
            "a b@c.com",
            "a@b..com",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert!(check_wechat_id("wxid_abc123").is_ok());
        for bad in [
            "abc",
            "1abcdef",
            "abc def1",
            "a_very_long_wechat_identifier",
        ] {
            assert!(check_wechat_id(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn every_mainland_mobile_parses_and_masks_to_head_and_tail(second in 3u8..=9, rest in "[0-9]{9}") {
            let raw = format!("1{second}{rest}");
            let phone = Phone::parse(&raw).expect("valid mobile");
            let masked = mask_phone(&phone);
            prop_assert_eq!(&masked[..3], &raw[..3]);
            prop_assert_eq!(&masked[7..], &raw[7..]);
            prop_assert_eq!(&masked[3..7], "****");
            prop_assert_eq!(Phone::parse(&format!("+86{raw}")).expect("e164"), phone);
        }

        #[test]
        fn masks_never_contain_the_whole_value(name in "[\\p{Han}a-zA-Z]{2,12}", local in "[a-z]{2,10}") {
            prop_assert_ne!(mask_name(&name), name.clone());
            let email = format!("{local}@example.com");
            let masked = mask_email(&email);
            let masked_local = masked.split('@').next().unwrap_or_default();
            prop_assert!(!masked_local.contains(&local), "{masked}");
        }
    }
}
