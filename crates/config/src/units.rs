//! Durations and sizes as people write them in configuration files.
//!
//! Durations: `500ms`, `2s`, `1.5s`, `5min`, `1h`; a bare number is seconds (Heartbeat's
//! rule). Sizes: `512`, `64K`, `5M`, `1G` (binary multiples, as DRBD reads them).

use std::time::Duration;

/// Parses a duration; a bare number is seconds. Fractions are kept to the millisecond.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_with_unit(s, 1000)
}

/// Parses a duration where a bare number counts `bare_unit_ms` milliseconds.
pub fn parse_duration_with_unit(s: &str, bare_unit_ms: u64) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid duration `{s}`: expected a number with an optional unit (ms, s, min, h), e.g. `500ms` or `2s`"
        ));
    }
    let unit_ms: u64 = match unit.trim() {
        "" => bare_unit_ms,
        "ms" => 1,
        "s" | "sec" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "invalid duration unit `{other}` in `{s}`: expected ms, s, min or h"
            ));
        }
    };
    let millis = scaled(num, unit_ms).ok_or_else(|| {
        format!("invalid duration `{s}`: expected a number with an optional unit (ms, s, min, h), e.g. `500ms` or `2s`")
    })?;
    Ok(Duration::from_millis(millis))
}

/// `num` (digits with at most one `.`) times `unit`, rounded down to a whole number;
/// `None` on malformed or overflowing input.
fn scaled(num: &str, unit: u64) -> Option<u64> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if frac.contains('.') {
        return None;
    }
    let int_v: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int_v.checked_mul(unit)?;
    // Fractions: add digit × unit / 10^k, only while it still contributes.
    let mut div: u64 = 1;
    for c in frac.chars() {
        let d = c.to_digit(10)? as u64;
        div = div.checked_mul(10)?;
        total = total.checked_add(d.checked_mul(unit)? / div)?;
        if div > unit.saturating_mul(10) {
            break;
        }
    }
    Some(total)
}

/// Parses a size in bytes: a bare number is bytes; K, M, G (case-insensitive, optional
/// `iB`/`B`) are binary multiples.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size_with_unit(s, 1)
}

/// Parses a size where a bare number counts `bare_unit` bytes (DRBD's `rate` is KiB).
pub fn parse_size_with_unit(s: &str, bare_unit: u64) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size `{s}`: expected a number with an optional unit (K, M, G), e.g. `5M`"
        ));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => bare_unit,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size unit `{}` in `{s}`: expected K, M or G",
                unit.trim()
            ));
        }
    };
    scaled(num, mult).ok_or_else(|| {
        format!("invalid size `{s}`: expected a number with an optional unit (K, M, G), e.g. `5M`")
    })
}

/// `d` rounded down to whole milliseconds: every duration in a [`crate::Config`] is,
/// so that what the emitter writes reads back to the same value.
pub fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes a duration the way the parser reads it back, in the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".to_string()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms >= 600_000 {
        format!("{}min", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Writes a size the way the parser reads it back, in the largest exact unit.
pub fn format_size(bytes: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    const K: u64 = 1 << 10;
    if bytes != 0 && bytes % G == 0 {
        format!("{}G", bytes / G)
    } else if bytes != 0 && bytes % M == 0 {
        format!("{}M", bytes / M)
    } else if bytes != 0 && bytes % K == 0 {
        format!("{}K", bytes / K)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_heartbeat_rules() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }

    #[test]
    fn sizes_are_binary_multiples() {
        assert_eq!(parse_size("5M"), Ok(5 * 1024 * 1024));
        assert_eq!(parse_size("64k"), Ok(64 * 1024));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size_with_unit("250", 1024), Ok(250 * 1024));
        assert!(parse_size("5T").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [
            0u64, 1, 200, 500, 1000, 1500, 60_000, 600_000, 3_600_000, 7_200_500,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}");
        }
        for b in [0u64, 1, 1023, 1024, 5 << 20, 3 << 30, (5 << 20) + 1] {
            assert_eq!(parse_size(&format_size(b)), Ok(b), "{b}");
        }
    }

    #[test]
    fn random_strings_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"0123456789.msinhKMGkb -";
        for _ in 0..20_000 {
            let mut s = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 12) as usize;
            for i in 0..len {
                s.push(alphabet[((x >> (i * 5)) % alphabet.len() as u64) as usize] as char);
            }
            let _ = parse_duration(&s);
            let _ = parse_size(&s);
        }
    }
}
