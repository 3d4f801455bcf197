//! What the services answer. Outcomes of idempotent operations are stored as JSON and replayed
//! verbatim, so they derive serde.

use allot_domain::ledger::Portion;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::repo::holds::HoldStatus;

/// Why a decision was denied (the rules' reasons plus the plan's absence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Denial {
    QuotaExhausted,
    InsufficientCredit,
    DebtLimitReached,
    NoEntitlement,
}

/// A meter's figures as the caller may see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterView {
    pub meter: String,
    pub plan_id: Option<String>,
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
}

/// The answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub denial: Option<Denial>,
    pub meter: MeterView,
}

/// The answer to a debit or a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeOutcome {
    pub denial: Option<Denial>,
    pub entry_id: Option<Uuid>,
    pub breakdown: Vec<Portion>,
    pub meter: MeterView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveOutcome {
    pub denial: Option<Denial>,
    pub hold_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub meter: MeterView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOutcome {
    pub status: HoldStatus,
    pub meter: MeterView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundOutcome {
    pub entry_id: Uuid,
    pub breakdown: Vec<Portion>,
    pub refunded_total_credits: i64,
    pub meter: MeterView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantOutcome {
    pub grant_id: Uuid,
    pub entry_id: Uuid,
    pub meter: MeterView,
}
