//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`), parsed to an
//! exact count of thousandths ("milli-units"), rounded up as Kubernetes does.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
pub struct QuantityError;

/// Parses a quantity into milli-units (`"1"` → 1000, `"250m"` → 250,
/// `"1Ki"` → 1_024_000). Negative values are rejected.
pub fn parse_milli(s: &str) -> Result<i128, QuantityError> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() || num.matches('.').count() > 1 || num == "." {
        return Err(QuantityError);
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    // value = digits / 10^frac_len, all scaled by 1000 for milli-units.
    let digits: String = format!("{int_part}{frac_part}");
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| QuantityError)? };
    let frac_len = frac_part.len() as u32;
    // (multiplier numerator, power of ten exponent)
    let (mult, exp10): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse::<i32>().map_err(|_| QuantityError)?),
        _ => return Err(QuantityError),
    };
    if !(-30..=30).contains(&exp10) {
        return Err(QuantityError);
    }
    let total_exp = exp10 + 3 - frac_len as i32;
    let scaled = mantissa.checked_mul(mult).ok_or(QuantityError)?;
    if total_exp >= 0 {
        scaled.checked_mul(10i128.checked_pow(total_exp as u32).ok_or(QuantityError)?).ok_or(QuantityError)
    } else {
        let div = 10i128.checked_pow((-total_exp) as u32).ok_or(QuantityError)?;
        Ok(scaled / div + i128::from(scaled % div != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_forms() {
        assert_eq!(parse_milli("1"), Ok(1000));
        assert_eq!(parse_milli("250m"), Ok(250));
        assert_eq!(parse_milli("0.5"), Ok(500));
        assert_eq!(parse_milli("1Ki"), Ok(1_024_000));
        assert_eq!(parse_milli("1.5Gi"), Ok(1_610_612_736_000));
        assert_eq!(parse_milli("128M"), Ok(128_000_000_000));
        assert_eq!(parse_milli("2e3"), Ok(2_000_000));
        assert_eq!(parse_milli("1n"), Ok(1), "rounded up");
        assert_eq!(parse_milli("abc"), Err(QuantityError));
        assert_eq!(parse_milli("1.2.3"), Err(QuantityError));
        assert_eq!(parse_milli("-1"), Err(QuantityError));
        assert_eq!(parse_milli("1Zi"), Err(QuantityError));
        assert_eq!(
            parse_milli("170141183460469231731687303715884105727n"),
            Ok(170_141_183_460_469_231_731_687_303_715_885)
        );
    }
}
