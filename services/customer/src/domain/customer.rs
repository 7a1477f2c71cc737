//! Customers, their contact details, consent, tags and attributes.

use std::collections::BTreeMap;

use huitou_privacy::contact::{self, Phone};
use huitou_runtime::FieldViolations;
use serde::{Deserialize, Serialize};

use super::order::Stats;

/// Most tags one customer may carry.
pub const MAX_TAGS: usize = 64;
/// Most attributes one customer may carry.
pub const MAX_ATTRIBUTES: usize = 64;

/// A personal contact field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContactField {
    /// Name.
    Name,
    /// Mobile phone.
    Phone,
    /// Postal address.
    Address,
    /// WeChat id.
    WechatId,
    /// Email.
    Email,
}

impl ContactField {
    /// Every field.
    pub const ALL: [ContactField; 5] = [
        Self::Name,
        Self::Phone,
        Self::Address,
        Self::WechatId,
        Self::Email,
    ];

    /// From the wire number (huitou.customer.v1.ContactField).
    pub fn from_i32(n: i32) -> Option<Self> {
        Some(match n {
            1 => Self::Name,
            2 => Self::Phone,
            3 => Self::Address,
            4 => Self::WechatId,
            5 => Self::Email,
            _ => return None,
        })
    }

    /// The wire number.
    pub fn as_i32(self) -> i32 {
        match self {
            Self::Name => 1,
            Self::Phone => 2,
            Self::Address => 3,
            Self::WechatId => 4,
            Self::Email => 5,
        }
    }

    /// The field's name in requests, events and sealing contexts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Phone => "phone",
            Self::Address => "address",
            Self::WechatId => "wechat_id",
            Self::Email => "email",
        }
    }

    /// Checks a new value and returns its stored form.
    pub fn normalize(self, value: &str) -> Result<String, &'static str> {
        let value = value.trim();
        match self {
            Self::Name => text(value, 1, 64).map(str::to_owned),
            Self::Phone => Phone::parse(value).map(|p| p.as_str().to_owned()),
            Self::Address => text(value, 2, 256).map(str::to_owned),
            Self::WechatId => contact::check_wechat_id(value).map(|_| value.to_owned()),
            Self::Email => contact::check_email(value).map(|_| value.to_ascii_lowercase()),
        }
    }

    /// The masked form of a stored value.
    pub fn mask(self, stored: &str) -> String {
        match self {
            Self::Name => contact::mask_name(stored),
            Self::Phone => Phone::parse(stored)
                .map(|p| contact::mask_phone(&p))
                .unwrap_or_else(|_| "****".into()),
            Self::Address => contact::mask_address(stored),
            Self::WechatId => contact::mask_wechat_id(stored),
            Self::Email => contact::mask_email(stored),
        }
    }

    /// How a stored value is shown when revealed.
    pub fn display(self, stored: &str) -> String {
        match self {
            Self::Phone => Phone::parse(stored)
                .map(|p| p.display().to_owned())
                .unwrap_or_else(|_| stored.to_owned()),
            _ => stored.to_owned(),
        }
    }
}

/// Checks free text: trimmed length in characters, no control characters.
pub fn text(value: &str, min: usize, max: usize) -> Result<&str, &'static str> {
    let n = value.chars().count();
    if n < min {
        return Err(if min <= 1 {
            "must not be empty"
        } else {
            "is too short"
        });
    }
    if n > max {
        return Err("is too long");
    }
    if value.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters");
    }
    Ok(value)
}

/// Checks a shop identifier (buyer nick, order number, SKU): 1-`max`
/// characters, no control characters, no leading or trailing spaces.
pub fn identifier(value: &str, max: usize) -> Result<&str, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if value.trim() != value || value.chars().any(char::is_control) {
        return Err("must not have control characters or surrounding spaces".into());
    }
    Ok(value)
}

/// A birthday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Birthday {
    /// Year or 0.
    pub year: i32,
    /// 1-12.
    pub month: i32,
    /// 1-31.
    pub day: i32,
}

impl Birthday {
    /// Checks the date (29 February only in leap years when the year is known).
    pub fn check(&self) -> Result<(), &'static str> {
        if self.year != 0 && !(1900..=2100).contains(&self.year) {
            return Err("year must be 0 (unknown) or 1900-2100");
        }
        let leap = self.year == 0
            || (self.year % 4 == 0 && (self.year % 100 != 0 || self.year % 400 == 0));
        let days = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return Err("month must be 1-12"),
        };
        if !(1..=days).contains(&self.day) {
            return Err("day is not in that month");
        }
        Ok(())
    }
}

/// A typed attribute value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v")]
pub enum Attribute {
    /// Text.
    Text(String),
    /// Whole number.
    Int(i64),
    /// Yes or no.
    Bool(bool),
    /// Time, µs.
    Time(i64),
}

impl Attribute {
    /// The type's name, fixed per shop by the first value stored.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Text(_) => "text",
            Self::Int(_) => "int",
            Self::Bool(_) => "bool",
            Self::Time(_) => "time",
        }
    }
}

/// Checks an attribute name: 1-32 of letters, digits and `_`, starting with a letter.
pub fn check_attribute_name(name: &str) -> Result<(), &'static str> {
    let ok = (1..=32).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("must be 1-32 letters, digits or '_', starting with a letter")
    }
}

/// Checks a tag: 1-32 characters, no control characters or commas.
pub fn check_tag(tag: &str) -> Result<(), &'static str> {
    text(tag, 1, 32)?;
    if tag.trim() != tag || tag.contains(',') {
        return Err("must not have surrounding spaces or commas");
    }
    Ok(())
}

/// Marketing consent on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Granted or withdrawn.
    pub granted: bool,
    /// Where the decision came from.
    pub source: String,
    /// When, µs.
    pub decided_at: i64,
}

/// Channels, by wire number (huitou.customer.v1.Channel).
pub fn channel_name(channel: i32) -> Option<&'static str> {
    Some(match channel {
        1 => "sms",
        2 => "wechat",
        3 => "platform_im",
        4 => "email",
        5 => "app_push",
        6 => "phone_call",
        _ => return None,
    })
}

/// A customer as read back: contact details masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// Id.
    pub id: String,
    /// Platform buyer id.
    pub buyer_nick: String,
    /// Masked contact details by field.
    pub masked: BTreeMap<ContactField, String>,
    /// Birthday.
    pub birthday: Option<Birthday>,
    /// Gender wire number.
    pub gender: i32,
    /// Region.
    pub region: String,
    /// Purchase statistics.
    pub stats: Stats,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, Attribute>,
    /// Consent by channel wire number.
    pub consents: BTreeMap<i32, Consent>,
    /// Created, µs.
    pub created_at: i64,
    /// Updated, µs.
    pub updated_at: i64,
    /// Erased, µs.
    pub erased_at: Option<i64>,
}

/// Profile fields to change; `None` leaves a field as it is, an empty
/// contact value clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChanges {
    /// Contact fields: normalised value, or empty to clear.
    pub contact: BTreeMap<ContactField, String>,
    /// Birthday.
    pub birthday: Option<Birthday>,
    /// Gender wire number.
    pub gender: Option<i32>,
    /// Region.
    pub region: Option<String>,
}

impl ProfileChanges {
    /// Checks and normalises contact values given as `(field, raw value)`.
    pub fn contact_from(
        values: impl IntoIterator<Item = (ContactField, Option<String>)>,
        violations: &mut FieldViolations,
        prefix: &str,
    ) -> BTreeMap<ContactField, String> {
        let mut out = BTreeMap::new();
        for (field, value) in values {
            let Some(raw) = value else { continue };
            if raw.trim().is_empty() {
                out.insert(field, String::new());
                continue;
            }
            match field.normalize(&raw) {
                Ok(v) => {
                    out.insert(field, v);
                }
                Err(why) => violations.add(format!("{prefix}{}", field.name()), why),
            }
        }
        out
    }

    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.contact.is_empty()
            && self.birthday.is_none()
            && self.gender.is_none()
            && self.region.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_values_normalise_and_mask() {
        assert_eq!(
            ContactField::Phone.normalize(" 13812345678 "),
            Ok("+8613812345678".into())
        );
        assert_eq!(ContactField::Phone.mask("+8613812345678"), "138****5678");
        assert_eq!(ContactField::Phone.display("+8613812345678"), "13812345678");
        assert_eq!(
            ContactField::Email.normalize("Alice@Example.COM"),
            Ok("alice@example.com".into())
        );
        assert!(ContactField::Phone.normalize("12345").is_err());
        assert!(ContactField::Name.normalize(&"名".repeat(65)).is_err());
    }

    #[test]
    fn birthdays_are_real_dates() {
        let b = |year, month, day| Birthday { year, month, day };
        assert!(b(0, 2, 29).check().is_ok());
        assert!(b(2024, 2, 29).check().is_ok());
        assert!(b(2023, 2, 29).check().is_err());
        assert!(b(1990, 4, 31).check().is_err());
        assert!(b(1990, 13, 1).check().is_err());
        assert!(b(1800, 1, 1).check().is_err());
    }

    #[test]
    fn names_tags_and_identifiers_are_checked() {
        assert!(check_attribute_name("vip_level").is_ok());
        assert!(check_attribute_name("1abc").is_err());
        assert!(check_attribute_name("has space").is_err());
        assert!(check_tag("高价值").is_ok());
        assert!(check_tag("a,b").is_err());
        assert!(check_tag(" x").is_err());
        assert!(identifier("tb_buyer_01", 64).is_ok());
        assert!(identifier("", 64).is_err());
        assert!(identifier(" padded", 64).is_err());
        assert!(identifier(&"x".repeat(65), 64).is_err());
    }
}
