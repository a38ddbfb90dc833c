//! Human units on the command line and in configuration files: durations (`30s`, `1h30m`),
//! byte sizes (`64MiB`), and points in time (RFC 3339, epoch milliseconds, or a delay from now).
//!
//! Written here rather than pulled from helper crates: each parser is a few lines, and the
//! messages name exactly what was wrong.

use std::fmt;
use std::time::Duration;

/// Units accepted in durations, longest name first so `ms` is tried before `m`.
const DURATION_UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Units accepted in byte sizes, longest name first.
const BYTE_UNITS: [(&str, u64); 7] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("B", 1),
];

/// Parses a duration such as `500ms`, `30s`, `10m`, `1h30m`, `2d`, or `0`.
///
/// # Errors
/// A message saying what is wrong, for the caller to prefix with the key or flag.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write a number and a unit, e.g. 30s".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number at {rest:?}"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let Some((_, ms)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!("invalid duration {text:?}: missing unit (use ms, s, m, h or d)")
            } else {
                format!("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d)")
            });
        };
        rest = rest[unit_len..].trim_start();
        total = number
            .checked_mul(*ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    Ok(Duration::from_millis(total))
}

/// Writes a duration the way [`parse_duration`] reads it, with the largest exact units
/// (`90s` → `1m30s`).
pub(crate) fn format_duration(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (name, unit) in DURATION_UNITS.iter().rev() {
        if ms >= *unit {
            out.push_str(&format!("{}{name}", ms / unit));
            ms %= unit;
        }
    }
    out
}

/// Parses a byte size: a plain number of bytes, or a number with a unit (`64MiB`, `4 KiB`,
/// `1GB`).
///
/// # Errors
/// A message saying what is wrong.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "invalid size {text:?}: expected a number of bytes, e.g. 65536 or \"64MiB\""
        ));
    }
    let number: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("invalid size {text:?}: number too large"))?;
    let unit = s[digits..].trim();
    if unit.is_empty() {
        return Ok(number);
    }
    let Some((_, factor)) = BYTE_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "invalid size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
        ));
    };
    number
        .checked_mul(*factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Writes a byte size with the largest binary unit that divides it (`67108864` → `64MiB`).
pub(crate) fn format_bytes(bytes: u64) -> String {
    for (name, factor) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{name}", bytes / factor);
        }
    }
    bytes.to_string()
}

/// A point in time given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum When {
    /// Milliseconds since the UNIX epoch.
    At(i64),
    /// This long after now.
    After(Duration),
}

impl When {
    /// The point in milliseconds since the epoch, given the current time.
    pub(crate) fn resolve(self, now_ms: i64) -> i64 {
        match self {
            When::At(ms) => ms,
            When::After(d) => {
                now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
        }
    }
}

/// Parses a point in time: RFC 3339 (`2026-01-02T15:04:05Z`, `...+01:00`, fractional seconds
/// allowed), milliseconds since the epoch (`1767366245000`), or a duration from now (`10m`).
///
/// # Errors
/// A message saying which forms are accepted.
pub(crate) fn parse_when(text: &str) -> Result<When, String> {
    let s = text.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.len() >= 10 {
        return s
            .parse::<i64>()
            .map(When::At)
            .map_err(|_| format!("invalid time {text:?}: number too large"));
    }
    if s.len() >= 10 && s.as_bytes().get(4) == Some(&b'-') {
        return parse_rfc3339(s)
            .map(When::At)
            .map_err(|why| format!("invalid time {text:?}: {why}"));
    }
    parse_duration(s).map(When::After).map_err(|_| {
        format!(
            "invalid time {text:?}: use RFC 3339 (2026-01-02T15:04:05Z), milliseconds since the \
             epoch, or a delay from now such as 10m"
        )
    })
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into milliseconds since the epoch.
fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(range).ok_or("too short")?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("expected digits, found {part:?}"));
        }
        part.parse::<i64>().map_err(|e| e.to_string())
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err("expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset".into());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err("expected HH:MM:SS".into());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("no such date".into());
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("no such time of day".into());
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let digits = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err("expected digits after the decimal point".into());
        }
        // Milliseconds are the resolution of the API; further digits are dropped.
        for (k, c) in b[start..start + digits.min(3)].iter().enumerate() {
            millis += i64::from(c - b'0') * 10i64.pow(2 - k as u32);
        }
        i = start + digits;
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return Err("invalid offset".into());
            }
            let minutes = h * 60 + m;
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return Err("expected Z or an offset such as +01:00 at the end".into()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1_000 + millis)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the epoch, displayed as RFC 3339 UTC (`2026-01-02T15:04:05.000Z`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timestamp(pub(crate) i64);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        let days = ms.div_euclid(86_400_000);
        let in_day = ms.rem_euclid(86_400_000);
        let (y, mo, d) = civil_from_days(days);
        let (h, mi, s, milli) = (
            in_day / 3_600_000,
            in_day / 60_000 % 60,
            in_day / 1_000 % 60,
            in_day % 1_000,
        );
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
    }
}

/// A rate per second as a person reads it: whole numbers with thousands separated by commas from
/// 10/s up (`215,923/s`), one decimal below (`3.5/s`), `-/s` before there is a rate to show.
pub(crate) fn format_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec < 0.0 {
        return "-/s".into();
    }
    if per_sec < 10.0 {
        return format!("{per_sec:.1}/s");
    }
    // Rates beyond u64 are not rates.
    let whole = per_sec.round() as u64;
    let digits = whole.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 2);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out.push_str("/s");
    out
}

/// The current time in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_compound_units_and_round_trip() {
        // Goal: every unit is read, compound forms add up, and formatting reads back the same.
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for ms in [0u64, 1, 999, 1_000, 61_500, 3_600_000, 90_061_001] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        // Goal: missing or unknown units and garbage are refused with a message naming them.
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .contains("unknown unit \"x\"")
        );
        assert!(
            parse_duration("s")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn byte_sizes_accept_units_and_plain_numbers() {
        // Goal: plain numbers are bytes, binary and decimal units multiply, garbage is refused.
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2 KB"), Ok(2_000));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(1_000), "1000");
    }

    #[test]
    fn times_parse_rfc3339_epoch_millis_and_delays() {
        // Goal: the three forms of a time resolve to the same epoch milliseconds as expected.
        assert_eq!(
            parse_when("2026-01-02T15:04:05Z"),
            Ok(When::At(1_767_366_245_000))
        );
        assert_eq!(
            parse_when("2026-01-02T16:04:05.5+01:00"),
            Ok(When::At(1_767_366_245_500))
        );
        assert_eq!(parse_when("1767366245000"), Ok(When::At(1_767_366_245_000)));
        assert_eq!(parse_when("10m").map(|w| w.resolve(1_000)), Ok(601_000));
        assert!(parse_when("2026-02-30T00:00:00Z").is_err());
        assert!(parse_when("tomorrow").is_err());
    }

    #[test]
    fn rates_are_rounded_to_what_a_person_reads() {
        // Goal: no run of decimals (the progress bar showed `215,922.9235/s`): whole numbers
        // grouped by thousands from 10/s, one decimal below, a dash before any rate exists.
        assert_eq!(format_rate(215_922.923_5), "215,923/s");
        assert_eq!(format_rate(1_234_567.4), "1,234,567/s");
        assert_eq!(format_rate(999.5), "1,000/s");
        assert_eq!(format_rate(42.49), "42/s");
        assert_eq!(format_rate(3.46), "3.5/s");
        assert_eq!(format_rate(0.0), "0.0/s");
        assert_eq!(format_rate(f64::INFINITY), "-/s");
        assert_eq!(format_rate(f64::NAN), "-/s");
    }

    #[test]
    fn timestamps_display_as_utc_and_match_the_parser() {
        // Goal: displayed timestamps read back to the same milliseconds, across leap years.
        for ms in [0i64, 951_782_400_000, 1_767_366_245_123, 4_102_444_800_000] {
            let text = Timestamp(ms).to_string();
            assert_eq!(parse_when(&text), Ok(When::At(ms)), "{text}");
        }
        assert_eq!(
            Timestamp(1_767_366_245_000).to_string(),
            "2026-01-02T15:04:05.000Z"
        );
    }
}
