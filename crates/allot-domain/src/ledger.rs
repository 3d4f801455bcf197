//! The effects a decision proposes. Each becomes one append-only ledger entry; its breakdown
//! says which bucket each credit came from or went to.

use uuid::Uuid;

/// Purchased credit or a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    Purchased,
    Promotional,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchased => "purchased",
            Self::Promotional => "promotional",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "purchased" => Some(Self::Purchased),
            "promotional" => Some(Self::Promotional),
            _ => None,
        }
    }
}

/// A place credit lives in. Serialized into the ledger's `breakdown` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "bucket", rename_all = "snake_case")]
pub enum Bucket {
    Allowance,
    Rollover,
    Grant { id: Uuid, kind: GrantKind },
    Debt,
}

/// A signed change of the meter's net balance attributed to one bucket: negative when credit
/// leaves the bucket (or debt grows), positive when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Portion {
    #[serde(flatten)]
    pub bucket: Bucket,
    pub delta_credits: i64,
}

/// What kind of ledger entry an effect is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Debit,
    Commit,
    Refund,
    Grant,
    PeriodRoll,
    GrantExpiry,
    PlanChange,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debit => "debit",
            Self::Commit => "commit",
            Self::Refund => "refund",
            Self::Grant => "grant",
            Self::PeriodRoll => "period_roll",
            Self::GrantExpiry => "grant_expiry",
            Self::PlanChange => "plan_change",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Debit, Self::Commit, Self::Refund, Self::Grant, Self::PeriodRoll, Self::GrantExpiry, Self::PlanChange]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// One proposed ledger entry. Invariant: the breakdown sums to `delta_credits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub kind: EntryKind,
    pub delta_credits: i64,
    pub breakdown: Vec<Portion>,
}

impl Effect {
    /// Builds an effect whose delta is the sum of its (non-zero) portions.
    pub fn from_portions(kind: EntryKind, portions: Vec<Portion>) -> Effect {
        let breakdown: Vec<Portion> = portions.into_iter().filter(|p| p.delta_credits != 0).collect();
        let delta_credits = breakdown.iter().map(|p| p.delta_credits).sum();
        Effect { kind, delta_credits, breakdown }
    }
}

/// Sums portions per bucket, keeping first-seen order.
pub fn merge_portions(portions: Vec<Portion>) -> Vec<Portion> {
    let mut merged: Vec<Portion> = Vec::new();
    for portion in portions {
        match merged.iter_mut().find(|m| m.bucket == portion.bucket) {
            Some(existing) => existing.delta_credits += portion.delta_credits,
            None => merged.push(portion),
        }
    }
    merged
}
