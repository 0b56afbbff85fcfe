//! Durations as operators write them in flags and config files: a number and
//! a unit, or several (`90d`, `12h`, `1h30m`, `45s`, `500ms`). Units: `ms`,
//! `s`, `m`, `h`, `d`, `w`. A bare number is refused: `30` could mean anything.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest duration accepted (100 years): beyond it a mistake is likelier
/// than an intent, and milliseconds still fit an `i64` with room to spare.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A [`Duration`] read from text such as `30d` or `1h30m`, shown the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn as_millis_i64(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

const UNITS: [(&str, u64); 6] = [("w", 7 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

fn unit_ms(unit: &str) -> Option<u64> {
    UNITS.iter().find(|(name, _)| *name == unit).map(|(_, ms)| *ms)
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<HumanDuration, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty: write a number and a unit, e.g. 30d, 12h, 1h30m, 500ms".into());
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!("`{text}`: expected a number at `{rest}`"));
            }
            let number: u64 = rest[..digits].parse().map_err(|_| format!("`{text}`: `{}` is too large", &rest[..digits]))?;
            rest = &rest[digits..];
            let letters = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..letters];
            let ms = unit_ms(unit).ok_or_else(|| {
                if unit.is_empty() {
                    format!("`{text}`: a number needs a unit (ms, s, m, h, d, w)")
                } else {
                    format!("`{text}`: unknown unit `{unit}` (ms, s, m, h, d, w)")
                }
            })?;
            rest = &rest[letters..];
            total = number.checked_mul(ms).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("`{text}` is longer than 100 years"))?;
        }
        let duration = Duration::from_millis(total);
        if duration > MAX {
            return Err(format!("`{text}` is longer than 100 years"));
        }
        Ok(HumanDuration(duration))
    }
}

impl fmt::Display for HumanDuration {
    /// The largest units first, e.g. `1h30m`; zero is `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (name, size) in UNITS {
            if ms >= size {
                write!(f, "{}{name}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<HumanDuration, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Duration, String> {
        text.parse::<HumanDuration>().map(|d| d.0)
    }

    #[test]
    fn units_combine_and_print_back() {
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse(" 500ms ").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(HumanDuration(Duration::from_secs(5_400)).to_string(), "1h30m");
        assert_eq!(HumanDuration(Duration::from_millis(90_061_001)).to_string(), "1d1h1m1s1ms");
        assert_eq!(HumanDuration(Duration::ZERO).to_string(), "0s");
        for text in ["1d1h1m1s1ms", "3w", "45s"] {
            assert_eq!(text.parse::<HumanDuration>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse("30").unwrap_err().contains("needs a unit"));
        assert!(parse("30 days").unwrap_err().contains("unknown unit ` days`"));
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("d").unwrap_err().contains("expected a number"));
        assert!(parse("200y").unwrap_err().contains("unknown unit `y`"));
        assert!(parse("40000d").unwrap_err().contains("100 years"));
        assert!(parse("99999999999999999999ms").unwrap_err().contains("too large"));
    }
}
