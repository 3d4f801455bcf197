//! Security and tenancy against the real server: every RPC of the authorization table refuses a
//! missing, unknown, revoked, forged, expired or unsigned credential and a role below its own,
//! and writes nothing; a foreign tenant's data answers like missing data and stays untouched;
//! row-level security hides foreign rows from a query that forgets its tenant; admin actions
//! are audited append-only; API keys are revocable and record their last use.

mod common;
#[path = "support/raw.rs"]
mod raw;

use allot_proto::v1 as pb;
use allot_server::auth::methods::METHODS;
use allot_server::auth::Role;
use allot_server::testkit::TestServer;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use prost::Message as _;
use tonic::Code;

const SECRET: &[u8] = b"security-test-secret-0123456789abcdef";
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "allot";

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn jwt(tenant: &str, role: &str, exp: i64, secret: &[u8]) -> String {
    let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "exp": exp, "tenant_id": tenant, "role": role});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).expect("sign")
}

fn unsigned_jwt(tenant: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = serde_json::json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "exp": now_s() + 600, "tenant_id": tenant, "role": "admin"});
    format!("{}.{}.", b64(serde_json::json!({"alg": "none", "typ": "JWT"})), b64(claims))
}

/// A server that accepts API keys and HS256 JWTs, re-checking keys on every call (TTL 0).
async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, SECRET).expect("secret");
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.jwt_hs256_secret_file = Some(secret);
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
        c.auth_cache_ttl_ms = 0;
    })
    .await;
    (server, dir)
}

/// Every table's content (but `api_keys`, whose `last_used_at` moves on use) as one hash per
/// table: equal before and after means nothing was written.
async fn written(server: &TestServer) -> Vec<(String, String)> {
    let db = server.sql().await;
    let tables: Vec<String> = db
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
             AND table_name NOT IN ('api_keys', 'refinery_schema_history') ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for table in tables {
        let sql = format!("SELECT COUNT(*)::text || ':' || md5(COALESCE(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t");
        out.push((table, db.query_one(&sql, &[]).await.expect("hash").get(0)));
    }
    out
}

/// A request body for each RPC that would change something if it were admitted (reads get an
/// empty body: refusals happen before decoding).
fn body(path: &str) -> Vec<u8> {
    let method = path.rsplit('/').next().unwrap_or_default();
    let ts = |s: i64| Some(prost_types::Timestamp { seconds: s, nanos: 0 });
    match method {
        "Debit" => debit_req("acct", "tokens", 5, "sec-debit", pb::DebitMode::Gate).encode_to_vec(),
        "Reserve" => pb::ReserveRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            amount_credits: 5,
            ttl_ms: 60_000,
            idempotency_key: "sec-hold".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "Refund" => pb::RefundRequest { entry_id: String::new(), amount_credits: 1, idempotency_key: "sec-refund".into() }.encode_to_vec(),
        "UpsertPlan" => pb::UpsertPlanRequest {
            plan: Some(pb::Plan {
                plan_id: "intruder".into(),
                tier: "x".into(),
                name: "X".into(),
                meters: vec![pb::MeterAllowance { meter: "tokens".into(), allowance_credits: Some(1), ..Default::default() }],
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "UpsertSubscription" => pb::UpsertSubscriptionRequest {
            subscription: Some(pb::Subscription {
                account_id: "acct".into(),
                plan_id: "free".into(),
                status: pb::SubscriptionStatus::Active as i32,
                current_period_start: ts(now_s() - 60),
                current_period_end: ts(now_s() + 86_400),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "UpsertAccount" => pb::Account { account_id: "member".into(), org_id: "acct".into() }.encode_to_vec(),
        "GrantCredits" => pb::GrantCreditsRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            amount_credits: 1_000_000,
            kind: pb::GrantKind::Promotional as i32,
            idempotency_key: "sec-grant".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "StartTrial" => pb::StartTrialRequest { account_id: "acct".into(), plan_id: "free".into(), fingerprint: "fp".into() }.encode_to_vec(),
        "UpdateSettings" => pb::EscalationSettings {
            enabled: true,
            kill_switch: true,
            gate_score: 0.5,
            warning_after: 1,
            throttle_after: 2,
            restrict_after: 3,
            violation_window_ms: 86_400_000,
            cooldown_ms: 60_000,
            exhausted_cooldown_ms: 60_000,
            ticket_ttl_ms: 60_000,
            throttle_rate_percent: 10,
            ..Default::default()
        }
        .encode_to_vec(),
        "SetExempt" => pb::SetExemptRequest { account_id: "acct".into(), exempt: true }.encode_to_vec(),
        "SetSoftCaps" => pb::SetSoftCapsRequest {
            plan_id: "free".into(),
            caps: vec![pb::SoftCap { meter: "tokens".into(), window_ms: 3_600_000, threshold_credits: 1 }],
        }
        .encode_to_vec(),
        "UpsertPrice" => pb::UpsertPriceRequest {
            sku: "vendor/model".into(),
            unit_prices: vec![pb::UnitPrice { dimension: pb::UsageDimension::InputTokens as i32, credits: 1, per_units: 1 }],
            effective_from: None,
        }
        .encode_to_vec(),
        "UpdatePricingPolicy" => {
            pb::UpdatePricingPolicyRequest { policy: Some(pb::PricingPolicy { strict: true, ..Default::default() }) }.encode_to_vec()
        }
        "RequestClassification" => pb::RequestClassificationRequest { account_id: "acct".into() }.encode_to_vec(),
        _ => Vec::new(),
    }
}

/// One tenant's rows of every tenant table, as hashes.
async fn ours(server: &TestServer, tenant: allot_server::ids::TenantId) -> Vec<String> {
    let db = server.sql().await;
    let tables: Vec<String> = db
        .query(
            "SELECT table_name::text FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'tenant_id' \
             AND table_name NOT IN ('api_keys') ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for table in tables {
        let sql = format!("SELECT '{table}:' || md5(COALESCE(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t WHERE tenant_id = $1");
        out.push(db.query_one(&sql, &[&tenant.0]).await.expect("hash").get(0));
    }
    out
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_bad_credentials_and_low_roles_and_writes_nothing() {
    let (server, _dir) = server().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 10, "seed").await.decision));
    let tenant = server.tenant.tenant.to_string();
    let revoked = allot_server::seed::api_key(&server.app_pool, server.tenant.tenant, "revoked", Role::Admin).await.expect("key");
    assert!(allot_server::seed::revoke_api_key(&server.app_pool, server.tenant.tenant, revoked.id).await.expect("revoke"));
    let refused_credentials: Vec<(&str, Option<String>)> = vec![
        ("no credential", None),
        ("unknown api key", Some(bearer("allot_000000000000000000000000000000000000000000000000"))),
        ("revoked api key", Some(bearer(&revoked.key))),
        ("another scheme", Some(format!("Basic {}", server.tenant.api_key))),
        ("forged jwt", Some(bearer(&jwt(&tenant, "admin", now_s() + 600, b"not-the-secret-not-the-secret-xx")))),
        ("expired jwt", Some(bearer(&jwt(&tenant, "admin", now_s() - 600, SECRET)))),
        ("unsigned jwt (alg=none)", Some(bearer(&unsigned_jwt(&tenant)))),
        ("garbage token", Some(bearer("eyJhbGciOiJIUzI1NiJ9.e30.x"))),
    ];
    let keys = [(Role::Check, server.key(Role::Check).await), (Role::Charge, server.key(Role::Charge).await)];
    let before = written(&server).await;
    let channel = server.channel().await;
    let mut refusals = 0;
    for (path, required) in METHODS {
        for (what, credential) in &refused_credentials {
            let err = raw::call(channel.clone(), path, credential.as_deref(), body(path)).await.expect_err(&format!("{path} with {what}"));
            assert_eq!(err.code(), Code::Unauthenticated, "{path} with {what}: {err:?}");
            assert!(!err.message().contains(&tenant), "{path}: the refusal names no tenant");
            refusals += 1;
        }
        for (role, key) in &keys {
            let jwt_of_role = jwt(&tenant, role.as_str(), now_s() + 600, SECRET);
            for credential in [bearer(key), bearer(&jwt_of_role)] {
                let result = raw::call(channel.clone(), path, Some(&credential), body(path)).await;
                if role.allows(*required) {
                    if let Err(err) = &result {
                        assert_ne!(err.code(), Code::PermissionDenied, "{path} allows {role}");
                        assert_ne!(err.code(), Code::Unauthenticated, "{path}: {role} credential is valid");
                    }
                } else {
                    let err = result.expect_err(&format!("{path} needs {required}, not {role}"));
                    assert_eq!(err.code(), Code::PermissionDenied, "{path} with a {role} credential: {err:?}");
                    refusals += 1;
                }
            }
        }
    }
    // Admitted reads (and admitted writes of a role that may make them) ran above; the refused
    // calls wrote nothing. Compare the writes only refused calls could have made.
    let after = written(&server).await;
    let changed: Vec<&str> = before.iter().zip(&after).filter(|(b, a)| b != a).map(|(b, _)| b.0.as_str()).collect();
    // Charge credentials may debit and reserve; nothing admin-only may have changed.
    for admin_only in [
        "plans",
        "plan_meters",
        "subscriptions",
        "accounts",
        "grants",
        "trials",
        "price_versions",
        "pricing_policies",
        "escalation_settings",
        "escalation_exempt",
        "soft_caps",
        "admin_audit",
    ] {
        assert!(!changed.contains(&admin_only), "{admin_only} changed although only admin may change it: {changed:?}");
    }
    assert!(refusals > METHODS.len() * refused_credentials.len(), "every RPC was tried: {refusals} refusals");

    // The same admin-only bodies do write when an admin sends them: the check above can fail.
    let before = written(&server).await;
    for path in ["/allot.v1.Admin/UpsertPlan", "/allot.v1.Admin/GrantCredits", "/allot.v1.FairUse/SetExempt"] {
        raw::call(channel.clone(), path, Some(&bearer(&server.tenant.api_key)), body(path))
            .await
            .unwrap_or_else(|e| panic!("{path} as admin: {e:?}"));
    }
    let after = written(&server).await;
    let changed: Vec<&str> = before.iter().zip(&after).filter(|(b, a)| b != a).map(|(b, _)| b.0.as_str()).collect();
    for table in ["plans", "grants", "escalation_exempt", "admin_audit"] {
        assert!(changed.contains(&table), "an admin's call writes {table}: {changed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mutation_writes_nothing_at_all() {
    let (server, _dir) = server().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 10, "seed").await.decision));
    let check_key = server.key(Role::Check).await;
    let channel = server.channel().await;
    let before = written(&server).await;
    for (path, required) in METHODS.iter().filter(|(_, r)| *r > Role::Check) {
        let err = raw::call(channel.clone(), path, Some(&bearer(&check_key)), body(path)).await.expect_err(path);
        assert_eq!(err.code(), Code::PermissionDenied, "{path} needs {required}");
        let err = raw::call(channel.clone(), path, None, body(path)).await.expect_err(path);
        assert_eq!(err.code(), Code::Unauthenticated, "{path}");
    }
    assert_eq!(written(&server).await, before, "refused calls wrote nothing, in any table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_tenant_sees_and_changes_nothing() {
    let (server, _dir) = server().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    let charged = debit(&mut entitlements, "acct", "tokens", 10, "seed").await;
    let hold = entitlements
        .reserve(pb::ReserveRequest {
            account_id: "acct".into(),
            meter: "tokens".into(),
            amount_credits: 5,
            ttl_ms: 60_000,
            idempotency_key: "h".into(),
            ..Default::default()
        })
        .await
        .expect("reserve")
        .into_inner();
    let mine = server.tenant.tenant;
    let before = ours(&server, mine).await;

    let other = allot_server::seed::tenant(&server.app_pool, "other").await.expect("tenant");
    let (mut theirs, mut their_admin) = server.clients_for(&other.api_key).await;
    // The same account name is another account: their view is of a missing one.
    let missing = their_admin.get_balance(pb::GetBalanceRequest { account_id: "nobody".into() }).await.map(|r| r.into_inner());
    let foreign = their_admin.get_balance(pb::GetBalanceRequest { account_id: "acct".into() }).await.map(|r| r.into_inner());
    assert_eq!(format!("{missing:?}").replace("nobody", "acct"), format!("{foreign:?}"), "a foreign account reads like a missing one");
    let ledger = their_admin
        .list_ledger_entries(pb::ListLedgerEntriesRequest { account_id: "acct".into(), ..Default::default() })
        .await
        .expect("ledger")
        .into_inner();
    assert!(ledger.entries.is_empty());
    // Their ids of our holds and entries are unknown to them, with the same answer as made-up ids.
    let made_up = uuid::Uuid::new_v4().to_string();
    for (ours, what) in [(hold.hold_id.clone(), "commit"), (charged.entry_id.clone(), "refund")] {
        let (foreign, missing) = if what == "commit" {
            (
                theirs.commit(pb::CommitRequest { hold_id: ours, actual_credits: 5, ..Default::default() }).await.expect_err("foreign hold"),
                theirs
                    .commit(pb::CommitRequest { hold_id: made_up.clone(), actual_credits: 5, ..Default::default() })
                    .await
                    .expect_err("missing hold"),
            )
        } else {
            (
                theirs.refund(pb::RefundRequest { entry_id: ours, amount_credits: 1, idempotency_key: "r".into() }).await.expect_err("foreign entry"),
                theirs
                    .refund(pb::RefundRequest { entry_id: made_up.clone(), amount_credits: 1, idempotency_key: "r2".into() })
                    .await
                    .expect_err("missing entry"),
            )
        };
        assert_eq!((foreign.code(), foreign.message()), (missing.code(), missing.message()), "{what}: foreign = missing");
        assert!(!foreign.message().contains(&mine.to_string()));
    }
    let release = theirs.release(pb::ReleaseRequest { hold_id: hold.hold_id.clone() }).await.expect_err("foreign hold");
    assert_eq!(release.code(), Code::NotFound);
    // Every RPC of the table, called by the other tenant's admin with our names and ids: none
    // touches a row of ours (their own writes land in their tenant).
    let channel = server.channel().await;
    let auth = bearer(&other.api_key);
    for (path, _) in METHODS {
        let method = path.rsplit('/').next().unwrap_or_default();
        let body = match method {
            "Commit" => pb::CommitRequest { hold_id: hold.hold_id.clone(), actual_credits: 5, ..Default::default() }.encode_to_vec(),
            "Release" => pb::ReleaseRequest { hold_id: hold.hold_id.clone() }.encode_to_vec(),
            "Refund" => pb::RefundRequest { entry_id: charged.entry_id.clone(), amount_credits: 1, idempotency_key: "x".into() }.encode_to_vec(),
            "GetBalance" | "GetSubscription" | "GetUsageSummary" | "GetEscalation" => {
                pb::GetBalanceRequest { account_id: "acct".into() }.encode_to_vec()
            }
            _ => body(path),
        };
        if let Err(err) = raw::call(channel.clone(), path, Some(&auth), body).await {
            assert!(!matches!(err.code(), Code::Internal | Code::Unknown | Code::PermissionDenied), "{path}: {err:?}");
            assert!(!err.message().contains(&mine.to_string()), "{path}: the answer names no other tenant");
        }
    }
    assert_eq!(ours(&server, mine).await, before, "no RPC of another tenant changed a row of ours");
    // Their writes land in their tenant only.
    free_plan(&mut their_admin, "tokens", Some(5), 0, 0).await;
    assert!(allowed(debit(&mut theirs, "acct", "tokens", 1, "seed").await.decision), "the same key name is theirs to use");
    assert_eq!(ours(&server, mine).await, before, "nothing of ours changed");
    let balance = admin.get_balance(pb::GetBalanceRequest { account_id: "acct".into() }).await.expect("ours").into_inner();
    let tokens = balance.meters.iter().filter_map(|m| m.status.as_ref()).find(|s| s.meter == "tokens").expect("tokens");
    assert_eq!((tokens.used_credits, tokens.held_credits), (10, 5), "their calls did not touch our account: {tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_hides_foreign_rows_from_a_query_that_forgets_its_tenant() {
    let (server, _dir) = server().await;
    let (mut entitlements, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(1_000), 0, 0).await;
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 10, "seed").await.decision));
    let mine = server.tenant.tenant;
    let other = allot_server::seed::tenant(&server.app_pool, "other").await.expect("tenant");
    let all: i64 = server.sql().await.query_one("SELECT COUNT(*) FROM ledger_entries", &[]).await.expect("count").get(0);
    assert!(all > 0, "the test tenant has ledger entries");

    // The server's own connections (role allot_app): never a superuser, never BYPASSRLS.
    let mut client = server.app_pool.get().await.expect("connection");
    let row =
        client.query_one("SELECT current_user::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user", &[]).await.expect("role");
    assert_eq!((row.get::<_, String>(0), row.get::<_, bool>(1), row.get::<_, bool>(2)), ("allot_app".to_owned(), false, false));

    // Deliberately unscoped queries (no tenant_id filter):
    let unscoped = "SELECT COUNT(*) FROM ledger_entries";
    let n: i64 = client.query_one(unscoped, &[]).await.expect("no tenant").get(0);
    assert_eq!(n, 0, "outside a tenant's transaction nothing is visible");
    let tx = allot_server::db::begin(&mut client, other.tenant).await.expect("begin");
    let n: i64 = tx.query_one(unscoped, &[]).await.expect("other tenant").get(0);
    assert_eq!(n, 0, "another tenant's transaction sees none of the test tenant's entries");
    let tenants: i64 = tx.query_one("SELECT COUNT(*) FROM tenants", &[]).await.expect("tenants").get(0);
    assert_eq!(tenants, 1, "a tenant sees only itself");
    // Nor can it write a row for the test tenant.
    let err = tx.execute("INSERT INTO accounts (tenant_id, id) VALUES ($1, 'planted')", &[&mine.0]).await.expect_err("foreign write");
    let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(message.contains("row-level security"), "{err:?}");
    drop(tx);
    let tx = allot_server::db::begin(&mut client, mine).await.expect("begin");
    let n: i64 = tx.query_one(unscoped, &[]).await.expect("own tenant").get(0);
    assert_eq!(n, all, "the tenant's own transaction sees exactly its rows");
    tx.commit().await.expect("commit");
    // The background path opens only the tables named for it: not the ledger.
    let tx = allot_server::db::begin_all_tenants(&mut client, allot_server::db::AllTenants::HoldSweep).await.expect("begin");
    let n: i64 = tx.query_one(unscoped, &[]).await.expect("all tenants").get(0);
    assert_eq!(n, 0, "the sweepers' path does not open ledger_entries");
    tx.commit().await.expect("commit");
    drop(client);

    // Every table with a tenant column is protected, forced, and has a policy (a later migration
    // that forgets fails here).
    let unprotected = unprotected_tables(&*server.sql().await).await;
    assert!(unprotected.is_empty(), "tables without row-level security: {unprotected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_audited_with_who_what_before_and_after_and_the_trail_is_append_only() {
    let (server, _dir) = server().await;
    let (_, mut admin) = server.clients().await;
    free_plan(&mut admin, "tokens", Some(100), 0, 0).await;
    free_plan(&mut admin, "tokens", Some(250), 0, 0).await;
    let (_, mut charger) = server.clients_as(Role::Charge).await;
    let err = charger.upsert_account(pb::Account { account_id: "a".into(), org_id: String::new() }).await.expect_err("charge");
    assert_eq!(err.code(), Code::PermissionDenied);
    let db = server.sql().await;
    let rows = db
        .query(
            "SELECT actor, actor_role, method, subject_kind, subject_key, before, after FROM admin_audit WHERE subject_kind <> 'api_key' ORDER BY id",
            &[],
        )
        .await
        .expect("audit");
    assert_eq!(rows.len(), 2, "one row per admin action, none for the refused one");
    let who = format!("api_key:{}", server.tenant.key_id);
    for row in &rows {
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)),
            (who.clone(), "admin".to_owned(), "UpsertPlan".to_owned())
        );
        assert_eq!((row.get::<_, String>(3), row.get::<_, String>(4)), ("plan".to_owned(), "free".to_owned()));
    }
    let allowance = |v: Option<serde_json::Value>| v.map(|v| v["meters"][0]["allowance_credits"].clone());
    assert_eq!(allowance(rows[0].get(5)), None, "the first upsert had nothing before");
    assert_eq!(allowance(rows[0].get(6)), Some(serde_json::json!(100)));
    assert_eq!(allowance(rows[1].get(5)), Some(serde_json::json!(100)), "before the change");
    assert_eq!(allowance(rows[1].get(6)), Some(serde_json::json!(250)), "after the change");
    // Append-only: even the login role cannot rewrite history, and the server's role may not try.
    for sql in ["UPDATE admin_audit SET actor = 'someone'", "DELETE FROM admin_audit", "TRUNCATE admin_audit"] {
        let err = db.batch_execute(sql).await.expect_err(sql);
        assert!(err.as_db_error().is_some_and(|e| e.message().contains("append-only")), "{sql}: {err:?}");
    }
    // Key management is audited too, without the key or its hash.
    let keys = db
        .query("SELECT method, after::text FROM admin_audit WHERE subject_kind = 'api_key' AND actor = 'system:keys' ORDER BY id", &[])
        .await
        .expect("key audit");
    let methods: Vec<String> = keys.iter().map(|r| r.get(0)).collect();
    assert_eq!(methods, ["CreateApiKey", "CreateApiKey"], "the tenant's first key and the charge key");
    assert!(keys.iter().all(|r| !r.get::<_, String>(1).contains("key_sha256")), "no hash in the trail");
    let mut app = server.app_pool.get().await.expect("connection");
    let tx = allot_server::db::begin(&mut app, server.tenant.tenant).await.expect("begin");
    let err = tx.execute("UPDATE admin_audit SET actor = 'someone'", &[]).await.expect_err("server role");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_stored_hashed_revocable_and_record_their_last_use() {
    let (server, _dir) = server().await;
    let key = allot_server::seed::api_key(&server.app_pool, server.tenant.tenant, "checkout", Role::Charge).await.expect("key");
    let (mut entitlements, _) = server.clients_for(&key.key).await;
    check(&mut entitlements, "acct", "tokens", 1).await;
    let db = server.sql().await;
    let stored: String = db.query_one("SELECT to_jsonb(k)::text FROM api_keys k WHERE id = $1", &[&key.id]).await.expect("row").get(0);
    assert!(!stored.contains(&key.key) && !stored.contains(key.key.trim_start_matches("allot_")), "the key itself is never stored");
    assert!(stored.contains("\"role\": \"charge\""), "{stored}");
    // last_used_at is written off the request path; wait for it (bounded).
    let started = std::time::Instant::now();
    loop {
        let used: Option<time::OffsetDateTime> =
            db.query_one("SELECT last_used_at FROM api_keys WHERE id = $1", &[&key.id]).await.expect("row").get(0);
        if used.is_some() {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "last_used_at never written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(allot_server::seed::revoke_api_key(&server.app_pool, server.tenant.tenant, key.id).await.expect("revoke"));
    assert!(
        !allot_server::seed::revoke_api_key(&server.app_pool, server.tenant.tenant, key.id).await.expect("again"),
        "revoking twice finds no live key"
    );
    let revoked: Option<serde_json::Value> = db
        .query_one("SELECT after FROM admin_audit WHERE method = 'RevokeApiKey' AND subject_key = $1", &[&key.id.to_string()])
        .await
        .expect("the revocation is audited once")
        .get(0);
    assert!(revoked.is_some_and(|after| !after["revoked_at"].is_null()), "after shows the revocation");
    let err = entitlements
        .check(pb::CheckRequest { account_id: "acct".into(), meter: "tokens".into(), amount_credits: 1, ..Default::default() })
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated, "a revoked key stops working (cache TTL 0 here)");
    // Another tenant cannot revoke this tenant's key.
    let other = allot_server::seed::tenant(&server.app_pool, "other").await.expect("tenant");
    assert!(!allot_server::seed::revoke_api_key(&server.app_pool, other.tenant, server.tenant.key_id).await.expect("foreign"));
}

/// Production-like: the database belongs to a login role that is neither superuser nor
/// BYPASSRLS. Its migration sets everything up, the server (logging in as that owner, acting as
/// `allot_app`) serves, and even the owner's own unscoped queries see nothing (FORCE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_owner_migrates_and_row_level_security_holds_even_for_the_owner() {
    let (url, as_superuser) = plain_owner_database("owned").await;
    allot_server::db::migrate(&url).await.expect("a plain owner migrates");
    let server = TestServer::start_on(url.clone(), time::OffsetDateTime::now_utc(), |_| {}).await;
    let (mut entitlements, mut admin_client) = server.clients().await;
    free_plan(&mut admin_client, "tokens", Some(100), 0, 0).await;
    assert!(allowed(debit(&mut entitlements, "acct", "tokens", 10, "k").await.decision));
    // The owner, outside any tenant's transaction, sees none of the rows it owns.
    let as_owner = connect(&url).await;
    let n: i64 = as_owner.query_one("SELECT COUNT(*) FROM ledger_entries", &[]).await.expect("count").get(0);
    assert_eq!(n, 0, "FORCE ROW LEVEL SECURITY holds the owner too");
    let in_db = connect(&as_superuser).await;
    let n: i64 = in_db.query_one("SELECT COUNT(*) FROM ledger_entries", &[]).await.expect("count").get(0);
    assert!(n > 0, "the rows are there (a superuser bypasses RLS)");
    server.stop().await;
    drop((as_owner, in_db));
}
