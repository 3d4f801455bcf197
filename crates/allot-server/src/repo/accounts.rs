//! `accounts`: org membership. An account without a row is stand-alone.

use super::Tx;
use crate::error::Error;
use crate::ids::{AccountId, TenantId};

/// Sets (or clears) the account's org.
pub async fn upsert(tx: &Tx<'_>, tenant: TenantId, account: &AccountId, org: Option<&AccountId>) -> Result<(), Error> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO accounts (tenant_id, id, org_id, updated_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (tenant_id, id) DO UPDATE SET org_id = EXCLUDED.org_id, updated_at = EXCLUDED.updated_at",
        )
        .await?;
    tx.execute(&stmt, &[&tenant.0, &account.as_str(), &org.map(AccountId::as_str)]).await?;
    Ok(())
}

/// The account's org, if it is a member of one.
pub async fn org_of(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<Option<AccountId>, Error> {
    let stmt = tx.prepare_cached("SELECT org_id FROM accounts WHERE tenant_id = $1 AND id = $2").await?;
    let org: Option<String> = tx.query_opt(&stmt, &[&tenant.0, &account.as_str()]).await?.and_then(|row| row.get(0));
    org.map(|o| AccountId::parse(&o).map_err(|e| Error::Internal(format!("stored org: {e}")))).transpose()
}

/// Whether any account names `account` as its org.
pub async fn has_members(tx: &Tx<'_>, tenant: TenantId, account: &AccountId) -> Result<bool, Error> {
    let stmt = tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM accounts WHERE tenant_id = $1 AND org_id = $2)").await?;
    Ok(tx.query_one(&stmt, &[&tenant.0, &account.as_str()]).await?.get(0))
}
