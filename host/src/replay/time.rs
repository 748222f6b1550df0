//! Times and durations as the DLQ tool reads them: RFC 3339 timestamps
//! (`2026-11-27T10:00:00Z`, the `failure_timestamp` format) and short
//! durations (`500ms`, `90s`, `15m`, `2h`, `7d`).
//!
//! Owns parsing only; formatting lives beside the writer, in
//! [`crate::pipeline::dlq::iso8601_millis`].

use std::time::{Duration, SystemTime};

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch:
/// `YYYY-MM-DDTHH:MM:SS`, optional fraction, then `Z` or `±HH:MM` (`t`, `z`
/// and a space instead of `T` are accepted too).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |range| digits_at(text, range);
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, padded; finer digits dropped.
        let ms: String = fraction[..digits.min(3)].chars().collect();
        millis = format!("{ms:0<3}").parse::<i64>().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || ob[3] != b':' {
                return None;
            }
            let sign = match ob[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = (digits_at(rest, 1..3)?, digits_at(rest, 4..6)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 60 + m)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1000 + millis)
}

/// The decimal number written with digits only at `range` of `text`.
fn digits_at(text: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let s = text.get(range)?;
    if !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a short duration: a whole number followed by `ms`, `s`, `m`, `h`
/// or `d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = text[..digits].parse().ok()?;
    let unit_ms: u64 = match &text[digits..] {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).map(Duration::from_millis)
}

/// Parses a time bound: an RFC 3339 timestamp, or a duration meaning "that
/// long before `now`". Returns milliseconds since the Unix epoch.
pub fn parse_time_bound(text: &str, now: SystemTime) -> Option<i64> {
    if let Some(ms) = parse_rfc3339(text) {
        return Some(ms);
    }
    let ago = parse_duration(text)?;
    let now_ms = i64::try_from(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .ok()?;
    now_ms.checked_sub(i64::try_from(ago.as_millis()).ok()?)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A (year, month, day) of the proleptic Gregorian calendar to days since
/// 1970-01-01 (Howard Hinnant's algorithm, the inverse of the one the
/// dead-letter writer formats with).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::dlq::iso8601_millis;

    #[test]
    fn rfc3339_round_trips_the_writer_format() {
        for ms in [0_i64, 951_782_400_000, 1_736_937_000_123, 1_795_773_600_999] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64);
            assert_eq!(parse_rfc3339(&iso8601_millis(t)), Some(ms));
        }
    }

    #[test]
    fn rfc3339_offsets_fractions_and_bad_input() {
        assert_eq!(
            parse_rfc3339("2025-01-15T11:30:00+01:00"),
            parse_rfc3339("2025-01-15T10:30:00Z")
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.5Z"), Some(500));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.123456Z"), Some(123));
        for bad in [
            "",
            "2025-01-15",
            "2025-02-30T00:00:00Z",
            "2025-01-15T10:30:00",
            "2025-01-15T25:00:00Z",
            "2025-01-15T10:30:00.Z",
            "2025-01-15T10:30:00+1:00",
            "2025-01-15T10:30:00+-1:00",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations_and_relative_bounds() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "s", "5", "5w", "-5s", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_time_bound("90s", now), Some(9_910_000));
        assert_eq!(parse_time_bound("1970-01-01T00:00:01Z", now), Some(1000));
    }
}
