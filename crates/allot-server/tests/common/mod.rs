//! Helpers shared by the integration tests: plans, requests and ledger invariant checks.
#![allow(dead_code)]

use allot_proto::v1 as pb;
use allot_server::testkit::{Admin, Entitlements, TestServer};

/// Makes `plan_id` the tenant's free default with one `meter` allowance.
pub async fn free_plan(admin: &mut Admin, meter: &str, allowance: Option<i64>, rollover_cap: i64, debt_limit: i64) {
    admin
        .upsert_plan(pb::UpsertPlanRequest {
            plan: Some(pb::Plan {
                plan_id: "free".into(),
                tier: "free".into(),
                name: "Free".into(),
                meters: vec![pb::MeterAllowance {
                    meter: meter.into(),
                    allowance_credits: allowance,
                    rollover_cap_credits: rollover_cap,
                    debt_limit_credits: debt_limit,
                    ..Default::default()
                }],
                trial_days: 0,
                is_free_default: true,
                ..Default::default()
            }),
        })
        .await
        .expect("upsert plan");
}

/// Creates or replaces the `pro` plan (tier `pro`, not the free default): `allowance` of `tokens`
/// a period, trials of `trial_days` that grant `trial_grant` credits.
pub async fn pro_plan(admin: &mut Admin, allowance: i64, trial_days: u32, trial_grant: i64) {
    let tokens =
        pb::MeterAllowance { meter: "tokens".into(), allowance_credits: Some(allowance), trial_grant_credits: trial_grant, ..Default::default() };
    let plan = pb::Plan { plan_id: "pro".into(), tier: "pro".into(), name: "Pro".into(), trial_days, meters: vec![tokens], ..Default::default() };
    admin.upsert_plan(pb::UpsertPlanRequest { plan: Some(plan) }).await.expect("pro plan");
}

/// Grants `amount` purchased credits of `meter` to `account` (priority 0, no expiry).
pub async fn purchase(admin: &mut Admin, account: &str, meter: &str, amount: i64, key: &str) {
    admin
        .grant_credits(pb::GrantCreditsRequest {
            account_id: account.into(),
            meter: meter.into(),
            amount_credits: amount,
            kind: pb::GrantKind::Purchased as i32,
            priority: 0,
            expires_at: None,
            idempotency_key: key.into(),
        })
        .await
        .expect("grant");
}

pub fn debit_req(account: &str, meter: &str, amount: i64, key: &str, mode: pb::DebitMode) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: account.into(),
        meter: meter.into(),
        amount_credits: amount,
        idempotency_key: key.into(),
        mode: mode as i32,
        ..Default::default()
    }
}

pub async fn debit(client: &mut Entitlements, account: &str, meter: &str, amount: i64, key: &str) -> pb::DebitResponse {
    client.debit(debit_req(account, meter, amount, key, pb::DebitMode::Gate)).await.expect("debit").into_inner()
}

/// Reserves `amount` of `meter` for `account` for ten minutes.
pub async fn reserve(client: &mut Entitlements, account: &str, meter: &str, amount: i64, key: &str) -> pb::ReserveResponse {
    let request = pb::ReserveRequest {
        account_id: account.into(),
        meter: meter.into(),
        amount_credits: amount,
        ttl_ms: 600_000,
        idempotency_key: key.into(),
        ..Default::default()
    };
    client.reserve(request).await.expect("reserve").into_inner()
}

pub async fn check(client: &mut Entitlements, account: &str, meter: &str, amount: i64) -> pb::CheckResponse {
    client
        .check(pb::CheckRequest { account_id: account.into(), meter: meter.into(), amount_credits: amount, ..Default::default() })
        .await
        .expect("check")
        .into_inner()
}

pub fn allowed(decision: i32) -> bool {
    decision == pb::Decision::Allowed as i32
}

/// The `ErrorInfo.reason` of a failed call.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// Checks the ledger against the stored balances for every meter of the database:
/// - `seq` runs 1..=n without gaps,
/// - for meters with a finite allowance, the sum of all deltas equals the net balance
///   (allowance left + rollover + grants left − debt).
///
/// Returns the number of meters checked.
pub async fn assert_ledger_explains_balances(server: &TestServer) -> usize {
    let db = server.sql().await;
    let rows = db
        .query(
            "SELECT b.tenant_id, b.account_id, b.meter, b.allowance_credits, b.allowance_used_credits, b.rollover_credits, b.debt_credits, b.seq, \
               (SELECT COALESCE(SUM(remaining_credits), 0)::bigint FROM grants g WHERE g.tenant_id = b.tenant_id AND g.account_id = b.account_id AND g.meter = b.meter \
                  AND (g.expires_at IS NULL OR g.expires_at > $1)), \
               (SELECT COALESCE(SUM(delta_credits), 0)::bigint FROM ledger_entries l WHERE l.tenant_id = b.tenant_id AND l.account_id = b.account_id AND l.meter = b.meter), \
               (SELECT COUNT(*) FROM ledger_entries l WHERE l.tenant_id = b.tenant_id AND l.account_id = b.account_id AND l.meter = b.meter), \
               (SELECT COALESCE(MAX(seq), 0) FROM ledger_entries l WHERE l.tenant_id = b.tenant_id AND l.account_id = b.account_id AND l.meter = b.meter) \
             FROM meter_balances b",
            &[&allot_server::clock::Clock::now(&*server.clock)],
        )
        .await
        .expect("balances");
    for row in &rows {
        let account: String = row.get(1);
        let allowance: Option<i64> = row.get(3);
        let used: i64 = row.get(4);
        let rollover: i64 = row.get(5);
        let debt: i64 = row.get(6);
        let seq: i64 = row.get(7);
        let grants: i64 = row.get(8);
        let ledger_sum: i64 = row.get(9);
        let count: i64 = row.get(10);
        let max_seq: i64 = row.get(11);
        assert_eq!(seq, count, "{account}: stored seq equals the number of entries");
        assert_eq!(max_seq, count, "{account}: seq has no gaps");
        if let Some(allowance) = allowance {
            let net = allowance - used + rollover + grants - debt;
            assert_eq!(ledger_sum, net, "{account}: the ledger explains the balance");
        }
    }
    rows.len()
}

/// A connection of the test's own, beside the server's pool.
pub async fn connect(database_url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// A fresh database owned by a login role that is neither superuser nor BYPASSRLS, as in
/// production, named after `prefix` and the process: `(the owner's URL, a superuser's URL)`.
pub async fn plain_owner_database(prefix: &str) -> (String, String) {
    let stack = allot_server::testkit::stack();
    let superuser = connect(&stack.postgres.dsn("postgres")).await;
    let owner = format!("{prefix}_owner_{}", std::process::id());
    let database = format!("{prefix}_{}", std::process::id());
    superuser.batch_execute(&format!("CREATE ROLE {owner} LOGIN CREATEROLE")).await.expect("owner");
    superuser.batch_execute(&format!("CREATE DATABASE {database} OWNER {owner}")).await.expect("database");
    let as_superuser = stack.postgres.dsn(&database);
    (as_superuser.replacen("allot@", &format!("{owner}@"), 1), as_superuser)
}

/// The tables with a tenant column (and `tenants`) that lack row-level security, its `FORCE` or
/// the `tenant_isolation` policy, as `client` (a superuser) reads the catalog.
pub async fn unprotected_tables(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' \
             AND (EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) OR c.relname = 'tenants') \
             AND NOT (c.relrowsecurity AND c.relforcerowsecurity AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation'))",
            &[],
        )
        .await
        .expect("catalog")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Locks `account`'s meter rows in the test's own transaction `tx` (tenant `tenant`).
pub async fn lock_meters(tx: &tokio_postgres::Transaction<'_>, tenant: uuid::Uuid, account: &str) {
    tx.execute("SELECT 1 FROM meter_balances WHERE tenant_id = $1 AND account_id = $2 FOR UPDATE", &[&tenant, &account]).await.expect("lock");
}

/// Inserts a live hold of `amount` credits on `account`'s `tokens` meter in `tx`.
pub async fn hold_tokens(tx: &tokio_postgres::Transaction<'_>, tenant: uuid::Uuid, account: &str, amount: i64) {
    tx.execute(
        "INSERT INTO holds (tenant_id, id, account_id, acting_account_id, meter, amount_credits, status, expires_at, created_at) \
         VALUES ($1, gen_random_uuid(), $2, $2, 'tokens', $3, 'held', now() + interval '1 hour', now())",
        &[&tenant, &account, &amount],
    )
    .await
    .expect("hold");
}

/// Stores idempotency key `key` for `operation` in `tx`, with a request and an answer no real
/// request has (`\x00`, `{}`).
pub async fn store_key(tx: &tokio_postgres::Transaction<'_>, tenant: uuid::Uuid, key: &str, operation: &str) {
    tx.execute(
        "INSERT INTO idempotency_records (tenant_id, key, operation, request_sha256, response) VALUES ($1, $2, $3, '\\x00', '{}')",
        &[&tenant, &key, &operation],
    )
    .await
    .expect("record");
}
