//! Template text: the variables a template may use, rendering, the SMS
//! signature and opt-out line, and segment counting.

use std::collections::BTreeMap;

/// Variables a template may use, with the sample value a preview shows.
pub const VARIABLES: &[(&str, &str)] = &[
    ("customer_name", "王女士"),
    ("buyer_nick", "tb_wang88"),
    ("shop_name", "回头客旗舰店"),
    ("order_no", "E20261124001"),
    ("carrier", "顺丰速运"),
    ("tracking_number", "SF1234567890"),
    ("coupon_code", "7KQ2-M9XH-4TRA"),
    ("coupon_name", "满299减30"),
    ("expire_date", "11月27日"),
    ("amount_yuan", "30"),
    ("tier_name", "黄金会员"),
    ("points", "1200"),
];

/// Opt-out lines a marketing SMS may end with (seed 000: 回T退订).
pub const OPT_OUT_LINES: &[&str] = &["回T退订", "退订回T", "拒收请回复R"];

/// Characters in a single SMS.
pub const SINGLE_SEGMENT: usize = 70;
/// Characters per part of a split SMS (the rest carries the join header).
pub const SPLIT_SEGMENT: usize = 67;

/// The longest template text.
pub const MAX_BODY: usize = 2000;

/// What is wrong with a template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextProblem {
    /// `{{name}}` names no known variable.
    UnknownVariable(String),
    /// A `{{` without its `}}`.
    Unclosed,
}

impl std::fmt::Display for TextProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextProblem::UnknownVariable(v) => write!(
                f,
                "uses unknown variable {{{{{v}}}}}; known: {}",
                VARIABLES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            TextProblem::Unclosed => f.write_str("has a {{ without its }}"),
        }
    }
}

/// A piece of template text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn pieces(body: &str) -> Result<Vec<Piece<'_>>, TextProblem> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or(TextProblem::Unclosed)?;
        out.push(Piece::Var(after[..close].trim()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// The variables `body` uses, in order of first use; an error for an
/// unknown one.
pub fn variables(body: &str) -> Result<Vec<String>, TextProblem> {
    let mut used: Vec<String> = Vec::new();
    for p in pieces(body)? {
        if let Piece::Var(name) = p {
            if !VARIABLES.iter().any(|(n, _)| *n == name) {
                return Err(TextProblem::UnknownVariable(name.to_owned()));
            }
            if !used.iter().any(|u| u == name) {
                used.push(name.to_owned());
            }
        }
    }
    Ok(used)
}

/// The text with every variable replaced; a missing value is an error
/// naming it.
pub fn render(body: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(body.len() + 32);
    for p in pieces(body).map_err(|e| e.to_string())? {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => match values.get(name) {
                Some(v) => out.push_str(v),
                None => return Err(name.to_owned()),
            },
        }
    }
    Ok(out)
}

/// Fills the variables `body` uses and `given` lacks with sample values.
pub fn with_samples(body: &str, given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut values = given.clone();
    for (name, sample) in VARIABLES {
        if body.contains(name) {
            values
                .entry((*name).to_owned())
                .or_insert_with(|| (*sample).to_owned());
        }
    }
    values
}

/// The SMS as sent: the signature in 【】 in front of the text.
pub fn signed(signature: &str, text: &str) -> String {
    format!("【{signature}】{text}")
}

/// Whether a marketing SMS text ends with an opt-out line.
pub fn has_opt_out_line(body: &str) -> bool {
    let end = body.trim_end();
    OPT_OUT_LINES.iter().any(|l| end.ends_with(l))
}

/// Segments an SMS of `text` takes: one up to 70 characters, else one per
/// 67. Characters, not bytes: a Chinese character counts as one.
pub fn segments(text: &str) -> i32 {
    let n = text.chars().count();
    if n <= SINGLE_SEGMENT {
        1
    } else {
        n.div_ceil(SPLIT_SEGMENT) as i32
    }
}

/// Checks an SMS signature: 2-12 characters, no brackets.
pub fn check_signature(signature: &str) -> Result<(), &'static str> {
    let n = signature.chars().count();
    if !(2..=12).contains(&n) {
        return Err("must be 2-12 characters (shown as 【signature】)");
    }
    if signature.contains(['【', '】', '[', ']']) {
        return Err("must not contain brackets; the service adds 【】");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn variables_are_known_and_rendered() {
        let body = "亲，您的订单{{order_no}}已由{{carrier}}发出，单号{{ tracking_number }}。";
        assert_eq!(
            variables(body).unwrap(),
            vec!["order_no", "carrier", "tracking_number"]
        );
        let text = render(
            body,
            &values(&[
                ("order_no", "E1"),
                ("carrier", "顺丰"),
                ("tracking_number", "SF1"),
            ]),
        )
        .unwrap();
        assert_eq!(text, "亲，您的订单E1已由顺丰发出，单号SF1。");
        assert_eq!(
            render(body, &values(&[("order_no", "E1")])),
            Err("carrier".to_owned())
        );
        assert_eq!(
            variables("{{nickname}}"),
            Err(TextProblem::UnknownVariable("nickname".into()))
        );
        assert_eq!(variables("{{order_no"), Err(TextProblem::Unclosed));
        assert!(with_samples(body, &BTreeMap::new()).contains_key("carrier"));
    }

    #[test]
    fn opt_out_and_signature() {
        assert!(has_opt_out_line("双11全场满299减30，回T退订"));
        assert!(has_opt_out_line("上新啦 拒收请回复R  "));
        assert!(!has_opt_out_line("上新啦"));
        assert!(check_signature("回头客").is_ok());
        assert!(check_signature("回").is_err());
        assert!(check_signature("【回头客】").is_err());
        assert_eq!(signed("回头客", "你好"), "【回头客】你好");
    }

    #[test]
    fn segments_follow_the_70_67_rule() {
        assert_eq!(segments(""), 1);
        assert_eq!(segments(&"字".repeat(70)), 1);
        assert_eq!(segments(&"字".repeat(71)), 2);
        assert_eq!(segments(&"字".repeat(134)), 2);
        assert_eq!(segments(&"字".repeat(135)), 3);
    }

    proptest! {
        /// Splitting never packs more than 67 characters in a part, and
        /// never uses a part more than needed.
        #[test]
        fn segments_are_the_fewest_that_fit(n in 0usize..2000) {
            let s = segments(&"a".repeat(n)) as usize;
            if n <= 70 {
                prop_assert_eq!(s, 1);
            } else {
                prop_assert!(s * 67 >= n);
                prop_assert!((s - 1) * 67 < n);
            }
        }

        /// Rendering with every used variable given leaves no {{ behind
        /// and keeps the literal text around them.
        #[test]
        fn rendering_replaces_every_variable(
            before in "[a-z一-龥 ]{0,20}",
            after in "[a-z一-龥 ]{0,20}",
            value in "[A-Z0-9]{0,12}",
        ) {
            let body = format!("{before}{{{{order_no}}}}{after}");
            let text = render(&body, &values(&[("order_no", &value)])).unwrap();
            prop_assert_eq!(text, format!("{before}{value}{after}"));
        }
    }
}
