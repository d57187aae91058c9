//! Money, time and duration conversions. Money is integer micro-USD everywhere (as in the
//! snapshot); the CLI takes dollars as a decimal string and converts exactly, never through a
//! float.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;

const MICROS_PER_USD: u64 = 1_000_000;

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Parses `"12"`, `"12.5"`, `"0.000001"` (at most 6 decimals) into micro-USD, exactly.
pub fn parse_usd(text: &str) -> Result<u64, Error> {
    let invalid = || {
        Error::invalid(
            "invalid_amount",
            format!("{text:?} is not an amount in USD like 25 or 12.50 (at most 6 decimals)"),
        )
    };
    let text = text.trim().trim_start_matches('$');
    if text.starts_with('-') {
        return Err(Error::invalid(
            "invalid_amount",
            format!("{text:?}: an amount in USD must not be negative"),
        ));
    }
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits_only = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) || fraction.len() > 6 {
        return Err(invalid());
    }
    let whole: u64 = whole.parse().map_err(|_| invalid())?;
    let fraction_micros: u64 = if fraction.is_empty() {
        0
    } else {
        let scale = 10u64.pow(6 - u32::try_from(fraction.len()).map_err(|_| invalid())?);
        fraction.parse::<u64>().map_err(|_| invalid())? * scale
    };
    whole
        .checked_mul(MICROS_PER_USD)
        .and_then(|micros| micros.checked_add(fraction_micros))
        .ok_or_else(invalid)
}

/// Formats micro-USD as dollars with at least two decimals: `12500000` -> `"12.50"`.
pub fn format_usd(micros: u64) -> String {
    let whole = micros / MICROS_PER_USD;
    let fraction = format!("{:06}", micros % MICROS_PER_USD);
    let trimmed = fraction.trim_end_matches('0');
    let shown = if trimmed.len() < 2 {
        fraction.get(..2).unwrap_or("00")
    } else {
        trimmed
    };
    format!("{whole}.{shown}")
}

/// Parses a duration like `30d`, `24h`, `90m`, `45s` or `1h 30m` into seconds.
pub fn parse_duration_seconds(text: &str) -> Result<u64, Error> {
    humantime::parse_duration(text.trim())
        .map(|duration| duration.as_secs())
        .map_err(|error| {
            Error::invalid(
                "invalid_duration",
                format!("{text:?} is not a duration like 30d, 24h or 90m: {error}"),
            )
        })
}

/// RFC 3339 (UTC, seconds) for people reading lists and audits.
pub fn format_time(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds)).to_string()
}

/// SQLite stores integers as i64; every value we store is a u64 far below i64::MAX.
pub fn to_sql_int(value: u64) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::invalid("value_too_large", "a number is too large"))
}

pub fn from_sql_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// For sums the data plane reports (spend, token counts): stored exactly up to i64::MAX
/// (9.2 trillion USD in micro-USD), held there beyond it rather than refused or wrapped.
pub fn saturating_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_parses_exactly() {
        assert_eq!(parse_usd("25"), Ok(25_000_000));
        assert_eq!(parse_usd("12.5"), Ok(12_500_000));
        assert_eq!(parse_usd("$0.10"), Ok(100_000));
        assert_eq!(parse_usd("0.000001"), Ok(1));
        assert_eq!(parse_usd("0"), Ok(0));
        for bad in [
            "",
            ".5",
            "1.2.3",
            "-1",
            "1e3",
            "0.0000001",
            "abc",
            "99999999999999999999",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usd_formats_with_two_decimals_at_least() {
        assert_eq!(format_usd(12_500_000), "12.50");
        assert_eq!(format_usd(25_000_000), "25.00");
        assert_eq!(format_usd(1), "0.000001");
        assert_eq!(format_usd(1_234_500), "1.2345");
    }

    #[test]
    fn durations_parse_to_seconds() {
        assert_eq!(parse_duration_seconds("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration_seconds("24h"), Ok(86_400));
        assert_eq!(parse_duration_seconds("1h 30m"), Ok(5_400));
        assert_eq!(parse_duration_seconds("0s"), Ok(0));
        assert!(parse_duration_seconds("soon").is_err());
    }

    #[test]
    fn sql_ints_saturate_only_where_asked() {
        assert_eq!(saturating_sql_int(5), 5);
        assert_eq!(saturating_sql_int(u64::MAX), i64::MAX);
        assert!(to_sql_int(u64::MAX).is_err());
        assert_eq!(from_sql_int(-1), 0);
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
    }
}
