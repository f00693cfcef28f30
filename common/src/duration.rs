//! Durations as the command lines and config files of both binaries write
//! them: `500ms`, `10s`, `1.5s`, `5m`, `1h`, `1h30m`, or a bare number of
//! seconds (`40`). Pure: no clock, no I/O.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (use e.g. 500ms, 10s, 5m, 1h30m)")]
    Empty,
    #[error("{input:?} is not a duration like 500ms, 10s, 5m or 1h30m")]
    Malformed { input: String },
    #[error("unknown unit {unit:?} in {input:?} (use ms, s, m or h)")]
    UnknownUnit { input: String, unit: String },
    #[error("{input:?} is too long a duration")]
    Overflow { input: String },
}

const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_S: u128 = 1_000 * NANOS_PER_MS;

/// Parses a duration: one or more `<number><unit>` parts (`1h30m`), units
/// `ms`, `s`, `m`, `h`, numbers with an optional fraction (`1.5s`); or a
/// bare number, read as seconds.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed { input: input.to_owned() };
    let overflow = || DurationError::Overflow { input: input.to_owned() };
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        // A bare number is seconds, but only as the whole input: `1h30` is a typo.
        let per_unit = match unit {
            "" if rest.len() == s.len() => NANOS_PER_S,
            "ms" => NANOS_PER_MS,
            "s" => NANOS_PER_S,
            "m" => 60 * NANOS_PER_S,
            "h" => 3600 * NANOS_PER_S,
            "" => return Err(malformed()),
            other => return Err(DurationError::UnknownUnit { input: input.to_owned(), unit: other.to_owned() }),
        };
        let part = scaled(num, per_unit).ok_or_else(malformed)?.ok_or_else(overflow)?;
        total = total.checked_add(part).ok_or_else(overflow)?;
        rest = next;
    }
    let secs = u64::try_from(total / NANOS_PER_S).map_err(|_| overflow())?;
    // The remainder is below one second, so it fits.
    let nanos = u32::try_from(total % NANOS_PER_S).map_err(|_| overflow())?;
    Ok(Duration::new(secs, nanos))
}

/// `num` (digits with at most one `.`) times `per_unit` nanoseconds,
/// truncated to whole nanoseconds. `None`: not a number; `Some(None)`: too big.
fn scaled(num: &str, per_unit: u128) -> Option<Option<u128>> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return None;
    }
    let mut whole: u128 = 0;
    for b in int.bytes() {
        match whole.checked_mul(10).and_then(|w| w.checked_add(u128::from(b - b'0'))) {
            Some(w) => whole = w,
            None => return Some(None),
        }
    }
    let Some(mut nanos) = whole.checked_mul(per_unit) else { return Some(None) };
    // Fractions beyond nanoseconds add nothing (the unit is at most 3.6e12 ns).
    let mut scale = per_unit;
    for b in frac.bytes().take(13) {
        scale /= 10;
        match nanos.checked_add(u128::from(b - b'0') * scale) {
            Some(n) => nanos = n,
            None => return Some(None),
        }
    }
    Some(Some(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn units() {
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(ok("40"), Duration::from_secs(40));
        assert_eq!(ok(" 40 "), Duration::from_secs(40));
    }

    #[test]
    fn compound_and_fractions() {
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1m30s500ms"), Duration::from_millis(90_500));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.25h"), Duration::from_secs(900));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("2.5ms"), Duration::from_micros(2500));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("  "), Err(DurationError::Empty));
        for bad in ["s", "abc", "1.2.3s", "-5s", "1h30", ".s", "10 s"] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Malformed { .. } | DurationError::UnknownUnit { .. })),
                "{bad:?} was accepted as {:?}",
                parse_duration(bad)
            );
        }
        assert_eq!(parse_duration("5d"), Err(DurationError::UnknownUnit { input: "5d".into(), unit: "d".into() }));
        assert!(matches!(
            parse_duration("99999999999999999999999999999999999999h"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(parse_duration("18446744073709551616s"), Err(DurationError::Overflow { .. })));
    }

    #[test]
    fn errors_name_the_input() {
        let e = parse_duration("5d").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("\"5d\"") && e.contains("ms, s, m or h"), "{e}");
    }
}
