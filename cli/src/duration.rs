//! Duration flags, read by one scanner with one table of units: [`go`] is Go's
//! time.ParseDuration, which docker's duration flags use (`1h30m`, `1.5s`, `300ms`, `0`), and
//! [`interval`] is `--key-rotation`'s narrower form, a whole number of seconds, minutes or
//! hours (`90`, `90s`, `30m`, `12h`).

use std::time::Duration;

/// Go's units and their length in seconds.
const UNITS: [(&str, f64); 8] = [
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("μs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// The units [`interval`] takes.
const INTERVAL_UNITS: [&str; 3] = ["s", "m", "h"];

fn unit_secs(unit: &str) -> Option<f64> {
    UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, secs)| *secs)
}

/// `s` split after its leading run of characters that `in_number` accepts.
fn split_number(s: &str, in_number: impl Fn(char) -> bool) -> (&str, &str) {
    s.split_at(s.find(|c: char| !in_number(c)).unwrap_or(s.len()))
}

/// Go's time.ParseDuration: one or more `<number><unit>` terms, or `0`; never negative.
pub fn go(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: use a number with a unit (ns, us, ms, s, m, h), e.g. 5s or 1m30s"
        )
    };
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("invalid duration {s:?}: it cannot be negative"));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let (number, after) = split_number(rest, |c| c.is_ascii_digit() || c == '.');
        if after.is_empty() {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        let (unit, after) = split_number(after, |c| !(c.is_ascii_digit() || c == '.'));
        total += value * unit_secs(unit).ok_or_else(bad)?;
        rest = after;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// A whole number of seconds (bare, or with `s`), minutes (`m`) or hours (`h`).
pub fn interval(s: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(s, |c| c.is_ascii_digit());
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 90s, 30m or 12h"))?;
    let unit = if unit.is_empty() { "s" } else { unit };
    let secs = INTERVAL_UNITS
        .contains(&unit)
        .then(|| unit_secs(unit))
        .flatten()
        .ok_or_else(|| format!("{s:?} has an unknown unit: use s, m or h"))?;
    // The units it takes are whole seconds, so the product is exact.
    n.checked_mul(secs as u64)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is not a duration: use e.g. 90s, 30m or 12h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_does() {
        assert_eq!(go("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(go("0"), Ok(Duration::ZERO));
        assert_eq!(go("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(go("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(go("5").unwrap_err().contains("e.g. 5s"));
        assert!(go("5x").is_err());
        assert!(go("").is_err());
        assert!(go("-1s").unwrap_err().contains("negative"));
    }

    #[test]
    fn intervals_are_whole_seconds_minutes_or_hours() {
        assert_eq!(interval("90"), Ok(Duration::from_secs(90)));
        assert_eq!(interval("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(interval("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(interval("12h"), Ok(Duration::from_secs(43200)));
        for unknown in ["5x", "1.5h", "90ms", "1h30m"] {
            assert!(
                interval(unknown)
                    .unwrap_err()
                    .contains("unknown unit: use s, m or h"),
                "{unknown}"
            );
        }
        for nonsense in [
            "",
            "abc",
            "-1s",
            "99999999999999999999h",
            "9999999999999999999h",
        ] {
            assert!(
                interval(nonsense)
                    .unwrap_err()
                    .contains("is not a duration"),
                "{nonsense}"
            );
        }
    }
}
