//! Message templates: checked from the contract, rendered for a customer.

use std::collections::BTreeMap;

use huitou_proto::customer::v1::Channel;
use huitou_proto::notification::v1 as pb;
use huitou_runtime::{Failure, FieldViolations};

use crate::domain::text::{self, MAX_BODY};

/// Default cost of one SMS segment: 0.045 yuan (seed 000), in thousandths
/// of a fen.
pub const DEFAULT_SEGMENT_COST_MILLIFEN: i64 = 4_500;

/// A message a template produces for one customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text as the customer reads it.
    pub text: String,
    /// SMS segments (1 elsewhere).
    pub segments: i32,
    /// Cost, thousandths of a fen.
    pub cost_millifen: i64,
}

/// Whether the template is marketing.
pub fn is_marketing(t: &pb::Template) -> bool {
    t.kind == pb::MessageKind::Marketing as i32
}

/// Checks a template's fields (all but id, active and times), naming each
/// problem under `prefix`.
pub fn check(t: &pb::Template, prefix: &str) -> Result<(), Failure> {
    let mut v = FieldViolations::new();
    let f = |name: &str| format!("{prefix}{name}");
    v.check(
        (1..=60).contains(&t.name.trim().chars().count()),
        f("name"),
        "must be 1-60 characters",
    );
    let channel = Channel::try_from(t.channel).unwrap_or(Channel::Unspecified);
    v.check(
        channel != Channel::Unspecified,
        f("channel"),
        "must be CHANNEL_SMS, _WECHAT, _PLATFORM_IM, _EMAIL, _APP_PUSH or _PHONE_CALL",
    );
    let kind = pb::MessageKind::try_from(t.kind).unwrap_or(pb::MessageKind::Unspecified);
    v.check(
        kind != pb::MessageKind::Unspecified,
        f("kind"),
        "must be MESSAGE_KIND_TRANSACTIONAL or MESSAGE_KIND_MARKETING",
    );
    let body_len = t.body.chars().count();
    if !(1..=MAX_BODY).contains(&body_len) {
        v.add(f("body"), format!("must be 1-{MAX_BODY} characters"));
    } else if let Err(problem) = text::variables(&t.body) {
        v.add(f("body"), problem.to_string());
    }
    if channel == Channel::Sms {
        if let Err(why) = text::check_signature(t.signature.trim()) {
            v.add(f("signature"), why);
        }
        v.check(
            !t.body.contains(['【', '】']),
            f("body"),
            "must not carry the signature: the service adds 【signature】 in front",
        );
        if kind == pb::MessageKind::Marketing {
            v.check(
                text::has_opt_out_line(&t.body),
                f("body"),
                "a marketing SMS must end with the opt-out line 回T退订 (or 拒收请回复R)",
            );
        }
    } else {
        v.check(
            t.signature.is_empty(),
            f("signature"),
            "only SMS templates carry a signature",
        );
    }
    if channel == Channel::Email {
        v.check(
            (1..=200).contains(&t.subject.trim().chars().count()),
            f("subject"),
            "an email template needs a subject of 1-200 characters",
        );
    } else {
        v.check(
            t.subject.is_empty(),
            f("subject"),
            "only email templates have a subject",
        );
    }
    v.check(
        t.provider_template_id.len() <= 64,
        f("provider_template_id"),
        "at most 64 characters",
    );
    v.check(
        (0..=1_000_000).contains(&t.cost_per_segment_millifen),
        f("cost_per_segment_millifen"),
        "must be 0-1000000 (thousandths of a fen; 0 for the default 4500)",
    );
    v.finish()
}

/// Renders `t` with `values`; a missing variable is an error naming it
/// under `field`.
pub fn render(
    t: &pb::Template,
    values: &BTreeMap<String, String>,
    field: &str,
) -> Result<Rendered, Failure> {
    let body = text::render(&t.body, values).map_err(|name| {
        Failure::invalid_field(format!("{field}.{name}"), "is required by the template")
    })?;
    Ok(finish(t, body))
}

/// The text as sent and its cost.
fn finish(t: &pb::Template, body: String) -> Rendered {
    if t.channel == Channel::Sms as i32 {
        let text = text::signed(t.signature.trim(), &body);
        let segments = text::segments(&text);
        let per = if t.cost_per_segment_millifen > 0 {
            t.cost_per_segment_millifen
        } else {
            DEFAULT_SEGMENT_COST_MILLIFEN
        };
        Rendered {
            text,
            segments,
            cost_millifen: per * i64::from(segments),
        }
    } else {
        Rendered {
            text: body,
            segments: 1,
            cost_millifen: t.cost_per_segment_millifen,
        }
    }
}

/// Checks the variables a caller gave for `t`: every one the text uses
/// must be there, and no other. Problems are named `{field}.{name}`.
pub fn check_variables(
    t: &pb::Template,
    given: &BTreeMap<String, String>,
    field: &str,
    v: &mut FieldViolations,
) {
    let used = text::variables(&t.body).unwrap_or_default();
    for name in given.keys() {
        if !used.iter().any(|u| u == name) {
            v.add(
                format!("{field}.{name}"),
                format!("the template does not use it; it uses: {}", used.join(", ")),
            );
        }
    }
    for (name, value) in given {
        v.check(
            value.chars().count() <= 200,
            format!("{field}.{name}"),
            "at most 200 characters",
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sms(kind: pb::MessageKind, body: &str) -> pb::Template {
        pb::Template {
            name: "上新".into(),
            channel: Channel::Sms as i32,
            kind: kind as i32,
            body: body.into(),
            signature: "回头客".into(),
            ..Default::default()
        }
    }

    fn fields(f: Failure) -> Vec<String> {
        f.violations.iter().map(|v| v.field.clone()).collect()
    }

    #[test]
    fn marketing_sms_needs_the_opt_out_line_and_a_signature() {
        let ok = sms(
            pb::MessageKind::Marketing,
            "{{customer_name}}，双11满299减30，回T退订",
        );
        assert!(check(&ok, "template.").is_ok());
        let no_line = sms(pb::MessageKind::Marketing, "双11满299减30");
        assert_eq!(
            fields(check(&no_line, "template.").unwrap_err()),
            vec!["template.body"]
        );
        let transactional = sms(pb::MessageKind::Transactional, "您的包裹已发出");
        assert!(check(&transactional, "template.").is_ok());
        let unsigned = pb::Template {
            signature: String::new(),
            ..transactional.clone()
        };
        assert_eq!(
            fields(check(&unsigned, "template.").unwrap_err()),
            vec!["template.signature"]
        );
        let unknown = sms(pb::MessageKind::Transactional, "{{nickname}} 您好");
        assert_eq!(
            fields(check(&unknown, "template.").unwrap_err()),
            vec!["template.body"]
        );
        let email = pb::Template {
            channel: Channel::Email as i32,
            signature: String::new(),
            ..transactional
        };
        assert_eq!(
            fields(check(&email, "template.").unwrap_err()),
            vec!["template.subject"]
        );
    }

    #[test]
    fn rendering_signs_counts_and_prices() {
        let t = sms(pb::MessageKind::Transactional, "单号{{tracking_number}}");
        let values = BTreeMap::from([("tracking_number".to_owned(), "SF1".to_owned())]);
        let r = render(&t, &values, "variables").unwrap();
        assert_eq!(r.text, "【回头客】单号SF1");
        assert_eq!(r.segments, 1);
        assert_eq!(r.cost_millifen, 4_500);
        let long = sms(pb::MessageKind::Transactional, &"字".repeat(100));
        let r = render(&long, &BTreeMap::new(), "variables").unwrap();
        assert_eq!(r.segments, 2);
        assert_eq!(r.cost_millifen, 9_000);
        let missing = render(&t, &BTreeMap::new(), "variables").unwrap_err();
        assert_eq!(fields(missing), vec!["variables.tracking_number"]);
        let mut v = FieldViolations::new();
        let extra = BTreeMap::from([("coupon_code".to_owned(), "X".to_owned())]);
        check_variables(&t, &extra, "variables", &mut v);
        assert_eq!(
            fields(v.into_failure()),
            vec!["variables.coupon_code".to_owned()]
        );
    }
}
