//! Read-only reports for gateways and dashboards: an account's usage summary (plan, period, every
//! bucket per meter) and usage breakdowns by a ledger attribute, read from the roll-ups that the
//! charges maintain (never a scan of the ledger).

use allot_domain::ledger::GrantKind;
use allot_domain::period::{period_containing, subscription_period, Period};
use time::OffsetDateTime;

use super::in_force::{self, Payer};
use super::meter_session::MeterSession;
use super::outcome::MeterView;
use super::Ctx;
use crate::error::Error;
use crate::ids::{AccountId, Meter, TenantId};
use crate::repo::usage::Group;
use crate::repo::{self, Tx};

/// Most groups a breakdown returns.
pub const BREAKDOWN_GROUPS_MAX: i64 = 1_000;
/// Most meters a summary lists.
pub const SUMMARY_METERS_MAX: usize = 1_000;

/// One meter of a summary.
#[derive(Debug, Clone)]
pub struct MeterSummary {
    pub view: MeterView,
    pub purchased_credits: i64,
    pub promotional_credits: i64,
}

/// An account's usage summary.
#[derive(Debug, Clone)]
pub struct Summary {
    pub payer: Payer,
    pub meters: Vec<MeterSummary>,
}

#[derive(Clone)]
pub struct Reports {
    ctx: Ctx,
}

async fn read_only(client: &mut deadpool_postgres::Client, tenant: TenantId) -> Result<Tx<'_>, Error> {
    Ok(crate::db::begin_with(client, tenant, crate::db::Access::Snapshot).await?)
}

impl Reports {
    pub fn new(ctx: Ctx) -> Reports {
        Reports { ctx }
    }

    /// Plan, subscription and period, and every meter the plan lists or the payer has used.
    pub async fn summary(&self, tenant: TenantId, account: &AccountId) -> Result<Summary, Error> {
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = read_only(&mut client, tenant).await?;
        let payer = in_force::resolve(&tx, tenant, account, now).await?;
        let mut meters = repo::balances::list_meters(&tx, tenant, &payer.payer).await?;
        if let Some(plan) = &payer.plan_id {
            if let Some(record) = repo::plans::get(&tx, tenant, plan).await? {
                meters.extend(record.meters.into_iter().map(|(m, _)| m));
            }
        }
        meters.sort();
        meters.dedup();
        meters.truncate(SUMMARY_METERS_MAX);
        let mut summaries = Vec::with_capacity(meters.len());
        for meter in &meters {
            let session = MeterSession::snapshot(&tx, tenant, &payer, meter, now).await?;
            let sum_of = |kind: GrantKind| -> i64 {
                session.state.grants.iter().filter(|g| g.kind == kind && g.is_live(now)).map(|g| g.remaining_credits).sum()
            };
            summaries.push(MeterSummary {
                purchased_credits: sum_of(GrantKind::Purchased),
                promotional_credits: sum_of(GrantKind::Promotional),
                view: session.view(now),
            });
        }
        tx.commit().await?;
        Ok(Summary { payer, meters: summaries })
    }

    /// Charged totals of `meter` grouped by attribute `group_by`, in the period containing
    /// `period_at` (default: now). For a pooled member, the org's meter is reported.
    pub async fn breakdown(
        &self,
        tenant: TenantId,
        account: &AccountId,
        meter: &Meter,
        group_by: &str,
        period_at: Option<OffsetDateTime>,
    ) -> Result<(Period, Vec<Group>), Error> {
        let now = self.ctx.clock.now();
        let mut client = self.ctx.db().await?;
        let tx = read_only(&mut client, tenant).await?;
        let payer = in_force::resolve(&tx, tenant, account, now).await?;
        let period = match period_at {
            None => payer.period,
            Some(at) => match (&payer.subscription, payer.entitled) {
                (Some(sub), true) => subscription_period(sub.current_period_start, sub.current_period_end, at),
                _ => period_containing(payer.anchor, at),
            },
        };
        let groups = repo::usage::breakdown(&tx, tenant, &payer.payer, meter, period.start, group_by, BREAKDOWN_GROUPS_MAX).await?;
        tx.commit().await?;
        Ok((period, groups))
    }
}
