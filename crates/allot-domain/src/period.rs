//! Billing periods: half-open `[start, end)` intervals that follow each other monthly from an
//! anchor. A period anchored on the 29th–31st ends on the last day of shorter months and returns
//! to the anchor's day when the month allows (Jan 31 → Feb 28/29 → Mar 31).

use time::{Date, Month, OffsetDateTime, UtcOffset};

/// A billing period, `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

impl Period {
    /// Whether `t` falls in this period.
    pub fn contains(&self, t: OffsetDateTime) -> bool {
        self.start <= t && t < self.end
    }
}

/// The anchor of accounts without a subscription: calendar months, UTC.
pub const CALENDAR_ANCHOR: OffsetDateTime = time::macros::datetime!(2000-01-01 00:00 UTC);

/// `anchor` moved by `months` (either sign), its day clamped to the target month's length.
pub fn add_months(anchor: OffsetDateTime, months: i64) -> OffsetDateTime {
    let anchor = anchor.to_offset(UtcOffset::UTC);
    let month_index = i64::from(anchor.year()) * 12 + i64::from(u8::from(anchor.month())) - 1 + months;
    let year = i32::try_from(month_index.div_euclid(12)).unwrap_or(if months < 0 { -9999 } else { 9999 }).clamp(-9999, 9999);
    let month_number = u8::try_from(month_index.rem_euclid(12) + 1).unwrap_or(1);
    let month = Month::try_from(month_number).unwrap_or(Month::January);
    let day = anchor.day().min(time::util::days_in_month(month, year));
    match Date::from_calendar_date(year, month, day) {
        Ok(date) => date.with_time(anchor.time()).assume_utc(),
        Err(_) => anchor,
    }
}

/// The monthly period, anchored at `anchor`, that contains `t`.
pub fn period_containing(anchor: OffsetDateTime, t: OffsetDateTime) -> Period {
    let anchor = anchor.to_offset(UtcOffset::UTC);
    let t = t.to_offset(UtcOffset::UTC);
    let mut n = (i64::from(t.year()) - i64::from(anchor.year())) * 12 + i64::from(u8::from(t.month())) - i64::from(u8::from(anchor.month()));
    // The estimate is off by at most one month either way.
    while add_months(anchor, n) > t {
        n -= 1;
    }
    while add_months(anchor, n + 1) <= t {
        n += 1;
    }
    let period = Period { start: add_months(anchor, n), end: add_months(anchor, n + 1) };
    debug_assert!(period.contains(t));
    period
}

/// The billing period in force at `now` for a subscription whose billing system reported
/// `[current_start, current_end)`: that interval while it contains `now`, otherwise the monthly
/// period anchored at `current_start` that contains `now`.
pub fn subscription_period(current_start: OffsetDateTime, current_end: OffsetDateTime, now: OffsetDateTime) -> Period {
    let reported = Period { start: current_start, end: current_end };
    if current_start < current_end && reported.contains(now) {
        reported
    } else {
        period_containing(current_start, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn month_end_anchors_clamp_and_return() {
        let jan31 = datetime!(2024-01-31 10:00 UTC);
        let cases = [
            (1, datetime!(2024-02-29 10:00 UTC)), // leap year
            (2, datetime!(2024-03-31 10:00 UTC)),
            (3, datetime!(2024-04-30 10:00 UTC)),
            (13, datetime!(2025-02-28 10:00 UTC)), // not a leap year
            (-1, datetime!(2023-12-31 10:00 UTC)),
            (11, datetime!(2024-12-31 10:00 UTC)),
            (12, datetime!(2025-01-31 10:00 UTC)),
        ];
        for (months, expected) in cases {
            assert_eq!(add_months(jan31, months), expected, "+{months} months");
        }
    }

    #[test]
    fn periods_at_boundaries() {
        let cases = [
            // Jan 31 → Feb: the period anchored on the 31st ends on Feb 29 in a leap year.
            (datetime!(2024-01-31 00:00 UTC), datetime!(2024-02-15 12:00 UTC), datetime!(2024-01-31 00:00 UTC), datetime!(2024-02-29 00:00 UTC)),
            (datetime!(2024-01-31 00:00 UTC), datetime!(2024-02-29 00:00 UTC), datetime!(2024-02-29 00:00 UTC), datetime!(2024-03-31 00:00 UTC)),
            // Feb 29 anchor in later years.
            (datetime!(2024-02-29 00:00 UTC), datetime!(2025-02-28 00:00 UTC), datetime!(2025-02-28 00:00 UTC), datetime!(2025-03-29 00:00 UTC)),
            // Dec 31 → Jan 1 on calendar months: exactly at the boundary the new period starts.
            (CALENDAR_ANCHOR, datetime!(2025-12-31 23:59:59 UTC), datetime!(2025-12-01 00:00 UTC), datetime!(2026-01-01 00:00 UTC)),
            (CALENDAR_ANCHOR, datetime!(2026-01-01 00:00 UTC), datetime!(2026-01-01 00:00 UTC), datetime!(2026-02-01 00:00 UTC)),
            // A time before the anchor.
            (datetime!(2024-03-15 00:00 UTC), datetime!(2024-01-01 00:00 UTC), datetime!(2023-12-15 00:00 UTC), datetime!(2024-01-15 00:00 UTC)),
        ];
        for (anchor, t, start, end) in cases {
            assert_eq!(period_containing(anchor, t), Period { start, end }, "anchor {anchor}, t {t}");
        }
    }

    #[test]
    fn subscription_period_prefers_the_reported_interval() {
        let start = datetime!(2024-05-10 00:00 UTC);
        let end = datetime!(2024-06-01 00:00 UTC); // a short first period
        let inside = datetime!(2024-05-20 00:00 UTC);
        assert_eq!(subscription_period(start, end, inside), Period { start, end });
        let after = datetime!(2024-06-12 00:00 UTC);
        assert_eq!(subscription_period(start, end, after), Period { start: datetime!(2024-06-10 00:00 UTC), end: datetime!(2024-07-10 00:00 UTC) });
    }

    proptest! {
        #[test]
        fn every_instant_lies_in_exactly_its_period(anchor_s in 0i64..4_000_000_000, t_s in 0i64..4_000_000_000) {
            let anchor = OffsetDateTime::from_unix_timestamp(anchor_s).unwrap();
            let t = OffsetDateTime::from_unix_timestamp(t_s).unwrap();
            let p = period_containing(anchor, t);
            prop_assert!(p.contains(t));
            // Consecutive periods tile time without gaps or overlaps.
            let next = period_containing(anchor, p.end);
            prop_assert_eq!(next.start, p.end);
            let len_days = (p.end - p.start).whole_days();
            prop_assert!((28..=31).contains(&len_days), "period of {} days", len_days);
        }
    }
}
