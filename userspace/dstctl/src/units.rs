// SPDX-License-Identifier: GPL-2.0

//! Numbers with a unit, as typed: the durations of [`crate::remote`] and
//! the sizes and rates of [`crate::resync`].

/// Why [`parse_scaled`] refused a number.
#[derive(Debug, PartialEq, Eq)]
pub enum BadNumber {
    /// Not digits followed by a known unit.
    Invalid,
    /// Digits and a known unit, but more than a `u64` holds.
    TooBig,
}

/// Parses digits followed by a unit (possibly empty), which `scale` maps
/// to how much one of it is worth (`None`: not a unit); returns the
/// number times that.
pub fn parse_scaled(s: &str, scale: impl Fn(&str) -> Option<u64>) -> Result<u64, BadNumber> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let scale = scale(unit).ok_or(BadNumber::Invalid)?;
    if number.is_empty() {
        return Err(BadNumber::Invalid);
    }
    // All digits: a parse failure is an overflow.
    let n: u64 = number.parse().map_err(|_| BadNumber::TooBig)?;
    n.checked_mul(scale).ok_or(BadNumber::TooBig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled() {
        let unit = |u: &str| match u {
            "" => Some(1),
            "k" => Some(1000),
            _ => None,
        };
        assert_eq!(parse_scaled("12", unit), Ok(12));
        assert_eq!(parse_scaled("12k", unit), Ok(12_000));
        assert_eq!(parse_scaled("0k", unit), Ok(0));
        for s in ["", "k", "12 k", "12K", "1.5k", "-1", "k12"] {
            assert_eq!(parse_scaled(s, unit), Err(BadNumber::Invalid), "{s}");
        }
        assert_eq!(parse_scaled(&u64::MAX.to_string(), unit), Ok(u64::MAX));
        assert_eq!(
            parse_scaled("18446744073709551616", unit),
            Err(BadNumber::TooBig)
        );
        assert_eq!(
            parse_scaled("18446744073709552k", unit),
            Err(BadNumber::TooBig)
        );
        // An unknown unit, however large the number.
        assert_eq!(
            parse_scaled("99999999999999999999x", unit),
            Err(BadNumber::Invalid)
        );
    }
}
