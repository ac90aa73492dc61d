//! Reading `spec.timeout` (`1h30m`, `90s`) as a [`Duration`]. The schema's pattern already
//! limits what the API server stores; this parser accepts exactly the same language, with
//! checked arithmetic, so the controller never panics on a value that slipped past an older
//! schema and reports it as an invalid spec instead.

use std::time::Duration;

use crate::spec::ImageBuildSpec;

/// Why a timeout string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid timeout {0:?}: expected hours, minutes and seconds in that order, e.g. 30m, 1h30m, 90s, greater than zero"
)]
pub struct InvalidTimeout(pub String);

/// Parses a timeout in the `spec.timeout` format: `[Nh][Nm][Ns]`, each number one to five
/// digits, units in that order, at least one part, greater than zero.
pub fn parse_timeout(text: &str) -> Result<Duration, InvalidTimeout> {
    let invalid = || InvalidTimeout(text.to_owned());
    let mut rest = text;
    let mut total: u64 = 0;
    // Each unit may appear once and only after the larger ones.
    for (unit, seconds) in [('h', 3600_u64), ('m', 60), ('s', 1)] {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || rest.as_bytes().get(digits) != Some(&(unit as u8)) {
            continue;
        }
        if digits > 5 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        total = value
            .checked_mul(seconds)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
        rest = &rest[digits + 1..];
    }
    if !rest.is_empty() || text.is_empty() || total == 0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

impl ImageBuildSpec {
    /// `spec.timeout` as a duration.
    pub fn timeout_duration(&self) -> Result<Duration, InvalidTimeout> {
        parse_timeout(&self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_timeout("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2h0m5s"), Ok(Duration::from_secs(7205)));
        assert_eq!(
            parse_timeout("99999h"),
            Ok(Duration::from_secs(99_999 * 3600))
        );
    }

    #[test]
    fn rejects_what_the_pattern_rejects() {
        for bad in [
            "", "0s", "0h0m0s", "30", "m", "1m1h", "1h1h", "1.5h", "-1h", "1d", "100000h", " 1h",
            "1h ", "1ms", "1H",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
