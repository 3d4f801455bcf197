//! What the services answer. Outcomes of idempotent operations are stored as JSON and replayed
//! verbatim, so they derive serde.

use allot_domain::ledger::Portion;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::fair_use::FairUseView;
use super::rate::RateView;
use crate::repo::holds::HoldStatus;

/// Why a meter was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Denial {
    QuotaExhausted,
    InsufficientCredit,
    DebtLimitReached,
    NoEntitlement,
    RateLimited,
    MemberCapReached,
    DailyBudgetExhausted,
    PriceUnknown,
    PriceAnomaly,
}

impl Denial {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QuotaExhausted => "quota_exhausted",
            Self::InsufficientCredit => "insufficient_credit",
            Self::DebtLimitReached => "debt_limit_reached",
            Self::NoEntitlement => "no_entitlement",
            Self::RateLimited => "rate_limited",
            Self::MemberCapReached => "member_cap_reached",
            Self::DailyBudgetExhausted => "daily_budget_exhausted",
            Self::PriceUnknown => "price_unknown",
            Self::PriceAnomaly => "price_anomaly",
        }
    }
}

/// A meter's figures as the caller may see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterView {
    pub meter: String,
    pub plan_id: Option<String>,
    pub payer_account_id: String,
    pub limit_credits: Option<i64>,
    pub used_credits: i64,
    pub remaining_credits: Option<i64>,
    pub available_credits: Option<i64>,
    pub held_credits: i64,
    pub debt_credits: i64,
    pub rollover_credits: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub period_start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub period_end: OffsetDateTime,
    pub member_cap_credits: Option<i64>,
    pub member_used_credits: i64,
    pub rate: Option<RateView>,
}

/// The decision on one meter of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterOutcome {
    pub denial: Option<Denial>,
    pub entry_id: Option<Uuid>,
    pub breakdown: Vec<Portion>,
    pub retry_after_ms: i64,
    pub meter: MeterView,
    /// How usage given as a SKU was rated.
    #[serde(default)]
    pub rating: Option<super::pricing::Rated>,
    /// The subsidy pool's part of this line, when a pool paid any of it.
    #[serde(default)]
    pub subsidy: Option<super::subsidy::LineSubsidy>,
}

/// The decisions on every meter of a request, in request order. All are allowed or none is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub meters: Vec<MeterOutcome>,
    /// The acting account's fair-use standing.
    #[serde(default)]
    pub fair_use: Option<FairUseView>,
    /// The account's trial, while it is trialing.
    #[serde(default)]
    pub trial: Option<TrialView>,
    /// The subsidy pool's decision, when the request asked for subsidy.
    #[serde(default)]
    pub subsidy: Option<super::subsidy::SubsidyView>,
}

/// An active trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialView {
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    pub days_left: i64,
}

impl Decision {
    /// The first denied meter's reason; `None` when every meter is allowed.
    pub fn denial(&self) -> Option<Denial> {
        self.meters.iter().find_map(|m| m.denial)
    }

    /// The longest wait any meter asks for.
    pub fn retry_after_ms(&self) -> i64 {
        self.meters.iter().map(|m| m.retry_after_ms).max().unwrap_or(0)
    }

    /// Whether the decision may not be replayed: a rate limit passes with time.
    pub fn is_transient(&self) -> bool {
        self.denial() == Some(Denial::RateLimited)
    }
}

/// The answer to a reserve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveOutcome {
    pub hold_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub decision: Decision,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOutcome {
    pub status: HoldStatus,
    pub meters: Vec<MeterView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundOutcome {
    /// The account's refund entry; none when only the pool's part was refunded.
    pub entry_id: Option<Uuid>,
    pub breakdown: Vec<Portion>,
    pub refunded_total_credits: i64,
    pub meter: MeterView,
    #[serde(default)]
    pub subsidy: Option<super::subsidy::RefundView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantOutcome {
    pub grant_id: Uuid,
    pub entry_id: Uuid,
    pub meter: MeterView,
}
