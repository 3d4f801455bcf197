//! `allot bench`: a load generator that measures Allot against the raw PostgreSQL/Redis work it
//! cannot avoid, in the same run on the same servers. It starts a throwaway PostgreSQL and Redis,
//! serves Allot in-process on a free port, drives each scenario with many concurrent gRPC calls
//! for a bounded time and, right after each, runs the matching row of `../shared/baseline/run`
//! against the same servers; it prints one Markdown table with the ratio Allot / raw per scenario
//! and concurrency.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_proto::v1::admin_client::AdminClient;
use allot_proto::v1::entitlements_client::EntitlementsClient;
use allot_proto::v1::fair_use_client::FairUseClient;
use allot_proto::v1::pricing_client::PricingClient;
use allot_proto::v1::subsidy_client::SubsidyClient;
use futures::{StreamExt as _, TryStreamExt as _};
use tonic::metadata::{Ascii, MetadataValue};

use crate::clock::SystemClock;
use crate::config::Config;
use crate::localstack::{LocalPostgres, LocalRedis};
use crate::server::{serve, App};

mod baseline;
mod cpu;
mod open_loop;
mod peak;
mod raw_open_loop;
mod statements;
mod streams;
mod transport;

use transport::Connection;

/// Accounts the uniform scenarios spread over.
pub const ACCOUNTS: u32 = 10_000;
/// Most concurrent clients the raw baseline is run with: pgbench opens a connection per client,
/// beside Allot's pool ([`POSTGRES_CONNECTIONS_MAX`] leaves room for both).
pub const BASELINE_CLIENTS_MAX: usize = 300;
/// The bench's PostgreSQL `max_connections` (the local stack's is 200).
const POSTGRES_CONNECTIONS_MAX: usize = 400;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: u64,
    pub clients: Vec<usize>,
    pub baseline: Option<PathBuf>,
    pub out: Option<PathBuf>,
    /// Only these scenarios (empty: all).
    pub scenarios: Vec<String>,
}

/// One measured row.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: &'static str,
    pub clients: usize,
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// CPU microseconds per operation: this process (Allot and the load generator), then the
    /// rest of the machine (PostgreSQL, Redis, anything else running). `None` off Linux.
    pub cpu_us: Option<(f64, f64)>,
    /// The raw baseline's operations per second at the same concurrency, measured right after.
    pub raw_ops_per_s: Option<f64>,
}

/// Scenario → the baseline row it is compared with.
const SCENARIOS: [(&str, &str); 11] = [
    ("check", "check"),
    ("debit-uniform", "debit"),
    // The same debits over the same accounts, paid by a subsidy pool (16 shards).
    ("debit-subsidised", "debit"),
    // The same debits given as token usage of a priced model, rated at the price in force.
    ("debit-rated", "debit"),
    ("debit-hot", "debit-hot"),
    ("reserve-commit", "reserve-commit"),
    ("classify-cooldown", "cooldown-held"),
    // The same calls, sent one at a time on one long-lived stream per client (bench/streams.rs).
    ("check-stream", "check"),
    ("debit-uniform-stream", "debit"),
    ("debit-hot-stream", "debit-hot"),
    ("classify-cooldown-stream", "cooldown-held"),
];

#[derive(Clone)]
struct Clients {
    channel: Connection,
    origin: tonic::codegen::http::Uri,
    admin: AdminClient<Connection>,
    entitlements: Vec<EntitlementsClient<Connection>>,
    fair_use: Vec<FairUseClient<Connection>>,
    auth: MetadataValue<Ascii>,
}

impl Clients {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.auth.clone());
        request
    }
}

/// Runs every scenario and the baseline; returns the Markdown report.
pub async fn run(options: Options) -> anyhow::Result<String> {
    if let Some(unknown) = options.scenarios.iter().find(|s| !SCENARIOS.iter().any(|(name, _)| name == s)) {
        let known: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        anyhow::bail!("no scenario {unknown:?}; the scenarios are: {}", known.join(" "));
    }
    // Settings are checked before anything is started.
    let connections = transport::connections(std::env::var("ALLOT_BENCH_CONNECTIONS").ok().as_deref())?;
    let open_loop_percent = open_loop::percent_of_peak(std::env::var(open_loop::PERCENT_SETTING).ok().as_deref())?;
    let top_statements = statements::wanted(std::env::var(statements::SETTING).ok().as_deref())?;
    let root = tempfile::Builder::new().prefix("allot-bench-").tempdir()?;
    let stack_root = root.path().to_owned();
    // Room for the baseline's clients, then extra PostgreSQL settings for a diagnosis
    // (`auto_explain.log_min_duration=5,…`); a later setting wins.
    let mut settings: Vec<(String, String)> = vec![("max_connections".to_owned(), POSTGRES_CONNECTIONS_MAX.to_string())];
    settings.extend(
        std::env::var("ALLOT_BENCH_PG_SETTINGS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))),
    );
    if top_statements > 0 {
        let (name, value) = statements::PRELOAD;
        match settings.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = format!("{v},{value}"),
            None => settings.push((name.to_owned(), value.to_owned())),
        }
        let (name, value) = statements::TRACK_PLANNING;
        settings.push((name.to_owned(), value.to_owned()));
    }
    let (mut postgres, mut redis) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Ok((LocalPostgres::start_with(&stack_root, &settings)?, LocalRedis::start(&stack_root)?))
    })
    .await??;
    let result = measure(&options, connections, open_loop_percent, top_statements, &postgres, &redis).await;
    postgres.stop();
    redis.stop();
    let report = result?;
    if let Some(out) = &options.out {
        std::fs::write(out, &report)?;
    }
    Ok(report)
}

async fn measure(
    options: &Options,
    connections: usize,
    open_loop_percent: u32,
    top_statements: usize,
    postgres: &LocalPostgres,
    redis: &LocalRedis,
) -> anyhow::Result<String> {
    crate::dev::create_database(&postgres.dsn("postgres"), "allot").await?;
    let mut config = Config::with_database(postgres.dsn("allot"), Some(redis.url()));
    config.migrate = true;
    config.db_pool_size_max = 32;
    // One tenant drives every scenario: the fairness limit between tenants must not throttle it.
    config.tenant_concurrency_max = 100_000;
    // The server's own settings, so runs can compare batch worker counts.
    if let Ok(workers) = std::env::var("ALLOT_DEBIT_BATCH_WORKERS") {
        config.debit_batch_workers = workers.parse().map_err(|e| anyhow::anyhow!("ALLOT_DEBIT_BATCH_WORKERS: {e}"))?;
    }
    if let Ok(workers) = std::env::var("ALLOT_CHECK_BATCH_WORKERS") {
        config.check_batch_workers = workers.parse().map_err(|e| anyhow::anyhow!("ALLOT_CHECK_BATCH_WORKERS: {e}"))?;
    }
    let app = App::connect(config, Arc::new(SystemClock)).await?;
    let key = crate::seed::tenant(&app.ctx.pool, "bench").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(app, listener, async {
        let _ = stopped.await;
    }));

    let origin: tonic::codegen::http::Uri = format!("http://{addr}").parse()?;
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(transport::connect(addr).await?);
    }
    let clients = Clients {
        channel: channels[0].clone(),
        origin: origin.clone(),
        admin: AdminClient::with_origin(channels[0].clone(), origin.clone()),
        entitlements: channels.iter().map(|c| EntitlementsClient::with_origin(c.clone(), origin.clone())).collect(),
        fair_use: channels.iter().map(|c| FairUseClient::with_origin(c.clone(), origin.clone())).collect(),
        auth: format!("Bearer {}", key.api_key).parse()?,
    };
    seed_plan(&clients).await?;
    let warmed = Instant::now();
    warm_up(&clients, &postgres.dsn("allot")).await?;
    eprintln!("bench: every account used once and the tables analysed in {:.1} s", warmed.elapsed().as_secs_f64());
    if top_statements > 0 {
        statements::prepare(&postgres.dsn("allot")).await?;
    }

    // Each row's raw baseline is measured right after it, on the same servers: the two figures
    // of a ratio are seconds apart, not minutes, so a change in the machine's other load moves
    // both (finding 33). The server idles meanwhile.
    let script = options.baseline.as_ref().filter(|script| script.exists());
    let mut rows = Vec::new();
    for &c in &options.clients {
        for (scenario, raw_name) in SCENARIOS {
            if !options.scenarios.is_empty() && !options.scenarios.iter().any(|s| s == scenario) {
                continue;
            }
            let mut row = scenario_row(&clients, scenario, c, Duration::from_secs(options.seconds)).await?;
            eprintln!("bench: {scenario} × {c}: {:.0} ops/s, p99 {:.2} ms", row.ops_per_s, row.p99_ms);
            if top_statements > 0 {
                let ops = row.ops_per_s * options.seconds as f64;
                eprintln!("{}", statements::report(&postgres.dsn("allot"), top_statements, ops).await?);
            }
            // pgbench opens one connection per client: levels above PostgreSQL's connection
            // limit have no baseline (their rows say so).
            if let Some(script) = script.filter(|_| c <= BASELINE_CLIENTS_MAX) {
                row.raw_ops_per_s = baseline::measure(script, postgres, redis, options.seconds, raw_name, c).await?;
                eprintln!("bench: raw {raw_name} × {c}: {:.0} ops/s", row.raw_ops_per_s.unwrap_or(0.0));
                if top_statements > 0 {
                    statements::prepare(&postgres.dsn("allot")).await?; // the baseline's statements are not the next row's
                }
            }
            rows.push(row);
        }
    }
    // The check target's latency half: p99 at half of the closed-loop peak, offered at that rate,
    // unary and streamed; right after the unary row, a call answered from memory at the same
    // rate, the floor under it.
    let mut open = Vec::new();
    let length = Duration::from_secs(options.seconds);
    for scenario in ["check", "check-stream"] {
        let Some(peak) = open_loop::peak_of(&rows, scenario) else { continue };
        let paced: &[&'static str] = if scenario == "check" { &[scenario, open_loop::FLOOR] } else { &[scenario] };
        for &offered in paced {
            let row = open_loop::run(&clients, offered, scenario, peak, open_loop_percent, length).await?;
            eprintln!("bench: {offered} at {:.0} ops/s offered (open loop): p99 {:.2} ms", row.offered_per_s, row.latency.p99_ms);
            open.push(row);
        }
    }
    // And beside each check row, the raw read at the same share of that scenario's raw peak, with
    // the server idle (finding 61). A failed pgbench costs its row, not the report.
    let mut raw_open = Vec::new();
    for row in raw_open_loop::paced_by_own_peak(&open) {
        let (Some(script), Some(raw_peak)) = (script, raw_open_loop::raw_peak_of(&rows, row.scenario)) else { continue };
        match raw_open_loop::run(script, postgres, row.scenario, raw_peak, open_loop_percent, length).await {
            Ok(raw) => {
                eprintln!(
                    "bench: raw check at {:.0} ops/s offered (open loop, beside {}): p99 {:.2} ms",
                    raw.offered_per_s, row.scenario, raw.latency.p99_ms
                );
                raw_open.push(raw);
            }
            Err(e) => eprintln!("bench: no raw open-loop row beside {}: {e:#}", row.scenario),
        }
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(report(&rows, &open, &raw_open, options))
}

async fn seed_plan(clients: &Clients) -> anyhow::Result<()> {
    let plan = pb::Plan {
        plan_id: "free".into(),
        tier: "free".into(),
        name: "Bench".into(),
        is_free_default: true,
        meters: vec![pb::MeterAllowance { meter: "tokens".into(), allowance_credits: Some(1_000_000_000_000_000), ..Default::default() }],
        ..Default::default()
    };
    clients.admin.clone().upsert_plan(clients.request(pb::UpsertPlanRequest { plan: Some(plan) })).await?;
    // A priced model for the rated scenario: 250 credits per million input tokens, 1,000 per
    // million output tokens.
    let unit = |dimension: pb::UsageDimension, credits: i64| pb::UnitPrice { dimension: dimension as i32, credits, per_units: 1_000_000 };
    let price = pb::UpsertPriceRequest {
        sku: "bench/model".into(),
        unit_prices: vec![unit(pb::UsageDimension::InputTokens, 250), unit(pb::UsageDimension::OutputTokens, 1_000)],
        effective_from: None,
    };
    PricingClient::with_origin(clients.channel.clone(), clients.origin.clone()).upsert_price(clients.request(price)).await?;
    // A pool that pays every account's debits in full (the default tier gets a budget here).
    let mut pools = SubsidyClient::with_origin(clients.channel.clone(), clients.origin.clone());
    let pool = pb::Pool { pool_id: "bench".into(), share_bps: 0, meters: vec!["tokens".into()], shard_count: 16, ..Default::default() };
    pools.upsert_pool(clients.request(pb::UpsertPoolRequest { pool: Some(pool) })).await?;
    let top_up = pb::TopUpPoolRequest { pool_id: "bench".into(), amount_credits: 1_000_000_000_000_000, idempotency_key: "bench".into() };
    pools.top_up_pool(clients.request(top_up)).await?;
    let tier = pb::UpsertTrustTierRequest { tier: "new".into(), daily_budget_credits: 1_000_000_000_000_000 };
    pools.upsert_trust_tier(clients.request(tier)).await?;
    // Hold the classifier lock of the account the cooldown scenario asks about.
    clients.fair_use[0].clone().request_classification(clients.request(pb::RequestClassificationRequest { account_id: "held".into() })).await?;
    Ok(())
}

/// Analyses the tables that hold rows and leaves the empty ones without statistics, as a fresh
/// deployment has them. An empty table that is analysed is taken for empty by every plan made
/// until autovacuum analyses it again: `holds` was, and each `Reserve`, and each batch of debits
/// after the `reserve-commit` scenario, summed live holds by a sequential scan of all holds
/// (docs/benchmarks.md, finding 10).
const ANALYZE_FILLED: &str = "DO $$ DECLARE t regclass; filled boolean; BEGIN \
    FOR t IN SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' LOOP \
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', t) INTO filled; \
        IF filled THEN EXECUTE format('ANALYZE %s', t); END IF; \
    END LOOP; END $$";

/// Concurrent warm-up calls.
const WARM_UP_CLIENTS: usize = 64;

/// Brings the database to a steady state before anything is measured, as the baseline's
/// accounts are: every account (and `hot`) has debited once, so its meter row exists, and the
/// tables that hold rows are analysed, so plans are made with the statistics a running service has
/// rather than those of empty tables.
async fn warm_up(clients: &Clients, dsn: &str) -> anyhow::Result<()> {
    let accounts: Vec<String> = (0..ACCOUNTS).map(|a| format!("a{a}")).chain(["hot".to_owned()]).collect();
    futures::stream::iter(accounts.into_iter().enumerate())
        .map(|(i, account)| {
            let mut entitlements = clients.entitlements[i % clients.entitlements.len()].clone();
            let request = pb::DebitRequest {
                account_id: account.clone(),
                meter: "tokens".into(),
                amount_credits: 1,
                idempotency_key: format!("warm-{account}"),
                ..Default::default()
            };
            async move { entitlements.debit(clients.request(request)).await.map(|_| ()) }
        })
        .buffer_unordered(WARM_UP_CLIENTS)
        .try_collect::<()>()
        .await?;
    connect(dsn).await?.batch_execute(ANALYZE_FILLED).await?;
    Ok(())
}

/// A plain connection to the bench's database, outside Allot; it closes when dropped.
async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The bench's check: 1 credit of `tokens` on `account` (unary, streamed and open-loop alike).
fn check_request(account: String) -> pb::CheckRequest {
    pb::CheckRequest { account_id: account, meter: "tokens".into(), amount_credits: 1, ..Default::default() }
}

/// The account call `n` of client `worker` uses in the uniform scenarios.
fn account_of(worker: usize, n: u64) -> String {
    format!("a{}", (worker as u64 * 7_919 + n * 104_729) % u64::from(ACCOUNTS))
}

/// One operation of a scenario by client `worker`, call number `n`; `Ok(false)` is an error answer.
async fn operation(clients: &Clients, scenario: &str, c: usize, worker: usize, n: u64) -> bool {
    let channel = worker % clients.entitlements.len();
    let account = account_of(worker, n);
    let key = format!("{scenario}-{c}-{worker}-{n}");
    let mut entitlements = clients.entitlements[channel].clone();
    match scenario {
        "check" => entitlements.check(clients.request(check_request(account))).await.is_ok(),
        "debit-uniform" | "debit-hot" | "debit-subsidised" | "debit-rated" => {
            let account = if scenario == "debit-hot" { "hot".to_owned() } else { account };
            let subsidy = (scenario == "debit-subsidised").then(|| pb::SubsidyRequest { pool_id: "bench".into(), identity: String::new() });
            // 1,000 input and 500 output tokens: 1 credit once rounded up.
            let quantities = pb::UsageQuantities { input_tokens: 1_000, output_tokens: 500, ..Default::default() };
            let usage = match scenario {
                "debit-rated" => {
                    vec![pb::MeterAmount { meter: "tokens".into(), sku: "bench/model".into(), quantities: Some(quantities), ..Default::default() }]
                }
                _ => Vec::new(),
            };
            let (meter, amount_credits) = if usage.is_empty() { ("tokens".to_owned(), 1) } else { (String::new(), 0) };
            entitlements
                .debit(clients.request(pb::DebitRequest {
                    account_id: account,
                    meter,
                    amount_credits,
                    usage,
                    idempotency_key: key,
                    subsidy,
                    ..Default::default()
                }))
                .await
                // A rated debit that is not allowed means the price was not found: count it as an error.
                .is_ok_and(|r| scenario != "debit-rated" || r.get_ref().decision == pb::Decision::Allowed as i32)
        }
        "reserve-commit" => {
            let reserved = entitlements
                .reserve(clients.request(pb::ReserveRequest {
                    account_id: account,
                    meter: "tokens".into(),
                    amount_credits: 10,
                    ttl_ms: 60_000,
                    idempotency_key: key,
                    ..Default::default()
                }))
                .await;
            match reserved {
                Ok(r) => entitlements
                    .commit(clients.request(pb::CommitRequest { hold_id: r.into_inner().hold_id, actual_credits: 5, ..Default::default() }))
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        }
        _ => clients.fair_use[channel]
            .clone()
            .request_classification(clients.request(pb::RequestClassificationRequest { account_id: "held".into() }))
            .await
            .is_ok_and(|r| r.into_inner().verdict == pb::ClassificationVerdict::Cooldown as i32),
    }
}

async fn scenario_row(clients: &Clients, scenario: &'static str, c: usize, length: Duration) -> anyhow::Result<Row> {
    let deadline = Instant::now() + length;
    let cpu_before = cpu::Sample::now();
    let mut tasks = Vec::with_capacity(c);
    for worker in 0..c {
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            if streams::is_stream(scenario) {
                return streams::worker(&clients, scenario, c, worker, deadline).await;
            }
            let mut latencies_us = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                if !operation(&clients, scenario, c, worker, n).await {
                    errors += 1;
                }
                latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                n += 1;
            }
            Ok((latencies_us, errors))
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await??;
        latencies_us.extend(l);
        errors += e;
    }
    let ops = latencies_us.len() as f64;
    let cpu_us = cpu_before.zip(cpu::Sample::now()).map(|(before, after)| after.per_op_us(&before, ops));
    let Percentiles { p50_ms, p95_ms, p99_ms } = percentiles(&mut latencies_us);
    Ok(Row { scenario, clients: c, ops_per_s: ops / length.as_secs_f64(), p50_ms, p95_ms, p99_ms, errors, cpu_us, raw_ops_per_s: None })
}

/// Latency percentiles of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// The percentiles of `latencies_us` (sorted in place); zeros when nothing was measured.
fn percentiles(latencies_us: &mut [u32]) -> Percentiles {
    latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((latencies_us.len() as f64 * p) as usize).min(latencies_us.len() - 1);
        f64::from(latencies_us[i]) / 1000.0
    };
    Percentiles { p50_ms: pct(0.50), p95_ms: pct(0.95), p99_ms: pct(0.99) }
}

fn report(rows: &[Row], open: &[open_loop::OpenRow], raw_open: &[raw_open_loop::RawOpenRow], options: &Options) -> String {
    let mut out = format!(
        "Measured with `allot bench --seconds {} --clients \"{}\"` on {} (UTC), {} cores.\n\n",
        options.seconds,
        options.clients.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        time::OffsetDateTime::now_utc().date(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    out.push_str(
        "| scenario | clients | Allot ops/s | p50 ms | p95 ms | p99 ms | errors | CPU µs/op: Allot+client / rest | raw ops/s | Allot / raw |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for row in rows {
        let raw_name = SCENARIOS.iter().find(|(s, _)| *s == row.scenario).map_or("", |(_, r)| r);
        let raw = row.raw_ops_per_s;
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            row.scenario,
            row.clients,
            row.ops_per_s,
            row.p50_ms,
            row.p95_ms,
            row.p99_ms,
            row.errors,
            row.cpu_us.map_or("–".to_owned(), |(own, rest)| format!("{own:.0} / {rest:.0}")),
            raw.map_or("–".to_owned(), |r| format!("{r:.0} ({raw_name})")),
            raw.map_or("–".to_owned(), |r| format!("{:.2}", row.ops_per_s / r)),
        ));
    }
    let peaks = peak::peaks(rows);
    if !peaks.is_empty() {
        out.push_str(&format!("\nPeak against peak over this run's levels (each side at the clients where it ran fastest; the raw baseline runs at up to {BASELINE_CLIENTS_MAX} clients, Allot at every level):\n\n"));
        out.push_str("| scenario | Allot peak ops/s (clients) | raw peak ops/s (clients) | Allot / raw | Allot peak where the baseline ran | Allot / raw there |\n");
        out.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for p in peaks {
            out.push_str(&format!(
                "| {} | {:.0} ({}) | {:.0} ({}) | {:.2} | {:.0} ({}) | {:.2} |\n",
                p.scenario,
                p.allot.0,
                p.allot.1,
                p.raw.0,
                p.raw.1,
                p.ratio(),
                p.allot_beside_raw.0,
                p.allot_beside_raw.1,
                p.ratio_beside_raw()
            ));
        }
    }
    out.push_str(&open_loop::report(open));
    out.push_str(&raw_open_loop::report(raw_open, open));
    out
}
