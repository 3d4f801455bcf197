//! Service outcomes → responses. No logic beyond the shape of the wire.

use allot_domain::ledger::{Bucket, EntryKind, GrantKind, Portion};
use allot_domain::plan::SubscriptionStatus;
use allot_proto::v1 as pb;
use time::OffsetDateTime;

use crate::repo::grants::GrantRow;
use crate::repo::holds::{HoldRow, HoldStatus};
use crate::repo::ledger::EntryRow;
use crate::repo::plans::PlanRecord;
use crate::repo::subscriptions::SubscriptionRecord;
use crate::repo::usage::Group;
use crate::service::admin::Balance;
use crate::service::outcome::{Decision, Denial, GrantOutcome, MeterOutcome, MeterView, RefundOutcome, ReleaseOutcome, ReserveOutcome};
use crate::service::rate::RateView;
use crate::service::summary::Summary;

pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    let nanos = t.unix_timestamp_nanos();
    prost_types::Timestamp {
        seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

fn decision(denial: Option<Denial>) -> (i32, i32) {
    let reason = match denial {
        None => pb::DenialReason::Unspecified,
        Some(Denial::QuotaExhausted) => pb::DenialReason::QuotaExhausted,
        Some(Denial::InsufficientCredit) => pb::DenialReason::InsufficientCredit,
        Some(Denial::DebtLimitReached) => pb::DenialReason::DebtLimitReached,
        Some(Denial::NoEntitlement) => pb::DenialReason::NoEntitlement,
        Some(Denial::RateLimited) => pb::DenialReason::RateLimited,
        Some(Denial::MemberCapReached) => pb::DenialReason::MemberCapReached,
        Some(Denial::DailyBudgetExhausted) => pb::DenialReason::DailyBudgetExhausted,
        Some(Denial::PriceUnknown) => pb::DenialReason::PriceUnknown,
        Some(Denial::PriceAnomaly) => pb::DenialReason::PriceAnomaly,
    };
    let decision = if denial.is_some() { pb::Decision::Denied } else { pb::Decision::Allowed };
    (decision as i32, reason as i32)
}

pub fn meter(view: &MeterView) -> pb::MeterStatus {
    pb::MeterStatus {
        meter: view.meter.clone(),
        limit_credits: view.limit_credits,
        used_credits: view.used_credits,
        remaining_credits: view.remaining_credits,
        available_credits: view.available_credits,
        held_credits: view.held_credits,
        debt_credits: view.debt_credits,
        period_start: Some(timestamp(view.period_start)),
        period_end: Some(timestamp(view.period_end)),
        plan_id: view.plan_id.clone().unwrap_or_default(),
        reset_at: Some(timestamp(view.period_end)),
        payer_account_id: view.payer_account_id.clone(),
        member_cap_credits: view.member_cap_credits,
        member_used_credits: view.member_used_credits,
        rate: view.rate.as_ref().map(rate),
    }
}

fn rate(view: &RateView) -> pb::RateStatus {
    pb::RateStatus {
        limit_per_minute: view.limit_per_minute,
        remaining: view.remaining,
        reset_at: Some(timestamp(view.reset_at)),
        failed_open: view.failed_open,
    }
}

fn meter_decision(outcome: &MeterOutcome) -> pb::MeterDecision {
    let (decision, reason) = decision(outcome.denial);
    pb::MeterDecision {
        decision,
        reason,
        meter: Some(meter(&outcome.meter)),
        entry_id: id_or_empty(outcome.entry_id),
        breakdown: breakdown(&outcome.breakdown),
        retry_after_ms: outcome.retry_after_ms,
        rated_cost_credits: outcome.rating.as_ref().map_or(0, |r| r.cost_credits),
        price_version: outcome.rating.as_ref().map_or(0, |r| r.price_version),
        subsidy: outcome.subsidy.as_ref().map(|s| pb::LineSubsidy {
            subsidy_id: id_or_empty(s.subsidy_id),
            absorbed_credits: s.absorbed_credits,
            account_credits: s.account_credits,
        }),
    }
}

/// The proto form of a subsidy decision.
pub fn subsidy(view: &crate::service::subsidy::SubsidyView) -> pb::SubsidyDecision {
    let serve = match allot_domain::subsidy::Serve::parse(&view.serve) {
        Some(allot_domain::subsidy::Serve::Free) => pb::SubsidyServe::Free,
        Some(allot_domain::subsidy::Serve::Partial) => pb::SubsidyServe::Partial,
        Some(allot_domain::subsidy::Serve::Gate) => pb::SubsidyServe::Gate,
        None => pb::SubsidyServe::Unspecified,
    };
    pb::SubsidyDecision {
        serve: serve as i32,
        pool_id: view.pool_id.clone(),
        identity: view.identity.clone(),
        trust_tier: view.tier.clone(),
        cost_credits: view.cost_credits,
        absorbed_credits: view.absorbed_credits,
        account_credits: view.account_credits,
        daily_budget_credits: view.daily_budget_credits,
        budget_left_credits: view.budget_left_credits,
        pool_balance_credits: view.pool_balance_credits,
    }
}

/// The top-level fields every decision response shares: overall decision and reason, the first
/// meter's entry, breakdown and status (the one-meter shorthand), every meter, the longest wait.
struct Top {
    decision: i32,
    reason: i32,
    entry_id: String,
    breakdown: Vec<pb::BucketAmount>,
    meter: Option<pb::MeterStatus>,
    meters: Vec<pb::MeterDecision>,
    retry_after_ms: i64,
    fair_use: Option<pb::FairUseStatus>,
    trial: Option<pb::TrialStatus>,
    subsidy: Option<pb::SubsidyDecision>,
}

/// The proto stage of a stored stage name.
pub fn stage(name: &str) -> pb::EscalationStage {
    match allot_domain::escalation::Stage::parse(name) {
        Some(allot_domain::escalation::Stage::None) => pb::EscalationStage::None,
        Some(allot_domain::escalation::Stage::Warning) => pb::EscalationStage::Warning,
        Some(allot_domain::escalation::Stage::Throttle) => pb::EscalationStage::Throttle,
        Some(allot_domain::escalation::Stage::Restrict) => pb::EscalationStage::Restrict,
        None => pb::EscalationStage::Unspecified,
    }
}

pub fn fair_use(view: &crate::service::fair_use::FairUseView) -> pb::FairUseStatus {
    pb::FairUseStatus { stage: stage(&view.stage) as i32, soft_caps_triggered: view.soft_caps_triggered.clone(), enforced: view.enforced }
}

fn top(d: &Decision) -> Top {
    let (decision, reason) = decision(d.denial());
    let first = d.meters.first();
    Top {
        decision,
        reason,
        entry_id: id_or_empty(first.and_then(|m| m.entry_id)),
        breakdown: first.map(|m| breakdown(&m.breakdown)).unwrap_or_default(),
        meter: first.map(|m| meter(&m.meter)),
        meters: d.meters.iter().map(meter_decision).collect(),
        retry_after_ms: d.retry_after_ms(),
        fair_use: d.fair_use.as_ref().map(fair_use),
        trial: Some(match &d.trial {
            Some(t) => pb::TrialStatus { trialing: true, ends_at: Some(timestamp(t.ends_at)), days_left: t.days_left },
            None => pb::TrialStatus::default(),
        }),
        subsidy: d.subsidy.as_ref().map(subsidy),
    }
}

fn grant_kind(kind: GrantKind) -> pb::GrantKind {
    match kind {
        GrantKind::Purchased => pb::GrantKind::Purchased,
        GrantKind::Promotional => pb::GrantKind::Promotional,
    }
}

pub fn breakdown(portions: &[Portion]) -> Vec<pb::BucketAmount> {
    portions
        .iter()
        .map(|p| {
            let (kind, grant_id) = match p.bucket {
                Bucket::Allowance => (pb::BucketKind::Allowance, String::new()),
                Bucket::Rollover => (pb::BucketKind::Rollover, String::new()),
                Bucket::Debt => (pb::BucketKind::Debt, String::new()),
                Bucket::Grant { id, kind: GrantKind::Purchased } => (pb::BucketKind::Purchased, id.to_string()),
                Bucket::Grant { id, kind: GrantKind::Promotional } => (pb::BucketKind::Promotional, id.to_string()),
            };
            pb::BucketAmount { kind: kind as i32, grant_id, amount_credits: p.delta_credits }
        })
        .collect()
}

fn id_or_empty(id: Option<uuid::Uuid>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

pub fn check(d: Decision) -> pb::CheckResponse {
    let t = top(&d);
    pb::CheckResponse {
        decision: t.decision,
        reason: t.reason,
        meter: t.meter,
        meters: t.meters,
        retry_after_ms: t.retry_after_ms,
        fair_use: t.fair_use,
        trial: t.trial,
        subsidy: t.subsidy,
    }
}

pub fn debit(d: Decision) -> pb::DebitResponse {
    let t = top(&d);
    pb::DebitResponse {
        decision: t.decision,
        reason: t.reason,
        entry_id: t.entry_id,
        breakdown: t.breakdown,
        meter: t.meter,
        meters: t.meters,
        retry_after_ms: t.retry_after_ms,
        fair_use: t.fair_use,
        trial: t.trial,
        subsidy: t.subsidy,
    }
}

pub fn commit(d: Decision) -> pb::CommitResponse {
    let t = top(&d);
    pb::CommitResponse { decision: t.decision, reason: t.reason, entry_id: t.entry_id, breakdown: t.breakdown, meter: t.meter, meters: t.meters }
}

pub fn reserve(outcome: ReserveOutcome) -> pb::ReserveResponse {
    let t = top(&outcome.decision);
    pb::ReserveResponse {
        decision: t.decision,
        reason: t.reason,
        hold_id: id_or_empty(outcome.hold_id),
        expires_at: outcome.expires_at.map(timestamp),
        meter: t.meter,
        meters: t.meters,
        retry_after_ms: t.retry_after_ms,
        fair_use: t.fair_use,
        trial: t.trial,
        subsidy: t.subsidy,
    }
}

fn hold_status(status: HoldStatus) -> pb::HoldStatus {
    match status {
        HoldStatus::Held => pb::HoldStatus::Held,
        HoldStatus::Committed => pb::HoldStatus::Committed,
        HoldStatus::Released => pb::HoldStatus::Released,
        HoldStatus::Expired => pb::HoldStatus::Expired,
    }
}

pub fn release(outcome: ReleaseOutcome) -> pb::ReleaseResponse {
    pb::ReleaseResponse {
        status: hold_status(outcome.status) as i32,
        meter: outcome.meters.first().map(meter),
        meters: outcome.meters.iter().map(meter).collect(),
    }
}

pub fn refund(outcome: RefundOutcome) -> pb::RefundResponse {
    pb::RefundResponse {
        entry_id: id_or_empty(outcome.entry_id),
        breakdown: breakdown(&outcome.breakdown),
        refunded_total_credits: outcome.refunded_total_credits,
        meter: Some(meter(&outcome.meter)),
        subsidy: outcome.subsidy.map(|s| pb::SubsidyRefund {
            pool_id: s.pool_id,
            subsidy_id: s.subsidy_id.to_string(),
            pool_refunded_credits: s.pool_refunded_credits,
            account_refunded_credits: s.account_refunded_credits,
        }),
    }
}

pub fn grant(outcome: GrantOutcome) -> pb::GrantCreditsResponse {
    pb::GrantCreditsResponse { grant_id: outcome.grant_id.to_string(), entry_id: outcome.entry_id.to_string(), meter: Some(meter(&outcome.meter)) }
}

pub fn plan(record: PlanRecord) -> pb::Plan {
    pb::Plan {
        plan_id: record.id.as_str().to_owned(),
        tier: record.tier,
        name: record.name,
        meters: record
            .meters
            .iter()
            .map(|(m, t)| pb::MeterAllowance {
                meter: m.as_str().to_owned(),
                allowance_credits: t.policy.allowance_credits,
                rollover_cap_credits: t.policy.rollover_cap_credits,
                debt_limit_credits: t.policy.debt_limit_credits,
                rate_limit_per_minute: t.rate.map(|r| r.limit_per_minute),
                rate_burst: t.rate.map(|r| r.burst),
                rate_failure_policy: match t.rate {
                    Some(r) if !r.fail_open => pb::RateFailurePolicy::FailClosed as i32,
                    Some(_) => pb::RateFailurePolicy::FailOpen as i32,
                    None => pb::RateFailurePolicy::Unspecified as i32,
                },
                member_cap_credits: t.member_cap_credits,
                trial_grant_credits: t.trial_grant_credits,
            })
            .collect(),
        trial_days: record.trial_days,
        is_free_default: record.is_free_default,
        updated_at: Some(timestamp(record.updated_at)),
        trial_keeps_credits: record.trial_keeps_credits,
        trial_ending_notice_ms: Some(record.trial_ending_notice_ms),
        scope: match record.scope {
            allot_domain::plan::Scope::User => pb::PlanScope::User as i32,
            allot_domain::plan::Scope::Org => pb::PlanScope::Org as i32,
        },
    }
}

pub fn subscription(record: SubscriptionRecord, entitled: bool) -> pb::Subscription {
    let status = match record.status {
        SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
        SubscriptionStatus::Trialing => pb::SubscriptionStatus::Trialing,
        SubscriptionStatus::PastDue => pb::SubscriptionStatus::PastDue,
        SubscriptionStatus::Canceled => pb::SubscriptionStatus::Canceled,
        SubscriptionStatus::Unpaid => pb::SubscriptionStatus::Unpaid,
        SubscriptionStatus::Incomplete => pb::SubscriptionStatus::Incomplete,
    };
    pb::Subscription {
        account_id: record.account_id.as_str().to_owned(),
        plan_id: record.plan_id.as_str().to_owned(),
        status: status as i32,
        current_period_start: Some(timestamp(record.current_period_start)),
        current_period_end: Some(timestamp(record.current_period_end)),
        entitled,
        updated_at: Some(timestamp(record.updated_at)),
        cancel_at_period_end: record.cancel_at_period_end,
    }
}

fn grant_row(row: &GrantRow) -> pb::Grant {
    pb::Grant {
        grant_id: row.grant.id.to_string(),
        meter: row.meter.clone(),
        kind: grant_kind(row.grant.kind) as i32,
        amount_credits: row.amount_credits,
        remaining_credits: row.grant.remaining_credits,
        priority: row.grant.priority,
        expires_at: row.grant.expires_at.map(timestamp),
        created_at: Some(timestamp(row.grant.created_at)),
    }
}

fn hold_row(row: &HoldRow) -> pb::Hold {
    pb::Hold {
        hold_id: row.id.to_string(),
        meter: row.meter.clone(),
        amount_credits: row.amount_credits,
        status: hold_status(row.status) as i32,
        expires_at: Some(timestamp(row.expires_at)),
    }
}

pub fn balance(account_id: String, balance: Balance) -> pb::GetBalanceResponse {
    pb::GetBalanceResponse {
        account_id,
        plan_id: balance.plan_id.unwrap_or_default(),
        meters: balance
            .meters
            .iter()
            .map(|m| pb::MeterBalance {
                status: Some(meter(&m.view)),
                rollover_credits: m.view.rollover_credits,
                grants: m.grants.iter().map(grant_row).collect(),
                holds: m.holds.iter().map(hold_row).collect(),
            })
            .collect(),
    }
}

fn entry_kind(kind: EntryKind) -> pb::EntryKind {
    match kind {
        EntryKind::Debit => pb::EntryKind::Debit,
        EntryKind::Commit => pb::EntryKind::Commit,
        EntryKind::Refund => pb::EntryKind::Refund,
        EntryKind::Grant => pb::EntryKind::Grant,
        EntryKind::PeriodRoll => pb::EntryKind::PeriodRoll,
        EntryKind::GrantExpiry => pb::EntryKind::GrantExpiry,
        EntryKind::PlanChange => pb::EntryKind::PlanChange,
    }
}

pub fn ledger(entries: Vec<EntryRow>, next_page_token: String) -> pb::ListLedgerEntriesResponse {
    pb::ListLedgerEntriesResponse {
        entries: entries
            .into_iter()
            .map(|e| pb::LedgerEntry {
                entry_id: e.id.to_string(),
                account_id: e.account_id,
                meter: e.meter,
                seq: e.seq,
                kind: entry_kind(e.kind) as i32,
                delta_credits: e.delta_credits,
                breakdown: breakdown(&e.breakdown),
                refunds_entry_id: id_or_empty(e.refs.refunds_entry_id),
                hold_id: id_or_empty(e.refs.hold_id),
                idempotency_key: e.refs.idempotency_key.unwrap_or_default(),
                created_at: Some(timestamp(e.created_at)),
                acting_account_id: e.refs.acting_account_id.unwrap_or_default(),
                attributes: e
                    .refs
                    .attributes
                    .as_ref()
                    .and_then(|a| a.as_object())
                    .map(|o| o.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect())
                    .unwrap_or_default(),
                rating_json: e.refs.rating.map(|r| r.to_string()).unwrap_or_default(),
            })
            .collect(),
        next_page_token,
    }
}

pub fn summary(account_id: String, summary: Summary) -> pb::GetUsageSummaryResponse {
    let payer = &summary.payer;
    pb::GetUsageSummaryResponse {
        account_id,
        plan_id: payer.plan_id.clone().unwrap_or_default(),
        plan_tier: payer.plan_tier.clone().unwrap_or_default(),
        subscription_status: payer.subscription.as_ref().map(|s| s.status.as_str().to_owned()).unwrap_or_default(),
        entitled: payer.entitled,
        period_start: Some(timestamp(payer.period.start)),
        period_end: Some(timestamp(payer.period.end)),
        payer_account_id: payer.payer.as_str().to_owned(),
        meters: summary
            .meters
            .iter()
            .map(|m| pb::MeterUsage {
                status: Some(meter(&m.view)),
                rollover_credits: m.view.rollover_credits,
                purchased_credits: m.purchased_credits,
                promotional_credits: m.promotional_credits,
            })
            .collect(),
    }
}

pub fn breakdown_response(period: allot_domain::period::Period, groups: Vec<Group>) -> pb::GetUsageBreakdownResponse {
    pb::GetUsageBreakdownResponse {
        period_start: Some(timestamp(period.start)),
        period_end: Some(timestamp(period.end)),
        groups: groups.into_iter().map(|g| pb::UsageGroup { value: g.value, total_credits: g.total_credits, count: g.charges }).collect(),
    }
}
