//! Calendar windows against dates worked out by hand: month ends of 28 to 31 days, leap years,
//! a year end, ISO weeks that straddle years, and offsets on both sides of UTC.

use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Unix seconds of a UTC date and time.
fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64, second: i64) -> u64 {
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(seconds).expect("after 1970")
}

fn window(period: Period, now: u64, offset: i32) -> Window {
    Window::containing(period, now, offset).expect("windowed")
}

#[test]
fn civil_dates_round_trip() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    for day in -800_000..800_000i64 {
        if day % 997 != 0 {
            continue;
        }
        let (year, month, date) = civil_from_days(day);
        assert_eq!(days_from_civil(year, month, date), day);
    }
}

#[test]
fn every_month_end_rolls_over_at_its_last_second() {
    // (year, month, days in it): 31, 30, 28, leap 29, and 31 at the year end.
    for (year, month, days) in [
        (2026, 1, 31),
        (2026, 4, 30),
        (2026, 2, 28),
        (2028, 2, 29),
        (2100, 2, 28),
        (2000, 2, 29),
        (2026, 12, 31),
    ] {
        let last_second = at(year, month, days, 23, 59, 59);
        let this = window(Period::Month, last_second, 0);
        let next = window(Period::Month, last_second + 1, 0);
        assert_eq!(next.index, this.index + 1, "{year}-{month}");
        assert_eq!(this.length_seconds(), u64::from(days) * 86_400);
        assert_eq!(this.seconds_left(last_second, 0), 1);
        let (start, end) = this.bounds(0);
        assert_eq!(start, at(year, month, 1, 0, 0, 0) as i64);
        assert_eq!(end, last_second as i64 + 1);
        assert_eq!(this.id(), format!("{year:04}-{month:02}"));
    }
    let december = window(Period::Month, at(2026, 12, 31, 23, 59, 59), 0);
    let january = window(Period::Month, at(2027, 1, 1, 0, 0, 0), 0);
    assert_eq!(
        (december.id(), january.id()),
        ("2026-12".into(), "2027-01".into())
    );
}

#[test]
fn days_roll_over_at_midnight_in_the_offset() {
    let before = at(2026, 11, 30, 23, 59, 59);
    assert_eq!(window(Period::Day, before, 0).id(), "2026-11-30");
    assert_eq!(window(Period::Day, before + 1, 0).id(), "2026-12-01");
    // UTC+05:30: local midnight is 18:30 UTC the day before.
    let ist = 330;
    let local_midnight = at(2026, 11, 30, 18, 30, 0);
    assert_eq!(
        window(Period::Day, local_midnight - 1, ist).id(),
        "2026-11-30"
    );
    assert_eq!(window(Period::Day, local_midnight, ist).id(), "2026-12-01");
    assert_eq!(
        window(Period::Day, local_midnight, ist).bounds(ist).0,
        local_midnight as i64
    );
    // UTC-08:00: the same instant is still the previous day; midnight comes at 08:00 UTC.
    let pst = -480;
    assert_eq!(
        window(Period::Day, at(2026, 12, 1, 7, 59, 59), pst).id(),
        "2026-11-30"
    );
    assert_eq!(
        window(Period::Day, at(2026, 12, 1, 8, 0, 0), pst).id(),
        "2026-12-01"
    );
    // The year end in an offset: UTC+14:00 reaches 2027 at 10:00 UTC on December 31st.
    assert_eq!(
        window(Period::Month, at(2026, 12, 31, 9, 59, 59), 840).id(),
        "2026-12"
    );
    assert_eq!(
        window(Period::Month, at(2026, 12, 31, 10, 0, 0), 840).id(),
        "2027-01"
    );
    assert_eq!(
        window(Period::Day, at(2026, 12, 31, 10, 0, 0), 840).id(),
        "2027-01-01"
    );
}

#[test]
fn iso_weeks_start_on_monday_and_straddle_years() {
    // Monday 2026-11-30 starts ISO week 49 of 2026.
    let sunday = at(2026, 11, 29, 23, 59, 59);
    assert_eq!(window(Period::Week, sunday, 0).id(), "2026-W48");
    assert_eq!(window(Period::Week, sunday + 1, 0).id(), "2026-W49");
    assert_eq!(
        window(Period::Week, sunday + 1, 0).length_seconds(),
        7 * 86_400
    );
    // 2024-12-30 (a Monday) is in week 1 of 2025; 2021-01-03 (a Sunday) in week 53 of 2020.
    assert_eq!(
        window(Period::Week, at(2024, 12, 30, 12, 0, 0), 0).id(),
        "2025-W01"
    );
    assert_eq!(
        window(Period::Week, at(2021, 1, 3, 12, 0, 0), 0).id(),
        "2020-W53"
    );
    assert_eq!(
        window(Period::Week, at(2021, 1, 4, 0, 0, 0), 0).id(),
        "2021-W01"
    );
    // In UTC+01:00 the week starts an hour earlier.
    assert_eq!(
        window(Period::Week, at(2026, 11, 29, 23, 0, 0), 60).id(),
        "2026-W49"
    );
}

#[test]
fn ids_parse_back_and_nothing_else_does() {
    for now in [
        0,
        at(2026, 2, 28, 12, 0, 0),
        at(2028, 2, 29, 0, 0, 0),
        at(2020, 12, 31, 0, 0, 0),
    ] {
        for period in Period::WINDOWED {
            let this = window(period, now, 0);
            assert_eq!(Window::parse(&this.id()), Some(this), "{}", this.id());
        }
    }
    for bad in [
        "2026-02-29",
        "2026-13",
        "2026-00",
        "2026-W00",
        "2026-W54",
        "2025-W53",
        "2026-1-01",
        "2026/11/30",
        "+026-11-30",
        "2026-11-3a",
        "",
        "total",
    ] {
        assert_eq!(Window::parse(bad), None, "{bad}");
    }
    assert_eq!(
        Window::parse("2020-W53").map(|w| w.period),
        Some(Period::Week)
    );
}

#[test]
fn offsets_parse_within_fourteen_hours() {
    assert_eq!(parse_offset("+05:30"), Some(330));
    assert_eq!(parse_offset("-08:00"), Some(-480));
    assert_eq!(parse_offset("Z"), Some(0));
    assert_eq!(parse_offset("+14:00"), Some(840));
    for bad in ["+14:01", "05:30", "+5:30", "+05:60", "+05", ""] {
        assert_eq!(parse_offset(bad), None, "{bad}");
    }
    assert_eq!(format_offset(-480), "-08:00");
    assert_eq!(format_offset(330), "+05:30");
}

#[test]
fn total_has_no_window_and_periods_name_themselves() {
    assert_eq!(Window::containing(Period::Total, 5, 0), None);
    for period in [Period::Day, Period::Week, Period::Month, Period::Total] {
        assert_eq!(Period::parse(period.as_str()), Some(period));
    }
}
