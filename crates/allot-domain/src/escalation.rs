//! Fair use: the escalation ladder none → warning → throttle → restrict, driven by classifier
//! violations inside a rolling window; soft caps over rolling usage windows; daily budgets in the
//! restrict stage. Scores are integers in thousandths (0..=1000), never floating point.

/// How far an account has escalated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    None,
    Warning,
    Throttle,
    Restrict,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Warning => "warning",
            Self::Throttle => "throttle",
            Self::Restrict => "restrict",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::None, Self::Warning, Self::Throttle, Self::Restrict].into_iter().find(|s| s.as_str() == name)
    }
}

/// Violations (within the window) at which each stage begins. Invariant: 1 ≤ warning ≤ throttle ≤ restrict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ladder {
    pub warning_after: u32,
    pub throttle_after: u32,
    pub restrict_after: u32,
}

impl Ladder {
    /// Whether the thresholds climb.
    pub fn is_valid(&self) -> bool {
        1 <= self.warning_after && self.warning_after <= self.throttle_after && self.throttle_after <= self.restrict_after
    }

    /// The stage for a number of live violations.
    pub fn stage_for(&self, violations: u32) -> Stage {
        debug_assert!(self.is_valid());
        if violations >= self.restrict_after {
            Stage::Restrict
        } else if violations >= self.throttle_after {
            Stage::Throttle
        } else if violations >= self.warning_after {
            Stage::Warning
        } else {
            Stage::None
        }
    }
}

/// The largest score, 1.0 in thousandths.
pub const SCORE_MAX_MILLI: u32 = 1_000;

/// A classification counts as a violation when its score reaches the gate.
pub fn is_violation(score_milli: u32, gate_milli: u32) -> bool {
    score_milli >= gate_milli
}

/// A rate cap lowered to `percent` of itself in the throttle stage (never below 1).
pub fn throttled(limit: i64, percent: u32) -> i64 {
    let lowered = i128::from(limit) * i128::from(percent.min(100)) / 100;
    i64::try_from(lowered).unwrap_or(limit).max(1)
}

/// Whether `amount_credits` more fits a daily budget with `used_credits` already used today.
pub fn within_daily_budget(budget_credits: i64, used_credits: i64, amount_credits: i64) -> bool {
    i128::from(used_credits) + i128::from(amount_credits) <= i128::from(budget_credits)
}

/// A soft cap: more than `threshold_credits` used within `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftCap {
    pub window_ms: i64,
    pub threshold_credits: i64,
}

impl SoftCap {
    /// Whether usage in the window triggers the cap.
    pub fn is_triggered(&self, used_in_window_credits: i64) -> bool {
        used_in_window_credits > self.threshold_credits
    }

    /// Whether a charge moved the usage across the threshold.
    pub fn newly_triggered(&self, before_credits: i64, after_credits: i64) -> bool {
        !self.is_triggered(before_credits) && self.is_triggered(after_credits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LADDER: Ladder = Ladder { warning_after: 1, throttle_after: 2, restrict_after: 4 };

    #[test]
    fn the_ladder_climbs_and_steps_down_with_violations() {
        let cases = [(0, Stage::None), (1, Stage::Warning), (2, Stage::Throttle), (3, Stage::Throttle), (4, Stage::Restrict), (99, Stage::Restrict)];
        for (violations, stage) in cases {
            assert_eq!(LADDER.stage_for(violations), stage, "{violations} violations");
        }
        assert!(!Ladder { warning_after: 0, throttle_after: 1, restrict_after: 2 }.is_valid());
        assert!(!Ladder { warning_after: 3, throttle_after: 2, restrict_after: 4 }.is_valid());
    }

    #[test]
    fn gates_throttles_budgets_and_soft_caps() {
        assert!(is_violation(700, 700));
        assert!(!is_violation(699, 700));
        assert_eq!(throttled(120, 25), 30);
        assert_eq!(throttled(3, 25), 1, "never below one");
        assert_eq!(throttled(i64::MAX, 100), i64::MAX);
        assert!(within_daily_budget(1_800_000, 1_000_000, 800_000));
        assert!(!within_daily_budget(1_800_000, 1_000_000, 800_001));
        let cap = SoftCap { window_ms: 86_400_000, threshold_credits: 14_400_000 };
        assert!(!cap.is_triggered(14_400_000));
        assert!(cap.newly_triggered(14_000_000, 14_400_001));
        assert!(!cap.newly_triggered(14_400_001, 15_000_000));
    }

    proptest! {
        #[test]
        fn more_violations_never_lower_the_stage(a in 0u32..20, b in 0u32..20, w in 1u32..5, t in 0u32..5, r in 0u32..5) {
            let ladder = Ladder { warning_after: w, throttle_after: w + t, restrict_after: w + t + r };
            let (low, high) = (a.min(b), a.max(b));
            prop_assert!(ladder.stage_for(low) <= ladder.stage_for(high));
        }
    }
}
