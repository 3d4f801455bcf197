//! Fair use on the decision path: an account's standing (settings, exemption, live violations
//! and the stage they put it in), its effects on decisions (throttled rate caps, daily budgets in
//! the restrict stage), usage recording for soft caps, and stage changes written with an event in
//! the same transaction.

use allot_domain::escalation::Stage;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};
use crate::repo::fair_use::{self, Settings};
use crate::repo::{self, Tx};

/// The fair-use part of a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FairUseView {
    pub stage: String,
    pub enforced: bool,
    pub soft_caps_triggered: Vec<String>,
}

/// An account's fair-use standing at one instant.
#[derive(Debug, Clone)]
pub struct Standing {
    pub settings: Settings,
    pub exempt: bool,
    pub violations: i64,
    pub stored: Option<Stage>,
}

impl Standing {
    pub async fn load(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, now: OffsetDateTime) -> Result<Standing, Error> {
        let settings = fair_use::settings(tx, tenant).await?;
        let since = now - time::Duration::milliseconds(settings.violation_window_ms);
        let (exempt, violations, stored) = fair_use::standing(tx, tenant, account, since).await?;
        Ok(Standing { settings, exempt, violations, stored })
    }

    /// Whether fair use applies: enabled, no kill switch, not exempt.
    pub fn enforced(&self) -> bool {
        self.settings.enabled && !self.settings.kill_switch && !self.exempt
    }

    /// The stage in force (none when fair use does not apply).
    pub fn stage(&self) -> Stage {
        if !self.enforced() {
            return Stage::None;
        }
        self.settings.ladder.stage_for(u32::try_from(self.violations).unwrap_or(u32::MAX))
    }

    /// The percent rate caps are lowered to, in the throttle and restrict stages.
    pub fn rate_percent(&self) -> Option<u32> {
        (self.stage() >= Stage::Throttle).then_some(self.settings.throttle_rate_percent)
    }

    /// The daily budget of `meter` in the restrict stage.
    pub fn daily_budget(&self, meter: &Meter) -> Option<i64> {
        if self.stage() < Stage::Restrict {
            return None;
        }
        self.settings.restrict_daily_budgets.get(meter.as_str()).copied()
    }

    pub fn view(&self, soft_caps_triggered: Vec<String>) -> FairUseView {
        FairUseView { stage: self.stage().as_str().to_owned(), enforced: self.enforced(), soft_caps_triggered }
    }

    /// Stores the stage when it moved (up, or back down as violations expire) and writes a
    /// `stage_changed` event in the same transaction — unless another transaction moved the
    /// stored stage since it was read (`repo::fair_use::set_stage`): that move stands, and the
    /// next decision moves it on from there if it must. Returns the stage in force either way.
    pub async fn sync(&mut self, tx: &Tx<'_>, tenant: TenantId, account: &AccountId, reason: &str, now: OffsetDateTime) -> Result<Stage, Error> {
        let stage = self.stage();
        let from = self.stored.unwrap_or(Stage::None);
        if stage != from || (self.stored.is_none() && stage != Stage::None) {
            let reason = if reason.is_empty() { format!("{} violation(s) in the window", self.violations) } else { reason.to_owned() };
            if !fair_use::set_stage(tx, tenant, account, self.stored, stage, &reason, now).await? {
                tracing::debug!(account.id = %account, stage.from = from.as_str(), stage.to = stage.as_str(), "stage moved meanwhile by another transaction; left as stored");
                return Ok(stage);
            }
            let payload = serde_json::json!({ "from": from.as_str(), "to": stage.as_str(), "reason": reason, "violations": self.violations });
            repo::outbox::append(tx, tenant, "stage_changed", account, payload, now).await?;
            tracing::info!(account.id = %account, stage.from = from.as_str(), stage.to = stage.as_str(), "escalation stage changed");
            self.stored = Some(stage);
        }
        Ok(stage)
    }
}

/// Soft caps of the plan on `meter` that the account's usage exceeds now, as "meter/window_ms".
pub async fn triggered_caps(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    plan_id: Option<&str>,
    meter: Option<&Meter>,
    now: OffsetDateTime,
) -> Result<Vec<String>, Error> {
    let Some(plan_id) = plan_id else { return Ok(Vec::new()) };
    let mut triggered = Vec::new();
    for (cap_meter, cap) in fair_use::soft_caps(tx, tenant, plan_id, meter).await? {
        let meter = Meter::parse(&cap_meter).map_err(|e| Error::Internal(format!("stored meter: {e}")))?;
        let used = fair_use::used_since(tx, tenant, account, &meter, now - time::Duration::milliseconds(cap.window_ms)).await?;
        if cap.is_triggered(used) {
            triggered.push(format!("{cap_meter}/{}", cap.window_ms));
        }
    }
    Ok(triggered)
}

/// Records a charge for the soft caps of its meter under the payer's plan (nothing when no cap
/// watches the meter); writes a `soft_cap_triggered` event for each cap it pushes over its
/// threshold. Returns the caps triggered after it.
pub async fn record_usage(
    tx: &Tx<'_>,
    tenant: TenantId,
    account: &AccountId,
    plan_id: Option<&str>,
    meter: &Meter,
    amount_credits: i64,
    now: OffsetDateTime,
) -> Result<Vec<String>, Error> {
    let Some(plan_id) = plan_id else { return Ok(Vec::new()) };
    let caps = fair_use::soft_caps(tx, tenant, plan_id, Some(meter)).await?;
    // Hourly usage is kept for soft caps only: a meter no cap watches writes none.
    if caps.is_empty() {
        return Ok(Vec::new());
    }
    fair_use::add_hourly(tx, tenant, account, meter, now, amount_credits).await?;
    let mut triggered = Vec::new();
    for (_, cap) in caps {
        let after = fair_use::used_since(tx, tenant, account, meter, now - time::Duration::milliseconds(cap.window_ms)).await?;
        if cap.newly_triggered(after - amount_credits, after) {
            let payload = serde_json::json!({ "meter": meter.as_str(), "window_ms": cap.window_ms, "threshold_credits": cap.threshold_credits, "used_credits": after });
            repo::outbox::append(tx, tenant, "soft_cap_triggered", account, payload, now).await?;
        }
        if cap.is_triggered(after) {
            triggered.push(format!("{meter}/{}", cap.window_ms));
        }
    }
    Ok(triggered)
}
