//! Calendar windows for budgets and quotas: days, ISO weeks (Monday first) and months in a fixed
//! UTC offset, and the lifetime (`total`). Pure integer arithmetic on Unix seconds: every Envoy
//! computes the same window for the same instant without a time-zone database, so a new window
//! starts a fresh counter at its boundary everywhere, without waiting for a push.
//!
//! Fixed offsets rather than IANA zones: a zone database is hundreds of kilobytes in a module
//! with an 800 KB budget, and its rules change with politics; an offset is what a billing
//! period needs (an operator in a zone with daylight saving picks the offset its invoices use).
//! The civil-date conversions are Howard Hinnant's public-domain algorithms (`days_from_civil`,
//! `civil_from_days`), exact for the proleptic Gregorian calendar.

use serde::{Deserialize, Serialize};

const DAY_SECONDS: i64 = 86_400;
/// The widest offsets in use (UTC-12:00 to UTC+14:00), with room on the western side.
pub const MAX_OFFSET_MINUTES: i32 = 14 * 60;

/// How long a budget or quota counts before it starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    /// An ISO week: Monday 00:00 to the next Monday 00:00.
    Week,
    Month,
    /// Never resets (the lifetime figure, as `spend_cap_microusd`).
    Total,
}

impl Period {
    /// The periods that reset, in the order admission checks them.
    pub const WINDOWED: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    pub fn parse(text: &str) -> Option<Period> {
        match text {
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            "total" => Some(Period::Total),
            _ => None,
        }
    }

    /// The slot of a windowed period in per-period arrays (`None` for `total`).
    pub fn slot(self) -> Option<usize> {
        match self {
            Period::Day => Some(0),
            Period::Week => Some(1),
            Period::Month => Some(2),
            Period::Total => None,
        }
    }
}

/// One window of a period: day number, ISO week number (both since the Unix epoch, in the
/// owner's offset) or month number (`year * 12 + month - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    pub period: Period,
    pub index: i64,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day number: (year, month 1..=12, day 1..=31).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_part = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_part + 2) / 5 + 1;
    let month = if month_part < 10 {
        month_part + 3
    } else {
        month_part - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=12, 1..=31).
    (year, month as u32, day as u32)
}

/// The day number (in the offset) of an instant.
fn local_day(now_s: u64, offset_minutes: i32) -> i64 {
    let local = i64::try_from(now_s)
        .unwrap_or(i64::MAX / 2)
        .saturating_add(i64::from(offset_minutes) * 60);
    local.div_euclid(DAY_SECONDS)
}

/// The ISO week holding a day: weeks start on Monday; 1970-01-01 was a Thursday.
fn week_of_day(day: i64) -> i64 {
    (day + 3).div_euclid(7)
}

fn month_of_day(day: i64) -> i64 {
    let (year, month, _) = civil_from_days(day);
    year * 12 + i64::from(month) - 1
}

/// First day of a month number.
fn month_start_day(index: i64) -> i64 {
    let year = index.div_euclid(12);
    let month = index.rem_euclid(12) as u32 + 1;
    days_from_civil(year, month, 1)
}

impl Window {
    /// The window of `period` that holds the instant `now_s` in the offset; `None` for `total`.
    pub fn containing(period: Period, now_s: u64, offset_minutes: i32) -> Option<Window> {
        let day = local_day(now_s, offset_minutes);
        let index = match period {
            Period::Day => day,
            Period::Week => week_of_day(day),
            Period::Month => month_of_day(day),
            Period::Total => return None,
        };
        Some(Window { period, index })
    }

    /// First and last-plus-one day numbers.
    fn days(&self) -> (i64, i64) {
        match self.period {
            Period::Day | Period::Total => (self.index, self.index + 1),
            Period::Week => (self.index * 7 - 3, self.index * 7 + 4),
            Period::Month => (month_start_day(self.index), month_start_day(self.index + 1)),
        }
    }

    /// Start (inclusive) and end (exclusive) as Unix seconds, for the offset.
    pub fn bounds(&self, offset_minutes: i32) -> (i64, i64) {
        let (first, end) = self.days();
        let shift = i64::from(offset_minutes) * 60;
        (first * DAY_SECONDS - shift, end * DAY_SECONDS - shift)
    }

    /// Seconds from `now_s` until the next window starts (at least 1).
    pub fn seconds_left(&self, now_s: u64, offset_minutes: i32) -> u64 {
        let (_, end) = self.bounds(offset_minutes);
        let now = i64::try_from(now_s).unwrap_or(i64::MAX);
        u64::try_from(end.saturating_sub(now)).unwrap_or(0).max(1)
    }

    /// The window's length in seconds (months: 28 to 31 days).
    pub fn length_seconds(&self) -> u64 {
        let (first, end) = self.days();
        u64::try_from((end - first) * DAY_SECONDS).unwrap_or(0)
    }

    /// The previous window of the same period.
    pub fn previous(&self) -> Window {
        Window {
            period: self.period,
            index: self.index - 1,
        }
    }

    /// `2026-11-30` (day), `2026-W48` (ISO week), `2026-11` (month).
    pub fn id(&self) -> String {
        match self.period {
            Period::Day | Period::Total => {
                let (year, month, day) = civil_from_days(self.index);
                format!("{year:04}-{month:02}-{day:02}")
            }
            Period::Week => {
                let thursday = self.index * 7;
                let (year, _, _) = civil_from_days(thursday);
                let week = (thursday - days_from_civil(year, 1, 1)) / 7 + 1;
                format!("{year:04}-W{week:02}")
            }
            Period::Month => {
                let year = self.index.div_euclid(12);
                let month = self.index.rem_euclid(12) + 1;
                format!("{year:04}-{month:02}")
            }
        }
    }

    /// Reads an [`Window::id`]; anything else (a day that does not exist, week 54, another
    /// spelling) is `None`.
    pub fn parse(text: &str) -> Option<Window> {
        let number = |part: &str| -> Option<i64> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let window = match text.len() {
            10 => {
                let year = number(text.get(0..4)?)?;
                let month = number(text.get(5..7)?)?;
                let day = number(text.get(8..10)?)?;
                if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
                    return None;
                }
                Window {
                    period: Period::Day,
                    index: days_from_civil(year, month as u32, day as u32),
                }
            }
            8 if text.get(4..6) == Some("-W") => {
                let year = number(text.get(0..4)?)?;
                let week = number(text.get(6..8)?)?;
                // Week 1 holds January 4th.
                let january_4 = days_from_civil(year, 1, 4);
                let monday = january_4 - (january_4 + 3).rem_euclid(7);
                Window {
                    period: Period::Week,
                    index: week_of_day(monday + (week - 1) * 7),
                }
            }
            7 => {
                let year = number(text.get(0..4)?)?;
                let month = number(text.get(5..7)?)?;
                if !(1..=12).contains(&month) {
                    return None;
                }
                Window {
                    period: Period::Month,
                    index: year * 12 + month - 1,
                }
            }
            _ => return None,
        };
        // The canonical spelling only: rejects 2026-02-30, 2026-W00, 2025-W53 and other
        // overflows that the arithmetic above would silently carry into a neighbour.
        (window.id() == text).then_some(window)
    }
}

/// `+05:30`, `-08:00`, `Z` or `UTC` as minutes east of UTC.
pub fn parse_offset(text: &str) -> Option<i32> {
    if text == "Z" || text.eq_ignore_ascii_case("utc") {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, text.get(1..)?),
        b'-' => (-1, text.get(1..)?),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let hours: i32 = hours.parse().ok()?;
    let minutes: i32 = minutes.parse().ok()?;
    if minutes >= 60 {
        return None;
    }
    let total = sign * (hours * 60 + minutes);
    (total.abs() <= MAX_OFFSET_MINUTES).then_some(total)
}

/// Minutes east of UTC as `+05:30`.
pub fn format_offset(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let minutes = minutes.unsigned_abs();
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

#[cfg(test)]
#[path = "calendar_tests.rs"]
mod tests;
