//! Exact rounding for the model: cents for move values and nets, 6 decimals for the average, both half away
//! from zero, and a division that rounds the exact quotient rather than a 28-digit approximation of it.

use rust_decimal::{Decimal, RoundingStrategy};

/// Rounds to `dp` decimals, half away from zero.
pub fn round(d: Decimal, dp: u32) -> Decimal {
    d.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero)
}

/// A money amount: 2 decimals, half away from zero.
pub fn cents(d: Decimal) -> Decimal {
    round(d, 2)
}

/// A unit cost as the average is kept: 6 decimals, half away from zero.
pub fn unit(d: Decimal) -> Decimal {
    round(d, 6)
}

/// `n / d` rounded to `dp` decimals, half away from zero, computed exactly in integers. A truncated quotient
/// multiplied or rounded afterwards can land on the wrong side of a half cent; this cannot. None when `d` is 0
/// or the operands are too large for 128-bit arithmetic.
pub fn div_round(n: Decimal, d: Decimal, dp: u32) -> Option<Decimal> {
    if d.is_zero() {
        return None;
    }
    // n = a / 10^sa, d = b / 10^sb; n / d * 10^dp = a * 10^(sb + dp) / (b * 10^sa)
    let (a, sa) = (n.mantissa(), n.scale());
    let (b, sb) = (d.mantissa(), d.scale());
    let up = sb + dp;
    let (num, den) = if up >= sa {
        (a.checked_mul(10i128.checked_pow(up - sa)?)?, b)
    } else {
        (a, b.checked_mul(10i128.checked_pow(sa - up)?)?)
    };
    let mut q = num / den;
    let rem = num % den;
    // half away from zero: |rem| * 2 >= |den| rounds the magnitude up
    if rem.checked_abs()?.checked_mul(2)? >= den.checked_abs()? {
        q += if (num < 0) != (den < 0) { -1 } else { 1 };
    }
    Decimal::try_from_i128_with_scale(q, dp).ok()
}

/// `n * m / d` rounded to `dp` decimals, half away from zero, exactly when it can be (see [`div_round`]).
pub fn mul_div_round(n: Decimal, m: Decimal, d: Decimal, dp: u32) -> Option<Decimal> {
    div_round(n.checked_mul(m)?, d, dp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    #[test]
    fn half_away_from_zero() {
        assert_eq!(cents(d("1.005")), d("1.01"));
        assert_eq!(cents(d("-1.005")), d("-1.01"));
        assert_eq!(cents(d("2.675")), d("2.68"));
        assert_eq!(cents(d("0.004999")), d("0.00"));
        assert_eq!(unit(d("5.6633335")), d("5.663334"));
    }

    #[test]
    fn exact_division() {
        assert_eq!(div_round(d("10"), d("3"), 2), Some(d("3.33")));
        assert_eq!(div_round(d("-20"), d("3"), 2), Some(d("-6.67")));
        assert_eq!(div_round(d("20"), d("-3"), 2), Some(d("-6.67")));
        assert_eq!(div_round(d("1"), d("0"), 2), None);
        // 0.01 / 3 * 1.5 is exactly 0.005: a 28-digit quotient (0.00333..) times 1.5 rounds down to 0.00
        assert_eq!(
            mul_div_round(d("0.01"), d("1.5"), d("3"), 2),
            Some(d("0.01"))
        );
        assert_eq!(div_round(d("88"), d("16"), 6), Some(d("5.5")));
        assert_eq!(div_round(d("16.99"), d("3"), 6), Some(d("5.663333")));
    }
}
