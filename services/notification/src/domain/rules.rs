//! Who may be messaged, how often, and how hard a failed send is retried.

/// A day in microseconds.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// A cap: at most `max` marketing messages in any `days`-day span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    /// The span in days.
    pub days: i32,
    /// Most messages in it.
    pub max: i32,
}

/// The default marketing caps (seeds 000 and 003): 1 per 3 days, 4 per 30.
pub fn default_caps() -> Vec<Cap> {
    vec![Cap { days: 3, max: 1 }, Cap { days: 30, max: 4 }]
}

/// Why a message is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppression {
    /// Marketing without consent on the channel.
    NoConsent,
    /// The customer opted out on the channel.
    OptedOut,
    /// A marketing cap is full.
    FrequencyCap(Cap),
    /// The same template reached the customer within the duplicate span.
    Duplicate,
    /// Marketing while the customer has an open complaint.
    OpenComplaint,
    /// The template was paused.
    TemplatePaused,
    /// The customer's personal data was erased.
    CustomerErased,
    /// The order a payment reminder was for got paid or closed.
    OrderPaid,
    /// The buyer confirmed receipt before the shipping notice went out.
    OrderReceived,
    /// The customer has no address on the channel.
    NoAddress,
}

impl Suppression {
    /// The stable reason code shown as the message's status_reason.
    pub fn code(self) -> &'static str {
        match self {
            Suppression::NoConsent => "NO_CONSENT",
            Suppression::OptedOut => "OPTED_OUT",
            Suppression::FrequencyCap(_) => "FREQUENCY_CAP",
            Suppression::Duplicate => "DUPLICATE",
            Suppression::OpenComplaint => "OPEN_COMPLAINT",
            Suppression::TemplatePaused => "TEMPLATE_PAUSED",
            Suppression::CustomerErased => "CUSTOMER_ERASED",
            Suppression::OrderPaid => "ORDER_PAID",
            Suppression::OrderReceived => "ORDER_RECEIVED",
            Suppression::NoAddress => "NO_ADDRESS",
        }
    }

    /// In a seller's words.
    pub fn describe(self) -> String {
        match self {
            Suppression::NoConsent => {
                "suppressed: the customer has not agreed to marketing on this channel".into()
            }
            Suppression::OptedOut => "suppressed: the customer opted out on this channel".into(),
            Suppression::FrequencyCap(c) => format!(
                "suppressed: frequency cap of {} marketing message(s) per {} day(s) reached",
                c.max, c.days
            ),
            Suppression::Duplicate => "suppressed: the customer got this template recently".into(),
            Suppression::OpenComplaint => {
                "suppressed: no marketing while the customer has an open complaint".into()
            }
            Suppression::TemplatePaused => "suppressed: the template is paused".into(),
            Suppression::CustomerErased => {
                "suppressed: the customer's personal data was erased".into()
            }
            Suppression::OrderPaid => {
                "dropped: the order was paid or closed before the reminder".into()
            }
            Suppression::OrderReceived => {
                "dropped: the buyer confirmed receipt before the shipping notice went out".into()
            }
            Suppression::NoAddress => {
                "suppressed: the customer has no address on this channel".into()
            }
        }
    }

    /// Parses a stored code.
    pub fn from_code(code: &str) -> Option<Suppression> {
        Some(match code {
            "NO_CONSENT" => Suppression::NoConsent,
            "OPTED_OUT" => Suppression::OptedOut,
            "DUPLICATE" => Suppression::Duplicate,
            "OPEN_COMPLAINT" => Suppression::OpenComplaint,
            "TEMPLATE_PAUSED" => Suppression::TemplatePaused,
            "CUSTOMER_ERASED" => Suppression::CustomerErased,
            "ORDER_PAID" => Suppression::OrderPaid,
            "ORDER_RECEIVED" => Suppression::OrderReceived,
            "NO_ADDRESS" => Suppression::NoAddress,
            _ => return None,
        })
    }
}

/// What the service knows of a customer on one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// The service has heard of the customer at all.
    pub known: bool,
    /// Marketing consent on the channel.
    pub consented: bool,
    /// Opted out on the channel.
    pub opted_out: bool,
    /// An open complaint.
    pub complaint: bool,
    /// Personal data erased.
    pub erased: bool,
}

/// Whether a message may go to a customer of this standing, before counting
/// caps. A customer the service has not heard of has given no consent.
pub fn admit(standing: Standing, marketing: bool) -> Result<(), Suppression> {
    if standing.erased {
        return Err(Suppression::CustomerErased);
    }
    if marketing {
        if standing.opted_out {
            return Err(Suppression::OptedOut);
        }
        if standing.complaint {
            return Err(Suppression::OpenComplaint);
        }
        if !standing.consented {
            return Err(Suppression::NoConsent);
        }
    }
    Ok(())
}

/// Whether one more marketing message at `now` fits every cap, given when
/// the customer's earlier marketing messages on the channel went (µs, any
/// order). The first cap that would overflow.
///
/// A send stamped later than `now` counts too: another worker may have read
/// its clock after this one and still committed first (this worker waited
/// for the customer's lock), or run on a machine whose clock is ahead.
/// Leaving such sends out let two workers both pass one cap.
pub fn fits_caps(caps: &[Cap], sent: &[i64], now: i64) -> Result<(), Suppression> {
    for cap in caps {
        let since = now - i64::from(cap.days) * DAY_MICROS;
        let in_span = sent.iter().filter(|t| **t > since).count();
        if in_span >= cap.max as usize {
            return Err(Suppression::FrequencyCap(*cap));
        }
    }
    Ok(())
}

/// Whether the same template went to the customer within `days` of `now`.
pub fn is_duplicate(last_sent: Option<i64>, days: i32, now: i64) -> bool {
    days > 0 && last_sent.is_some_and(|t| t > now - i64::from(days) * DAY_MICROS)
}

/// The wait before attempt `attempt` (2 for the first retry): exponential
/// from 30 s, capped at one hour, with "full jitter" — a uniformly random
/// share `jitter` (0..1) of that — so retries from one outage spread out.
pub fn retry_delay_micros(attempt: i32, jitter: f64) -> i64 {
    let exp = (attempt - 2).clamp(0, 20) as u32;
    let ceiling = (30_000_000i64 << exp.min(7)).min(3_600_000_000);
    let floor = 5_000_000;
    floor + ((ceiling - floor) as f64 * jitter.clamp(0.0, 1.0)) as i64
}

/// Whether an inbound reply opts the customer out (回T退订 and the like).
pub fn is_opt_out_reply(text: &str) -> bool {
    let t = text
        .trim()
        .trim_matches(|c: char| c.is_ascii_punctuation() || c == '。');
    let upper = t.to_uppercase();
    matches!(
        upper.as_str(),
        "T" | "TD" | "R" | "退订" | "拒收" | "STOP" | "UNSUBSCRIBE"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standing_decides_marketing_but_not_transactional() {
        let fine = Standing {
            known: true,
            consented: true,
            ..Standing::default()
        };
        assert_eq!(admit(fine, true), Ok(()));
        let no = Standing {
            consented: false,
            ..fine
        };
        assert_eq!(admit(no, true), Err(Suppression::NoConsent));
        assert_eq!(admit(no, false), Ok(()));
        let out = Standing {
            opted_out: true,
            ..fine
        };
        assert_eq!(admit(out, true), Err(Suppression::OptedOut));
        assert_eq!(admit(out, false), Ok(()));
        let complaint = Standing {
            complaint: true,
            ..fine
        };
        assert_eq!(admit(complaint, true), Err(Suppression::OpenComplaint));
        let erased = Standing {
            erased: true,
            ..fine
        };
        assert_eq!(admit(erased, false), Err(Suppression::CustomerErased));
    }

    #[test]
    fn default_caps_allow_one_in_three_days_and_four_in_thirty() {
        let caps = default_caps();
        let day = DAY_MICROS;
        assert!(fits_caps(&caps, &[], 0).is_ok());
        assert!(fits_caps(&caps, &[0], 2 * day).is_err());
        assert!(fits_caps(&caps, &[0], 3 * day).is_ok());
        let four = [0, 3 * day, 6 * day, 9 * day];
        assert_eq!(
            fits_caps(&caps, &four, 12 * day),
            Err(Suppression::FrequencyCap(Cap { days: 30, max: 4 }))
        );
        assert!(fits_caps(&caps, &four, 30 * day).is_ok());
    }

    #[test]
    fn a_send_stamped_after_now_counts_against_the_cap() {
        // Worker B read its clock at 100, then waited for the customer's
        // lock while worker A, reading 105, sent and committed.
        let caps = default_caps();
        assert_eq!(
            fits_caps(&caps, &[105], 100),
            Err(Suppression::FrequencyCap(Cap { days: 3, max: 1 }))
        );
    }

    #[test]
    fn duplicates_and_replies() {
        assert!(is_duplicate(Some(0), 7, DAY_MICROS));
        assert!(!is_duplicate(Some(0), 7, 7 * DAY_MICROS));
        assert!(!is_duplicate(Some(0), 0, 1));
        assert!(!is_duplicate(None, 7, 1));
        for yes in ["T", "t", " TD ", "退订", "R", "t。"] {
            assert!(is_opt_out_reply(yes), "{yes}");
        }
        for no in ["谢谢", "Thanks", "好的 T恤收到了"] {
            assert!(!is_opt_out_reply(no), "{no}");
        }
    }

    proptest! {
        /// Sending greedily whenever the caps allow never puts more than
        /// `max` messages in any span of `days` days, whatever order the
        /// decisions are made in: workers read their clocks, then take the
        /// customer's lock one after another, so a decision can come after
        /// one stamped later than its own `now`.
        #[test]
        fn greedy_sending_never_breaks_a_cap(
            attempts in prop::collection::vec(0i64..(90 * 24), 1..200),
            caps in prop::collection::vec((1i32..31, 1i32..6), 1..3),
            in_clock_order in any::<bool>(),
        ) {
            let caps: Vec<Cap> = caps.into_iter().map(|(days, max)| Cap { days, max }).collect();
            let mut times: Vec<i64> = attempts.into_iter().map(|h| h * 3_600_000_000).collect();
            if in_clock_order {
                times.sort();
            }
            let mut sent: Vec<i64> = Vec::new();
            for t in times {
                if fits_caps(&caps, &sent, t).is_ok() {
                    sent.push(t);
                }
            }
            sent.sort();
            for cap in &caps {
                for (i, start) in sent.iter().enumerate() {
                    let end = start + i64::from(cap.days) * DAY_MICROS;
                    let n = sent[i..].iter().filter(|t| **t < end).count();
                    prop_assert!(n <= cap.max as usize, "{} in {} days", n, cap.days);
                }
            }
        }

        /// Retry waits grow with attempts up to an hour and stay positive.
        #[test]
        fn retry_delay_is_bounded(attempt in 2i32..40, jitter in 0.0f64..1.0) {
            let d = retry_delay_micros(attempt, jitter);
            prop_assert!(d >= 5_000_000);
            prop_assert!(d <= 3_600_000_000);
            prop_assert!(retry_delay_micros(attempt, 1.0) >= retry_delay_micros(attempt.max(3) - 1, 1.0));
        }
    }
}
