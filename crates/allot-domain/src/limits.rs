//! Bounds on every amount and duration the rules accept. Callers validate against these before
//! building a command; the rules assert them.

/// The largest amount one request or grant may carry (10^15 credits). Sums of many such amounts
/// are computed in `i128`, so no balance arithmetic can overflow.
pub const MAX_AMOUNT_CREDITS: i64 = 1_000_000_000_000_000;

/// Shortest hold.
pub const HOLD_TTL_MIN_MS: i64 = 1_000;
/// Longest hold (24 h).
pub const HOLD_TTL_MAX_MS: i64 = 86_400_000;

/// Period roll-overs computed one by one before jumping straight to the current period
/// (100 years of monthly periods).
pub const MAX_PERIOD_STEPS: u32 = 1_200;

/// Why an amount is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must be at most {MAX_AMOUNT_CREDITS}")]
    TooLarge,
}

/// Accepts `1..=MAX_AMOUNT_CREDITS`.
pub fn positive_amount(amount_credits: i64) -> Result<i64, AmountError> {
    if amount_credits <= 0 {
        Err(AmountError::NotPositive)
    } else if amount_credits > MAX_AMOUNT_CREDITS {
        Err(AmountError::TooLarge)
    } else {
        Ok(amount_credits)
    }
}

/// Accepts `0..=MAX_AMOUNT_CREDITS`.
pub fn non_negative_amount(amount_credits: i64) -> Result<i64, AmountError> {
    if amount_credits == 0 {
        Ok(0)
    } else {
        positive_amount(amount_credits).map_err(|_| if amount_credits < 0 { AmountError::NotPositive } else { AmountError::TooLarge })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_bounded() {
        let cases = [
            (-1, Err(AmountError::NotPositive)),
            (0, Err(AmountError::NotPositive)),
            (1, Ok(1)),
            (MAX_AMOUNT_CREDITS, Ok(MAX_AMOUNT_CREDITS)),
            (MAX_AMOUNT_CREDITS + 1, Err(AmountError::TooLarge)),
            (i64::MAX, Err(AmountError::TooLarge)),
            (i64::MIN, Err(AmountError::NotPositive)),
        ];
        for (input, expected) in cases {
            assert_eq!(positive_amount(input), expected, "input {input}");
        }
        assert_eq!(non_negative_amount(0), Ok(0));
        assert_eq!(non_negative_amount(-5), Err(AmountError::NotPositive));
        assert_eq!(non_negative_amount(i64::MAX), Err(AmountError::TooLarge));
    }
}
