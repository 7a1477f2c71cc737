//! Send windows: when a message may leave, in the shop's time zone, with
//! holidays that change or close a day. Pure arithmetic on UTC microseconds
//! and local wall-clock minutes; daylight saving is the zone database's job,
//! done by chrono-tz.

use std::collections::BTreeMap;

use chrono::{NaiveDate, Offset, TimeZone, Timelike};
use chrono_tz::Tz;

/// Minutes in a day.
pub const DAY_MINUTES: u16 = 1440;

/// How far ahead the next window is looked for before giving up: a shop
/// whose every day is quiet for a year has no window.
const SEARCH_DAYS: i64 = 400;

/// A daily span `[start, end)` in local minutes after midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window {
    /// First minute inside.
    pub start: u16,
    /// First minute after; up to 1440 (midnight ending the day).
    pub end: u16,
}

impl Window {
    /// A window, checked: `start < end <= 1440`.
    pub fn new(start: i32, end: i32) -> Result<Window, &'static str> {
        if !(0..i32::from(DAY_MINUTES)).contains(&start) {
            return Err("start_minute must be 0-1439");
        }
        if !(1..=i32::from(DAY_MINUTES)).contains(&end) {
            return Err("end_minute must be 1-1440");
        }
        if end <= start {
            return Err("end_minute must be after start_minute (a window is within one day)");
        }
        Ok(Window {
            start: start as u16,
            end: end as u16,
        })
    }
}

/// Checks a day's windows: each valid, none overlapping. Sorted on success.
pub fn check_windows(windows: &mut [Window]) -> Result<(), (usize, &'static str)> {
    windows.sort();
    for i in 1..windows.len() {
        if windows[i].start < windows[i - 1].end {
            return Err((i, "overlaps the window before it"));
        }
    }
    Ok(())
}

/// The default windows: 09:30-12:00, 14:00-18:00, 20:00-22:00 (seed 000:
/// never at meal or rest times).
pub fn default_windows() -> Vec<Window> {
    vec![
        Window {
            start: 9 * 60 + 30,
            end: 12 * 60,
        },
        Window {
            start: 14 * 60,
            end: 18 * 60,
        },
        Window {
            start: 20 * 60,
            end: 22 * 60,
        },
    ]
}

/// What a holiday does to its day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayPlan {
    /// Nothing leaves.
    Quiet,
    /// These windows instead of the usual ones.
    Windows(Vec<Window>),
}

/// A shop's sending calendar: usual windows, holidays, the zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    /// The shop's zone.
    pub zone: Tz,
    /// Usual windows, sorted, not overlapping.
    pub windows: Vec<Window>,
    /// Days that differ.
    pub holidays: BTreeMap<NaiveDate, DayPlan>,
}

impl Calendar {
    fn windows_on(&self, day: NaiveDate) -> &[Window] {
        match self.holidays.get(&day) {
            Some(DayPlan::Quiet) => &[],
            Some(DayPlan::Windows(w)) => w,
            None => &self.windows,
        }
    }

    /// Whether local `minute` of `day` is inside a window (with
    /// `last_hour`, inside a window's last hour).
    fn open_on(&self, day: NaiveDate, minute: u16, last_hour: bool) -> bool {
        self.windows_on(day).iter().any(|w| {
            let from = if last_hour {
                w.start.max(w.end.saturating_sub(60))
            } else {
                w.start
            };
            (from..w.end).contains(&minute)
        })
    }

    /// The first window start (or last-hour start) on `day` after `minute`;
    /// 1440 (the next midnight) when none.
    fn next_start(&self, day: NaiveDate, minute: u16, last_hour: bool) -> u16 {
        self.windows_on(day)
            .iter()
            .map(|w| {
                if last_hour {
                    w.start.max(w.end.saturating_sub(60))
                } else {
                    w.start
                }
            })
            .filter(|s| *s > minute)
            .min()
            .unwrap_or(DAY_MINUTES)
    }

    fn wall(&self, at: i64) -> Option<(NaiveDate, u16, i32)> {
        let local = self.zone.timestamp_micros(at).single()?;
        let offset = local.offset().fix().local_minus_utc();
        Some((
            local.date_naive(),
            (local.hour() * 60 + local.minute()) as u16,
            offset,
        ))
    }

    /// The earliest instant at or after `now` (µs) whose wall-clock minute
    /// is inside a window; with `last_hour`, inside the last hour of a
    /// window. Walks the wall clock from start to start, and minute by
    /// minute only where the zone's offset changes on the way, so a window
    /// behind a skipped hour or inside a repeated one is found. `None` when
    /// no window opens within a year.
    pub fn next_open(&self, now: i64, last_hour: bool) -> Option<i64> {
        let (day, minute, _) = self.wall(now)?;
        if self.open_on(day, minute, last_hour) {
            return Some(now);
        }
        let mut t = now.div_euclid(MINUTE_MICROS) * MINUTE_MICROS;
        if t < now {
            t += MINUTE_MICROS;
        }
        let horizon = now + SEARCH_DAYS * 1440 * MINUTE_MICROS;
        while t < horizon {
            let (day, minute, offset) = self.wall(t)?;
            if self.open_on(day, minute, last_hour) {
                return Some(t);
            }
            let ahead = i64::from(self.next_start(day, minute, last_hour) - minute);
            let jump = t + ahead * MINUTE_MICROS;
            t = match self.wall(jump) {
                Some((_, _, o)) if o == offset => jump,
                _ => t + MINUTE_MICROS,
            };
        }
        None
    }

    /// Whether `at` is inside a window.
    pub fn is_open(&self, at: i64) -> bool {
        self.wall(at)
            .is_some_and(|(day, minute, _)| self.open_on(day, minute, false))
    }
}

/// A minute in microseconds.
pub const MINUTE_MICROS: i64 = 60_000_000;

/// The local date of `at` in `zone`.
pub fn local_date(zone: Tz, at: i64) -> Option<NaiveDate> {
    zone.timestamp_micros(at).single().map(|t| t.date_naive())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use chrono::Duration;
    use proptest::prelude::*;

    const MINUTE: i64 = MINUTE_MICROS;

    fn calendar(zone: Tz) -> Calendar {
        Calendar {
            zone,
            windows: default_windows(),
            holidays: BTreeMap::new(),
        }
    }

    fn at(zone: Tz, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        zone.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .timestamp_micros()
    }

    fn local_minute(zone: Tz, t: i64) -> (NaiveDate, u16) {
        let l = zone.timestamp_micros(t).single().unwrap();
        (l.date_naive(), (l.hour() * 60 + l.minute()) as u16)
    }

    #[test]
    fn inside_a_window_sends_now_and_outside_waits_for_the_next() {
        let sh = chrono_tz::Asia::Shanghai;
        let c = calendar(sh);
        let t = at(sh, 2026, 11, 24, 10, 15);
        assert_eq!(c.next_open(t, false), Some(t));
        // Lunch: wait for 14:00.
        let lunch = at(sh, 2026, 11, 24, 12, 30);
        assert_eq!(c.next_open(lunch, false), Some(at(sh, 2026, 11, 24, 14, 0)));
        // Late night crosses midnight to 09:30.
        let night = at(sh, 2026, 11, 24, 23, 50);
        assert_eq!(c.next_open(night, false), Some(at(sh, 2026, 11, 25, 9, 30)));
        // 12:00 itself is outside (the end is exclusive).
        let noon = at(sh, 2026, 11, 24, 12, 0);
        assert!(!c.is_open(noon));
        assert!(c.is_open(noon - MINUTE));
    }

    #[test]
    fn last_hour_aims_at_the_end_of_a_window() {
        let sh = chrono_tz::Asia::Shanghai;
        let c = calendar(sh);
        let t = at(sh, 2026, 11, 24, 9, 40);
        assert_eq!(c.next_open(t, true), Some(at(sh, 2026, 11, 24, 11, 0)));
        let late = at(sh, 2026, 11, 24, 11, 20);
        assert_eq!(c.next_open(late, true), Some(late));
    }

    #[test]
    fn holidays_close_or_change_a_day() {
        let sh = chrono_tz::Asia::Shanghai;
        let mut c = calendar(sh);
        let spring = NaiveDate::from_ymd_opt(2027, 2, 6).unwrap();
        c.holidays.insert(spring, DayPlan::Quiet);
        let eve = at(sh, 2027, 2, 5, 23, 0);
        assert_eq!(c.next_open(eve, false), Some(at(sh, 2027, 2, 7, 9, 30)));
        let mid_autumn = NaiveDate::from_ymd_opt(2027, 9, 15).unwrap();
        c.holidays.insert(
            mid_autumn,
            DayPlan::Windows(vec![Window::new(19 * 60, 21 * 60).unwrap()]),
        );
        let morning = at(sh, 2027, 9, 15, 10, 0);
        assert_eq!(
            c.next_open(morning, false),
            Some(at(sh, 2027, 9, 15, 19, 0))
        );
    }

    #[test]
    fn a_window_in_the_skipped_hour_opens_after_the_gap() {
        // New York springs forward at 02:00 on 2027-03-14.
        let ny = chrono_tz::America::New_York;
        let c = Calendar {
            zone: ny,
            windows: vec![Window::new(2 * 60 + 15, 4 * 60).unwrap()],
            holidays: BTreeMap::new(),
        };
        let before = at(ny, 2027, 3, 14, 1, 0);
        let open = c.next_open(before, false).unwrap();
        assert_eq!(local_minute(ny, open).1, 3 * 60);
        // A window inside the skipped hour does not exist that day.
        let c = Calendar {
            zone: ny,
            windows: vec![Window::new(2 * 60 + 15, 2 * 60 + 45).unwrap()],
            holidays: BTreeMap::new(),
        };
        let open = c.next_open(before, false).unwrap();
        assert_eq!(
            local_minute(ny, open),
            (NaiveDate::from_ymd_opt(2027, 3, 15).unwrap(), 135)
        );
        // On the day clocks go back, 01:30 happens twice: the window opens
        // on the first pass and again on the second.
        let c = Calendar {
            zone: ny,
            windows: vec![Window::new(60 + 30, 60 + 45).unwrap()],
            holidays: BTreeMap::new(),
        };
        let midnight = at(ny, 2027, 11, 7, 0, 0);
        let first = c.next_open(midnight, false).unwrap();
        assert_eq!(first - midnight, 90 * MINUTE);
        let after_first = first + 20 * MINUTE;
        let second = c.next_open(after_first, false).unwrap();
        assert_eq!(second - midnight, 150 * MINUTE);
    }

    #[test]
    fn windows_are_checked() {
        assert!(Window::new(600, 600).is_err());
        assert!(Window::new(-1, 10).is_err());
        assert!(Window::new(0, 1441).is_err());
        let mut w = vec![
            Window::new(600, 700).unwrap(),
            Window::new(650, 800).unwrap(),
        ];
        assert_eq!(
            check_windows(&mut w),
            Err((1, "overlaps the window before it"))
        );
        let mut ok = vec![Window::new(700, 800).unwrap(), Window::new(0, 700).unwrap()];
        assert!(check_windows(&mut ok).is_ok());
        assert_eq!(ok[0].start, 0);
    }

    fn zones() -> impl Strategy<Value = Tz> {
        prop_oneof![
            Just(chrono_tz::Asia::Shanghai),
            Just(chrono_tz::America::New_York),
            Just(chrono_tz::Europe::London),
            Just(chrono_tz::Australia::Lord_Howe),
            Just(chrono_tz::Pacific::Kiritimati),
            Just(chrono_tz::America::Santiago),
        ]
    }

    fn windows() -> impl Strategy<Value = Vec<Window>> {
        prop::collection::vec((0u16..1440, 1u16..240), 1..4).prop_map(|spans| {
            let mut w: Vec<Window> = spans
                .into_iter()
                .map(|(s, len)| Window {
                    start: s,
                    end: (s + len).min(DAY_MINUTES),
                })
                .collect();
            w.sort();
            // Drop overlaps the way a shop would be told to.
            let mut kept: Vec<Window> = Vec::new();
            for x in w {
                if kept.last().is_none_or(|l| x.start >= l.end) {
                    kept.push(x);
                }
            }
            kept
        })
    }

    fn in_a_window(c: &Calendar, t: i64, last_hour: bool) -> bool {
        let (day, minute) = local_minute(c.zone, t);
        c.windows_on(day).iter().any(|w| {
            let from = if last_hour {
                w.start.max(w.end.saturating_sub(60))
            } else {
                w.start
            };
            (from..w.end).contains(&minute)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The answer is never before `now`, lies in a window, and no whole
        /// minute between `now` and the answer lies in one. Checked across
        /// midnight, with daylight saving (New York, London, Lord Howe's
        /// half hour, Santiago's southern summer), a +14 zone, and quiet
        /// holidays.
        #[test]
        fn next_open_is_the_first_open_minute(
            zone in zones(),
            ws in windows(),
            // 2026-2028, minute resolution, around DST changes too.
            minute in 29_400_000i64..30_500_000,
            quiet_days in prop::collection::vec(0i64..6, 0..3),
            last_hour in any::<bool>(),
        ) {
            let now = minute * MINUTE;
            let mut c = Calendar { zone, windows: ws, holidays: BTreeMap::new() };
            let today = local_date(zone, now).unwrap();
            for d in quiet_days {
                c.holidays.insert(today + Duration::days(d), DayPlan::Quiet);
            }
            let open = c.next_open(now, last_hour).unwrap();
            prop_assert!(open >= now);
            prop_assert!(in_a_window(&c, open, last_hour), "answer {} not in a window", open);
            prop_assert_eq!(c.is_open(open), in_a_window(&c, open, false));
            let mut t = now;
            while t < open {
                prop_assert!(!in_a_window(&c, t, last_hour), "open at {} before {}", t, open);
                t += MINUTE;
            }
        }
    }
}
