//! The long soak (ignored by `cargo test`; run it with `scripts/soak --seconds N`): the real
//! `allot` binary on a PostgreSQL and a Redis of its own, each behind the fault proxy, under 16
//! clients of the mixed workload (retrying with the same keys), while faults are injected one at
//! a time every 2–5 s, in a shuffled cycle:
//!
//! | fault | how |
//! | --- | --- |
//! | `kill-9` | `SIGKILL` to the allot PID, restarted at once (serving again must take ≤ 3 s) |
//! | `crash-after-commit` | restarted with the failpoint armed for one mutation: the process kills itself right after such a call commits, before replying; restarted at once |
//! | `sigterm` | `SIGTERM` to the allot PID, restarted once it has drained and exited 0 |
//! | `postgres-stop` | PostgreSQL stopped by its PID for 5 s, started again on the same port |
//! | `postgres-slow` | every packet to and from PostgreSQL delayed 50 ms for 3 s |
//! | `redis-reject` | connections to Redis reset for 2 s |
//! | `redis-blackhole` | Redis packets held (vanish) for 2 s |
//! | `redis-sigstop` | redis-server paused with `SIGSTOP` for 2 s (then `SIGCONT`) |
//!
//! At the end it prints a summary table (operations, faults injected, anomalies) and fails unless
//! the history check finds no anomaly, no session is idle inside a transaction, and every
//! restart served again within 3 s. `SOAK_SECONDS` (default 120) and `SOAK_CLIENTS` (16) tune it.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_proto::v1::admin_client::AdminClient;
use allot_server::clock::{Clock, SystemClock};
use allot_server::faults::history::{self, Expect, History};
use allot_server::faults::proxy::{FaultProxy, Mode};
use allot_server::faults::workload::{self, Bearer, Options, Stop};
use allot_server::localstack::{LocalPostgres, LocalRedis};
use rand::seq::SliceRandom;
use rand::Rng;
use support::*;

const METER: &str = "tokens";
const DEBT_LIMIT_CREDITS: i64 = 2_000;
const SERVING_WITHIN: Duration = Duration::from_secs(3);
const FAULTS: [&str; 8] =
    ["kill-9", "crash-after-commit", "sigterm", "postgres-stop", "postgres-slow", "redis-reject", "redis-blackhole", "redis-sigstop"];
const MUTATIONS: [&str; 5] = ["debit", "reserve", "commit", "release", "refund"];

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn signal(name: &str, pid: u32) {
    let status = std::process::Command::new("kill").args([format!("-{name}"), pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// Resumes a paused PID when dropped (also when the soak fails).
struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long soak: run scripts/soak"]
async fn soak() {
    let seconds = setting("SOAK_SECONDS", 120);
    let clients = setting("SOAK_CLIENTS", 16) as usize;
    // Servers' files under the target dir (removed by their stop); logs stay in `logs()`.
    let root = logs().join(format!("soak-{}", std::process::id()));
    let (pg_root, redis_root) = (root.join("pg"), root.join("redis"));
    let mut postgres = tokio::task::spawn_blocking(move || LocalPostgres::start(&pg_root)).await.expect("join").expect("postgres");
    let redis = tokio::task::spawn_blocking(move || LocalRedis::start(&redis_root)).await.expect("join").expect("redis");
    allot_server::dev::create_database(&postgres.dsn("postgres"), "allot").await.expect("database");
    allot_server::db::migrate(&postgres.dsn("allot")).await.expect("migrate");
    let pg_proxy = FaultProxy::start(([127, 0, 0, 1], postgres.port()).into()).await.expect("pg proxy");
    let redis_proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await.expect("redis proxy");
    let database_url = postgres.dsn("allot").replace(&format!(":{}/", postgres.port()), &format!(":{}/", pg_proxy.addr().port()));
    let redis_url = format!("redis://{}", redis_proxy.addr());
    // One tenant drives the whole workload: the fairness limit between tenants must not throttle it.
    let env = [
        ("ALLOT_REDIS_URL", redis_url.as_str()),
        ("ALLOT_DB_POOL_WAIT_MS", "1000"),
        ("ALLOT_REDIS_TIMEOUT_MS", "100"),
        ("ALLOT_TENANT_CONCURRENCY_MAX", "1000"),
    ];
    let mut served = serve_on("soak", database_url.clone(), &env, METER, 20_000, DEBT_LIMIT_CREDITS).await;
    // The workload's meter also has a per-minute cap that fails open, so Redis is on the path.
    let mut plan = workload::plan_request(METER, 20_000, DEBT_LIMIT_CREDITS);
    if let Some(p) = plan.plan.as_mut() {
        p.meters[0].rate_limit_per_minute = Some(10_000_000);
        p.meters[0].rate_failure_policy = pb::RateFailurePolicy::FailOpen as i32;
    }
    let channel = workload::lazy_channel(served.process.listen);
    AdminClient::with_interceptor(channel, Bearer::new(&served.api_key)).upsert_plan(plan).await.expect("plan");

    let history = History::new();
    let stop = Stop::new();
    // Retries outlast any single fault: up to 600 attempts 100 ms apart.
    let options = Options { clients, accounts: 8, operations_per_client: None, attempts_max: 600, prefix: "soak".into(), ..Options::default() };
    let load = tokio::spawn(workload::run(served.client.clone(), options, history.clone(), stop.clone()));

    let started = Instant::now();
    let mut rng = rand::rng();
    let mut injected: BTreeMap<&str, (usize, Duration)> = BTreeMap::new();
    let mut cycle = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        if cycle.is_empty() {
            cycle = FAULTS.to_vec();
            cycle.shuffle(&mut rng);
        }
        let fault = cycle.pop().expect("a fault");
        tokio::time::sleep(Duration::from_millis(rng.random_range(2_000..5_000))).await;
        let began = Instant::now();
        // Recovery: how long after the fault ended the service answered again.
        let recovery = match fault {
            "kill-9" => {
                served.process.kill9();
                served.process.restart(&[]);
                served.process.until_serving(&served.client, "probe", METER, PATIENCE).await.expect("serving after kill -9")
            }
            "crash-after-commit" => {
                let rpc = MUTATIONS[rng.random_range(0..MUTATIONS.len())];
                served.process.kill9();
                served.process.restart(&[("ALLOT_FAILPOINT_CRASH_AFTER_COMMIT", rpc)]);
                let status = served.process.wait_exit(PATIENCE).await.expect("the failpoint fired under load");
                assert!(
                    served.process.stderr().contains("failpoint"),
                    "died without the failpoint ({status}): {}",
                    served.process.stderr_path().display()
                );
                let crashed_at = Instant::now();
                served.process.restart(&[]);
                served.process.until_serving(&served.client, "probe", METER, PATIENCE).await.expect("serving after the crash");
                crashed_at.elapsed()
            }
            "sigterm" => {
                served.process.sigterm();
                let status = served.process.wait_exit(PATIENCE).await.expect("exited after SIGTERM");
                assert!(status.success(), "exit after SIGTERM: {status}; see {}", served.process.stderr_path().display());
                served.process.restart(&[]);
                served.process.until_serving(&served.client, "probe", METER, PATIENCE).await.expect("serving after SIGTERM")
            }
            "postgres-stop" => {
                tokio::task::block_in_place(|| postgres.halt());
                tokio::time::sleep(Duration::from_secs(5)).await;
                tokio::task::block_in_place(|| postgres.restart()).expect("restart postgres");
                served.process.until_serving(&served.client, "probe", METER, PATIENCE).await.expect("serving after postgres")
            }
            "postgres-slow" => {
                pg_proxy.set(Mode::Delay(Duration::from_millis(50)));
                tokio::time::sleep(Duration::from_secs(3)).await;
                pg_proxy.set(Mode::Pass);
                Duration::ZERO
            }
            "redis-reject" | "redis-blackhole" => {
                redis_proxy.set(if fault == "redis-reject" { Mode::Reject } else { Mode::Blackhole });
                tokio::time::sleep(Duration::from_secs(2)).await;
                redis_proxy.set(Mode::Pass);
                Duration::ZERO
            }
            _ => {
                signal("STOP", redis.pid());
                let paused = Paused(redis.pid());
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(paused);
                Duration::ZERO
            }
        };
        let entry = injected.entry(fault).or_insert((0, Duration::ZERO));
        entry.0 += 1;
        entry.1 = entry.1.max(recovery);
        tracing::debug!(fault, took = ?began.elapsed(), ?recovery, "fault injected");
    }
    stop.stop();
    tokio::time::timeout(PATIENCE * 2, load).await.expect("the workload stopped").expect("workload");

    let direct = postgres.dsn("allot");
    // As the login role (not held to row-level security): the checks read every tenant's rows.
    let config = allot_server::config::Config { db_role: String::new(), ..allot_server::config::Config::with_database(direct.clone(), None) };
    let pool = allot_server::db::pool(&config).expect("pool");
    let db = pool.get().await.expect("db");
    let report = history::check(&history, &db, &Expect { debt_limit_credits: DEBT_LIMIT_CREDITS, now: SystemClock.now() }).await.expect("check");
    let stuck = idle_in_transaction(&db, &direct, Duration::from_secs(15)).await;
    let faults_total: usize = injected.values().map(|(n, _)| n).sum();

    println!("\n## Soak: {seconds} s, {clients} clients, faults every 2–5 s\n");
    println!("| fault | injected | slowest recovery |");
    println!("| --- | ---: | ---: |");
    for (fault, (n, slowest)) in &injected {
        println!("| {fault} | {n} | {} |", if slowest.is_zero() { "–".to_owned() } else { format!("{} ms", slowest.as_millis()) });
    }
    println!("\n| operations | attempts | acked | denied | refused | unknown (applied) | faults injected | idle in transaction | anomalies |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {} | {} | {} | {} | {} | {} ({}) | {faults_total} | {stuck} | {} |",
        report.operations,
        report.attempts,
        report.acked,
        report.denied,
        report.refused,
        report.unknown,
        report.unknown_applied,
        report.anomalies.len()
    );
    let codes: Vec<String> = report.codes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("\nattempts by result: {}\n", codes.join(", "));

    report.assert_clean();
    assert_eq!(stuck, 0, "sessions idle inside a transaction");
    for fault in ["kill-9", "crash-after-commit", "sigterm"] {
        if let Some((_, slowest)) = injected.get(fault) {
            assert!(*slowest <= SERVING_WITHIN, "{fault}: serving again only after {slowest:?}");
        }
    }
    drop(served);
    tokio::task::block_in_place(|| postgres.stop());
}
