//! Moving weighted average cost per sku and location.
//!
//! Values are rounded to cents (half away from zero) per move; the average is kept to 6 decimals. A move that
//! empties the location takes the whole remaining value, so no cents are stranded.

use rust_decimal::{Decimal, RoundingStrategy};

/// Rounds money to cents, half away from zero.
pub fn cents(d: Decimal) -> Decimal {
    let mut c = d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    // always two decimals, so ledgers read 3.10 rather than 3.1
    c.rescale(2);
    c
}

/// `value × part ÷ whole` rounded to cents half away from zero, exactly: the product and the quotient are
/// taken in 128-bit integers, so no digit is lost before the one rounding (a 28-digit decimal division can
/// round an exact half cent the wrong way). Falls back to decimal arithmetic only past 128 bits.
pub fn cents_of_share(value: Decimal, part: Decimal, whole: Decimal) -> Decimal {
    let exact = || -> Option<Decimal> {
        let num = value.mantissa().checked_mul(part.mantissa())?;
        let num_scale = value.scale() + part.scale();
        // value × part ÷ whole × 100 = num × 10^whole.scale × 100 ÷ (whole.mantissa × 10^num_scale)
        let n = num
            .checked_mul(10i128.checked_pow(whole.scale())?)?
            .checked_mul(100)?;
        let d = whole
            .mantissa()
            .checked_mul(10i128.checked_pow(num_scale)?)?;
        if d == 0 {
            return None;
        }
        let (mut q, r) = (n / d, n % d);
        if r.checked_abs()?.checked_mul(2)? >= d.checked_abs()? {
            q += if (n < 0) == (d < 0) { 1 } else { -1 };
        }
        let mut c = Decimal::try_from_i128_with_scale(q, 2).ok()?;
        c.rescale(2);
        Some(c)
    };
    exact().unwrap_or_else(|| cents(value * part / whole))
}

/// Rounds a unit cost to the 6 decimals the average is kept in.
pub fn unit(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(6, RoundingStrategy::MidpointAwayFromZero)
}

/// Quantity and value of one sku at one location, as locked for this transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub on_hand: Decimal,
    pub value: Decimal,
    /// None until something has been received here; then the item's standard cost is not used.
    pub avg_cost: Option<Decimal>,
    pub reserved: Decimal,
}

/// One stock ledger row: signed quantity and value, and the balance after it.
#[derive(Debug, Clone, PartialEq)]
pub struct StockMove {
    pub qty: Decimal,
    pub unit_cost: Decimal,
    pub value: Decimal,
    pub on_hand_after: Decimal,
    pub value_after: Decimal,
}

impl Balance {
    pub fn empty() -> Balance {
        Balance {
            on_hand: Decimal::ZERO,
            value: Decimal::ZERO,
            avg_cost: None,
            reserved: Decimal::ZERO,
        }
    }

    /// The cost of one unit leaving now: the moving average, or the standard cost before any receipt.
    pub fn current_cost(&self, standard_cost: Decimal) -> Decimal {
        self.avg_cost.unwrap_or(standard_cost)
    }

    /// `qty` units (positive) leave at the moving average cost.
    pub fn issue(&mut self, qty: Decimal, standard_cost: Decimal) -> StockMove {
        let cost = self.current_cost(standard_cost);
        let after = self.on_hand - qty;
        let value = if after.is_zero() {
            self.value
        } else if after > Decimal::ZERO && self.value >= Decimal::ZERO {
            // goods left on the shelf: the move never takes more value than the shelf holds (the average is
            // rounded to 6 decimals, which over millions of units could otherwise overdraw it)
            cents(qty * cost).min(self.value)
        } else {
            cents(qty * cost)
        };
        self.issue_at_value(qty, value, cost)
    }

    /// `qty` units (positive) leave carrying exactly `value`; the average is unchanged.
    pub fn issue_at_value(
        &mut self,
        qty: Decimal,
        value: Decimal,
        unit_cost: Decimal,
    ) -> StockMove {
        self.on_hand -= qty;
        self.value -= value;
        self.record(-qty, unit_cost, -value)
    }

    /// `qty` units (positive) arrive at `unit_cost` each.
    pub fn receive(&mut self, qty: Decimal, unit_cost: Decimal) -> StockMove {
        self.receive_at_value(qty, cents(qty * unit_cost), unit_cost)
    }

    /// `qty` units (positive) arrive carrying exactly `value`; the average moves to value / on_hand.
    pub fn receive_at_value(
        &mut self,
        qty: Decimal,
        value: Decimal,
        unit_cost: Decimal,
    ) -> StockMove {
        self.on_hand += qty;
        self.value += value;
        if self.on_hand > Decimal::ZERO && self.value >= Decimal::ZERO {
            self.avg_cost = Some(unit(self.value / self.on_hand));
        } else if self.avg_cost.is_none() {
            // still short after the receipt: the receipt's cost is the best average there is
            self.avg_cost = Some(unit(unit_cost));
        }
        self.record(qty, unit(unit_cost), value)
    }

    /// The value an incoming move left on the wrong side: all of it when on-hand is exactly 0, and a value whose
    /// sign is opposite to on-hand's. It is written off (inventory against cogs), so that on-hand 0 always means
    /// value 0 and stock never carries a value of the other sign.
    pub fn stranded(&self) -> Decimal {
        let wrong_side = (self.on_hand > Decimal::ZERO && self.value < Decimal::ZERO)
            || (self.on_hand < Decimal::ZERO && self.value > Decimal::ZERO);
        if (self.on_hand.is_zero() || wrong_side) && !self.value.is_zero() {
            self.value
        } else {
            Decimal::ZERO
        }
    }

    /// Writes off `amount` of value without moving quantity; the move records it.
    pub fn write_off(&mut self, amount: Decimal) -> StockMove {
        self.value -= amount;
        // what is left on the shelf is worth what the books now say: the average follows
        if self.on_hand > Decimal::ZERO {
            self.avg_cost = Some(unit(self.value / self.on_hand));
        }
        self.record(Decimal::ZERO, Decimal::ZERO, -amount)
    }

    /// The value of `qty` units (positive) arriving at the location's current cost: the remaining value when
    /// they bring on-hand to exactly 0, as an outgoing move does.
    pub fn incoming_value(&self, qty: Decimal, standard_cost: Decimal) -> Decimal {
        if (self.on_hand + qty).is_zero() {
            -self.value
        } else {
            cents(qty * self.current_cost(standard_cost))
        }
    }

    /// Undoes a move exactly (for reversals): the opposite quantity and value.
    pub fn reverse(&mut self, original: &StockMove) -> StockMove {
        let qty = -original.qty;
        let value = -original.value;
        if qty > Decimal::ZERO {
            self.receive_at_value(qty, value, original.unit_cost)
        } else {
            self.issue_at_value(-qty, -value, original.unit_cost)
        }
    }

    fn record(&self, qty: Decimal, unit_cost: Decimal, value: Decimal) -> StockMove {
        StockMove {
            qty,
            unit_cost,
            value,
            on_hand_after: self.on_hand,
            value_after: self.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    #[test]
    fn moving_average_and_no_stranded_cents() {
        let mut b = Balance::empty();
        b.receive(d("3"), d("1.00"));
        b.receive(d("1"), d("2.00"));
        // (3.00 + 2.00) / 4
        assert_eq!(b.avg_cost, Some(d("1.25")));
        let m = b.issue(d("1"), d("9"));
        assert_eq!(m.value, d("-1.25"));
        b.receive(d("2"), d("1.10"));
        // (3.75 + 2.20) / 5 = 1.19
        assert_eq!(b.avg_cost, Some(d("1.19")));
        b.receive(d("1"), d("0.01"));
        // 5.96 / 6 = 0.993333..
        assert_eq!(b.avg_cost, Some(d("0.993333")));
        let m1 = b.issue(d("5"), d("0"));
        assert_eq!(m1.value, d("-4.97"));
        let m2 = b.issue(d("1"), d("0"));
        // the last unit takes what is left: 5.96 - 4.97
        assert_eq!(m2.value, d("-0.99"));
        assert_eq!((b.on_hand, b.value), (d("0"), d("0")));
    }

    #[test]
    fn standard_cost_before_any_receipt_and_negative_stock() {
        let mut b = Balance::empty();
        let m = b.issue(d("2"), d("4.005"));
        assert_eq!(m.value, d("-8.01"));
        assert_eq!(b.on_hand, d("-2"));
        let r = b.receive(d("5"), d("5"));
        assert_eq!(r.value, d("25.00"));
        assert_eq!(b.value, d("16.99"));
        assert_eq!(b.avg_cost, Some(d("5.663333")));
        let back = b.reverse(&r);
        assert_eq!(back.value, d("-25.00"));
        assert_eq!((b.on_hand, b.value), (d("-2"), d("-8.01")));
    }

    #[test]
    fn after_a_write_off_the_average_follows_and_an_issue_never_overdraws_the_shelf() {
        // 3 short at 33.33, then 5 arrive at 1.00: the receipt leaves 2 on hand worth -95.00, written off to 0
        let mut b = Balance::empty();
        b.issue(d("3"), d("33.33"));
        b.receive(d("5"), d("1.00"));
        let stranded = b.stranded();
        assert_eq!(stranded, d("-94.99"));
        b.write_off(stranded);
        assert_eq!(
            (b.on_hand, b.value, b.avg_cost),
            (d("2"), d("0.00"), Some(d("0")))
        );
        // the next sale takes nothing, not the old 33.33 average
        let m = b.issue(d("1"), d("9"));
        assert_eq!(m.value, d("0"));
        assert_eq!((b.on_hand, b.value), (d("1"), d("0")));
        // 1,500,000 units worth 1.00: the average rounds up to 0.000001; selling 1,400,000 at it would take 1.40
        let mut b = Balance::empty();
        b.receive_at_value(d("1500000"), d("1.00"), d("0.000001"));
        let m = b.issue(d("1400000"), d("0"));
        assert_eq!(m.value, d("-1.00"));
        assert!(b.value >= Decimal::ZERO && b.on_hand > Decimal::ZERO);
    }

    #[test]
    fn a_share_of_a_value_is_rounded_once_and_exactly() {
        // 165.33 × 0.1872 ÷ 0.9504 = 32.565 exactly
        assert_eq!(
            cents_of_share(d("165.33"), d("0.1872"), d("0.9504")),
            d("32.57")
        );
        assert_eq!(
            cents_of_share(d("-165.33"), d("0.1872"), d("0.9504")),
            d("-32.57")
        );
        assert_eq!(cents_of_share(d("10.00"), d("1"), d("3")), d("3.33"));
        assert_eq!(cents_of_share(d("10.00"), d("2"), d("3")), d("6.67"));
        // 2 ÷ 3 of 0.01 is 0.00666…: rounds to 0.01; 1 ÷ 3 of 0.01 rounds to 0.00
        assert_eq!(cents_of_share(d("0.01"), d("2"), d("3")), d("0.01"));
        assert_eq!(cents_of_share(d("0.01"), d("1"), d("3")), d("0.00"));
    }
}
