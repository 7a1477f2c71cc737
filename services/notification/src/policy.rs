//! A shop's send policy and holiday calendar: checked from the contract,
//! with the defaults a new shop gets.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use chrono_tz::Tz;
use huitou_proto::notification::v1 as pb;
use huitou_runtime::{Failure, FieldViolations};

use crate::domain::rules::{Cap, default_caps};
use crate::domain::window::{Calendar, DayPlan, Window, check_windows, default_windows};

/// The shop time zone unless set.
pub const DEFAULT_ZONE: Tz = chrono_tz::Asia::Shanghai;

/// How a shop sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Time zone of windows, holidays and days.
    pub zone: Tz,
    /// Daily windows, sorted.
    pub windows: Vec<Window>,
    /// Aim marketing at a window's last hour.
    pub aim_last_hour: bool,
    /// Marketing caps per customer and channel.
    pub caps: Vec<Cap>,
    /// No same template to the same customer within this many days.
    pub duplicate_days: i32,
    /// Attempts before dead-lettering.
    pub max_attempts: i32,
    /// Minutes before a 催付 reminder.
    pub unpaid_reminder_minutes: i32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            zone: DEFAULT_ZONE,
            windows: default_windows(),
            aim_last_hour: false,
            caps: default_caps(),
            duplicate_days: 7,
            max_attempts: 5,
            unpaid_reminder_minutes: 60,
        }
    }
}

fn windows_in(given: &[pb::SendWindow], field: &str, v: &mut FieldViolations) -> Vec<Window> {
    let mut out = Vec::with_capacity(given.len());
    for (i, w) in given.iter().enumerate() {
        match Window::new(w.start_minute, w.end_minute) {
            Ok(w) => out.push(w),
            Err(why) => v.add(format!("{field}[{i}]"), why),
        }
    }
    if out.len() == given.len()
        && let Err((i, why)) = check_windows(&mut out)
    {
        v.add(format!("{field}[{i}]"), why);
    }
    out
}

fn windows_out(windows: &[Window]) -> Vec<pb::SendWindow> {
    windows
        .iter()
        .map(|w| pb::SendWindow {
            start_minute: w.start.into(),
            end_minute: w.end.into(),
        })
        .collect()
}

/// Parses an IANA zone name.
pub fn zone(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok()
}

impl Policy {
    /// A policy from the contract, every problem named by its field.
    pub fn check(given: Option<&pb::SendPolicy>) -> Result<Policy, Failure> {
        let Some(p) = given else {
            return Err(Failure::invalid_field("policy", "is required"));
        };
        let mut v = FieldViolations::new();
        let zone = zone(&p.time_zone);
        v.check(
            zone.is_some(),
            "policy.time_zone",
            "must be an IANA time zone such as Asia/Shanghai",
        );
        v.check(
            !p.windows.is_empty(),
            "policy.windows",
            "must name at least one window (a shop that never sends can pause its templates)",
        );
        let windows = windows_in(&p.windows, "policy.windows", &mut v);
        let mut caps = Vec::with_capacity(p.caps.len());
        for (i, c) in p.caps.iter().enumerate() {
            v.check(
                (1..=365).contains(&c.days),
                format!("policy.caps[{i}].days"),
                "must be 1-365",
            );
            v.check(
                (1..=1000).contains(&c.max_messages),
                format!("policy.caps[{i}].max_messages"),
                "must be 1-1000",
            );
            caps.push(Cap {
                days: c.days,
                max: c.max_messages,
            });
        }
        v.check(
            (0..=365).contains(&p.duplicate_days),
            "policy.duplicate_days",
            "must be 0-365",
        );
        v.check(
            (1..=20).contains(&p.max_attempts),
            "policy.max_attempts",
            "must be 1-20",
        );
        v.check(
            (5..=4320).contains(&p.unpaid_reminder_minutes),
            "policy.unpaid_reminder_minutes",
            "must be 5-4320",
        );
        v.finish()?;
        Ok(Policy {
            zone: zone.unwrap_or(DEFAULT_ZONE),
            windows,
            aim_last_hour: p.aim_last_hour,
            caps,
            duplicate_days: p.duplicate_days,
            max_attempts: p.max_attempts,
            unpaid_reminder_minutes: p.unpaid_reminder_minutes,
        })
    }

    /// The contract form.
    pub fn to_pb(&self) -> pb::SendPolicy {
        pb::SendPolicy {
            time_zone: self.zone.name().to_owned(),
            windows: windows_out(&self.windows),
            aim_last_hour: self.aim_last_hour,
            caps: self
                .caps
                .iter()
                .map(|c| pb::FrequencyCap {
                    days: c.days,
                    max_messages: c.max,
                })
                .collect(),
            duplicate_days: self.duplicate_days,
            max_attempts: self.max_attempts,
            unpaid_reminder_minutes: self.unpaid_reminder_minutes,
        }
    }

    /// The calendar of this policy with `holidays`.
    pub fn calendar(&self, holidays: &[pb::Holiday]) -> Calendar {
        let mut days = BTreeMap::new();
        for h in holidays {
            if let Some(date) = parse_date(&h.date) {
                let plan = if h.quiet {
                    DayPlan::Quiet
                } else if h.windows.is_empty() {
                    continue;
                } else {
                    let mut v = FieldViolations::new();
                    DayPlan::Windows(windows_in(&h.windows, "windows", &mut v))
                };
                days.insert(date, plan);
            }
        }
        Calendar {
            zone: self.zone,
            windows: self.windows.clone(),
            holidays: days,
        }
    }
}

/// Parses YYYY-MM-DD.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// Checks a holiday from the contract.
pub fn check_holiday(given: Option<&pb::Holiday>) -> Result<pb::Holiday, Failure> {
    let Some(h) = given else {
        return Err(Failure::invalid_field("holiday", "is required"));
    };
    let mut v = FieldViolations::new();
    v.check(
        parse_date(&h.date).is_some(),
        "holiday.date",
        "must be a date YYYY-MM-DD",
    );
    v.check(
        (1..=30).contains(&h.name.trim().chars().count()),
        "holiday.name",
        "must be 1-30 characters",
    );
    let windows = windows_in(&h.windows, "holiday.windows", &mut v);
    v.check(
        !h.quiet || h.windows.is_empty(),
        "holiday.windows",
        "a quiet day has no windows; give windows or quiet, not both",
    );
    v.check(
        h.greeting_template_id.len() <= 64,
        "holiday.greeting_template_id",
        "at most 64 characters",
    );
    v.finish()?;
    let mut h = h.clone();
    h.name = h.name.trim().to_owned();
    h.windows = windows_out(&windows);
    Ok(h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn fields(f: Failure) -> Vec<String> {
        f.violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect()
    }

    #[test]
    fn defaults_round_trip_and_bad_windows_are_named() {
        let p = Policy::default();
        assert_eq!(Policy::check(Some(&p.to_pb())).unwrap(), p);
        let mut bad = p.to_pb();
        bad.windows.push(pb::SendWindow {
            start_minute: 600,
            end_minute: 660,
        });
        bad.windows.push(pb::SendWindow {
            start_minute: 900,
            end_minute: 900,
        });
        let f = fields(Policy::check(Some(&bad)).unwrap_err());
        assert!(
            f.iter().any(|x| x.starts_with("policy.windows[4]")),
            "{f:?}"
        );
        let mut overlap = p.to_pb();
        overlap.windows.push(pb::SendWindow {
            start_minute: 600,
            end_minute: 660,
        });
        let f = fields(Policy::check(Some(&overlap)).unwrap_err());
        assert!(f.iter().any(|x| x.contains("overlaps")), "{f:?}");
        let empty = pb::SendPolicy {
            windows: vec![],
            ..p.to_pb()
        };
        let f = fields(Policy::check(Some(&empty)).unwrap_err());
        assert!(f.iter().any(|x| x.starts_with("policy.windows")), "{f:?}");
        let zone = pb::SendPolicy {
            time_zone: "Mars/Olympus".into(),
            ..p.to_pb()
        };
        let f = fields(Policy::check(Some(&zone)).unwrap_err());
        assert!(f.iter().any(|x| x.starts_with("policy.time_zone")), "{f:?}");
    }

    #[test]
    fn holidays_are_checked() {
        let ok = pb::Holiday {
            date: "2027-02-06".into(),
            name: "春节".into(),
            quiet: true,
            ..Default::default()
        };
        assert!(check_holiday(Some(&ok)).is_ok());
        let bad = pb::Holiday {
            date: "2027-02-30".into(),
            name: "".into(),
            ..Default::default()
        };
        let f = fields(check_holiday(Some(&bad)).unwrap_err());
        assert!(f.iter().any(|x| x.starts_with("holiday.date")), "{f:?}");
        assert!(f.iter().any(|x| x.starts_with("holiday.name")), "{f:?}");
    }
}
