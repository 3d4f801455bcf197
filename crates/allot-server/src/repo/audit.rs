//! `admin_audit`: one row per admin action — who (the credential), what (the RPC), the target,
//! and the state before and after as JSON — written in the action's own transaction, so an
//! action and its audit row commit or vanish together. The table is append-only (a trigger
//! refuses UPDATE and DELETE, and the server's role may only INSERT and SELECT it).

use time::OffsetDateTime;

use super::Tx;
use crate::auth::Principal;
use crate::error::Error;

/// What an admin action changed, by kind and key. `before` and `after` are read by the same
/// query, so they compare like for like.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Plan(&'a str),
    Subscription(&'a str),
    Account(&'a str),
    Grant(uuid::Uuid),
    Trial(&'a str),
    Price(&'a str),
    PricingPolicy,
    FairUseSettings,
    Exempt(&'a str),
    SoftCaps(&'a str),
    /// An API key (created or revoked; never its hash).
    ApiKey(uuid::Uuid),
    /// A subsidy pool: its settings and shard balances (top-ups show as a balance change).
    Pool(&'a str),
    TrustTier(&'a str),
    /// An account's trust tier.
    AccountTrust(&'a str),
}

impl Subject<'_> {
    fn kind_and_key(&self) -> (&'static str, String) {
        match self {
            Subject::Plan(id) => ("plan", (*id).to_owned()),
            Subject::Subscription(a) => ("subscription", (*a).to_owned()),
            Subject::Account(a) => ("account", (*a).to_owned()),
            Subject::Grant(id) => ("grant", id.to_string()),
            Subject::Trial(a) => ("trial", (*a).to_owned()),
            Subject::Price(sku) => ("price", (*sku).to_owned()),
            Subject::PricingPolicy => ("pricing_policy", String::new()),
            Subject::FairUseSettings => ("fair_use_settings", String::new()),
            Subject::Exempt(a) => ("exempt", (*a).to_owned()),
            Subject::SoftCaps(plan) => ("soft_caps", (*plan).to_owned()),
            Subject::ApiKey(id) => ("api_key", id.to_string()),
            Subject::Pool(id) => ("subsidy_pool", (*id).to_owned()),
            Subject::TrustTier(tier) => ("trust_tier", (*tier).to_owned()),
            Subject::AccountTrust(a) => ("account_trust", (*a).to_owned()),
        }
    }

    /// The query that reads the subject's state as one JSON value (NULL when absent); `$1` is the
    /// tenant and `$2` the key.
    fn snapshot_sql(&self) -> &'static str {
        match self {
            Subject::Plan(_) => {
                "SELECT jsonb_build_object('plan', to_jsonb(p), 'meters', \
                   (SELECT COALESCE(jsonb_agg(to_jsonb(m) ORDER BY m.meter COLLATE \"C\"), '[]') FROM plan_meters m WHERE m.tenant_id = p.tenant_id AND m.plan_id = p.id)) \
                 FROM plans p WHERE p.tenant_id = $1 AND p.id = $2"
            }
            Subject::Subscription(_) => "SELECT to_jsonb(s) FROM subscriptions s WHERE s.tenant_id = $1 AND s.account_id = $2",
            // The fair-use mark (V17) is bookkeeping of the fair-use tables, not the account's settings.
            Subject::Account(_) => "SELECT to_jsonb(a) - 'fair_use_marked' FROM accounts a WHERE a.tenant_id = $1 AND a.id = $2",
            Subject::Grant(_) => "SELECT to_jsonb(g) FROM grants g WHERE g.tenant_id = $1 AND g.id::text = $2",
            Subject::Trial(_) => "SELECT to_jsonb(t) - 'fingerprint_sha256' FROM trials t WHERE t.tenant_id = $1 AND t.account_id = $2",
            Subject::Price(_) => {
                "SELECT jsonb_agg(jsonb_build_object('version', to_jsonb(v), 'rates', \
                   (SELECT jsonb_agg(to_jsonb(r) ORDER BY r.dimension) FROM price_rates r WHERE r.tenant_id = v.tenant_id AND r.sku = v.sku AND r.version = v.version)) \
                   ORDER BY v.version) \
                 FROM price_versions v WHERE v.tenant_id = $1 AND v.sku = $2"
            }
            Subject::PricingPolicy => {
                "SELECT jsonb_build_object('policy', to_jsonb(p), 'dimensions', \
                   (SELECT jsonb_agg(to_jsonb(d) ORDER BY d.dimension) FROM pricing_policy_dimensions d WHERE d.tenant_id = p.tenant_id)) \
                 FROM pricing_policies p WHERE p.tenant_id = $1 AND $2 = ''"
            }
            Subject::FairUseSettings => "SELECT to_jsonb(s) FROM escalation_settings s WHERE s.tenant_id = $1 AND $2 = ''",
            Subject::Exempt(_) => "SELECT to_jsonb(e) FROM escalation_exempt e WHERE e.tenant_id = $1 AND e.account_id = $2",
            Subject::ApiKey(_) => "SELECT to_jsonb(k) - 'key_sha256' FROM api_keys k WHERE k.tenant_id = $1 AND k.id::text = $2",
            Subject::Pool(_) => {
                "SELECT jsonb_build_object('pool', to_jsonb(p), 'shards', \
                   (SELECT COALESCE(jsonb_agg(jsonb_build_object('shard', s.shard, 'balance_credits', s.balance_credits, 'reserved_credits', s.reserved_credits) ORDER BY s.shard), '[]') \
                    FROM subsidy_pool_shards s WHERE s.tenant_id = p.tenant_id AND s.pool_id = p.id)) \
                 FROM subsidy_pools p WHERE p.tenant_id = $1 AND p.id = $2"
            }
            Subject::TrustTier(_) => "SELECT to_jsonb(t) FROM trust_tiers t WHERE t.tenant_id = $1 AND t.tier = $2",
            Subject::AccountTrust(_) => "SELECT to_jsonb(a) FROM account_trust a WHERE a.tenant_id = $1 AND a.account_id = $2",
            Subject::SoftCaps(_) => {
                "SELECT jsonb_agg(to_jsonb(c) ORDER BY c.meter COLLATE \"C\", c.window_ms) FROM soft_caps c WHERE c.tenant_id = $1 AND c.plan_id = $2 HAVING COUNT(*) > 0"
            }
        }
    }
}

/// The subject's current state (JSON), or `None` when it does not exist.
pub async fn snapshot(tx: &Tx<'_>, principal: &Principal, subject: Subject<'_>) -> Result<Option<serde_json::Value>, Error> {
    let (_, key) = subject.kind_and_key();
    let stmt = tx.prepare_cached(subject.snapshot_sql()).await?;
    Ok(tx.query_opt(&stmt, &[&principal.tenant.0, &key]).await?.and_then(|row| row.get::<_, Option<serde_json::Value>>(0)))
}

/// Appends the audit row of an action.
pub async fn append(
    tx: &Tx<'_>,
    principal: &Principal,
    method: &str,
    subject: Subject<'_>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let (kind, key) = subject.kind_and_key();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO admin_audit (tenant_id, actor, actor_role, method, subject_kind, subject_key, before, after, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let actor = principal.credential.to_string();
    tx.execute(&stmt, &[&principal.tenant.0, &actor, &principal.role.as_str(), &method, &kind, &key, &before, &after, &now]).await?;
    Ok(())
}

/// Records an admin action around its write: `begin` reads the state before, `finish` reads it
/// after and appends the row, both in the action's transaction.
pub struct Audit<'p, 's> {
    principal: &'p Principal,
    method: &'static str,
    subject: Subject<'s>,
    before: Option<serde_json::Value>,
}

impl<'p, 's> Audit<'p, 's> {
    pub async fn begin(tx: &Tx<'_>, principal: &'p Principal, method: &'static str, subject: Subject<'s>) -> Result<Audit<'p, 's>, Error> {
        let before = snapshot(tx, principal, subject).await?;
        Ok(Audit { principal, method, subject, before })
    }

    pub async fn finish(self, tx: &Tx<'_>, now: OffsetDateTime) -> Result<(), Error> {
        let after = snapshot(tx, self.principal, self.subject).await?;
        append(tx, self.principal, self.method, self.subject, self.before, after, now).await
    }
}
