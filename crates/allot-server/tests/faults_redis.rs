//! Redis faults: Redis is only an admission limit, so losing it must change no money result.
//! A Redis server of this test's own sits behind the fault proxy; the server under test talks to
//! the proxy with `redis_timeout_ms` = 200. Three faults in turn, each ~2 s, with a healthy spell
//! between them: connections rejected (RST), packets vanishing (blackhole), and the Redis process
//! paused with `SIGSTOP` (then `SIGCONT`, also if the test fails).
//!
//! Throughout, the mixed workload runs on a rate-capped meter that fails open; afterwards its
//! history check is clean and no call of it was rate limited or failed. During each fault, probes
//! on a fail-closed meter are denied RATE_LIMITED (charging nothing) and probes on the fail-open
//! meter are allowed and charged, flagged `failed_open`, each within the Redis timeout plus
//! slack; after each fault the fail-closed meter admits again (time to recover printed).

use std::process::Command;
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_server::clock::Clock;
use allot_server::faults::history::{self, Attempt, AttemptRecord, Expect, History, Kind, Operation};
use allot_server::faults::proxy::{FaultProxy, Mode};
use allot_server::faults::workload::{self, Client, Options, Stop};
use allot_server::localstack::LocalRedis;
use allot_server::testkit::TestServer;

const REDIS_TIMEOUT_MS: u64 = 200;
/// Scheduling and database time on a loaded 2-core machine, on top of the Redis timeout.
const SLACK: Duration = Duration::from_millis(1_000);
const PATIENCE: Duration = Duration::from_secs(30);

fn capped(meter: &str, policy: pb::RateFailurePolicy) -> pb::MeterAllowance {
    pb::MeterAllowance {
        meter: meter.into(),
        allowance_credits: Some(1_000_000),
        debt_limit_credits: 1_000,
        rate_limit_per_minute: Some(1_000_000),
        rate_failure_policy: policy as i32,
        ..Default::default()
    }
}

/// `kill -STOP` on a PID; `kill -CONT` when dropped.
struct Paused(u32);

impl Paused {
    fn new(pid: u32) -> Paused {
        signal("STOP", pid);
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

fn signal(name: &str, pid: u32) {
    let status = Command::new("kill").args([format!("-{name}"), pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// Sends a probe debit of 1 credit on `meter` and records it in `history`.
async fn probe(client: &mut Client, history: &History, meter: &str, key: String) -> (pb::DebitResponse, Duration) {
    let started = Instant::now();
    let response = client.debit(debit(meter, key.clone())).await.expect("probe debit").into_inner();
    let elapsed = started.elapsed();
    let attempt = if response.decision == pb::Decision::Allowed as i32 {
        Attempt::Ok { id: Some(response.entry_id.clone()) }
    } else {
        Attempt::Denied { reason: response.reason }
    };
    history.record(Operation {
        kind: Kind::Debit,
        account: "probe".into(),
        key: Some(key),
        hold_id: None,
        refunds: None,
        amount_credits: 1,
        attempts: vec![AttemptRecord { attempt, elapsed }],
    });
    (response, elapsed)
}

fn debit(meter: &str, key: String) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: "probe".into(),
        meter: meter.into(),
        amount_credits: 1,
        idempotency_key: key,
        mode: pb::DebitMode::Gate as i32,
        ..Default::default()
    }
}

/// Probes both capped meters `n` times during a fault; returns the slowest probe.
async fn probe_during_fault(client: &mut Client, history: &History, label: &str, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let (closed, took) = probe(client, history, "closed", format!("{label}-closed-{i}")).await;
        slowest = slowest.max(took);
        assert_eq!(closed.reason, pb::DenialReason::RateLimited as i32, "{label}: the fail-closed meter refuses without Redis");
        let (open, took) = probe(client, history, "open", format!("{label}-open-{i}")).await;
        slowest = slowest.max(took);
        assert_eq!(open.decision, pb::Decision::Allowed as i32, "{label}: the fail-open meter admits without Redis");
        assert!(open.meter.and_then(|m| m.rate).is_some_and(|r| r.failed_open), "{label}: flagged failed_open");
    }
    slowest
}

/// Waits until the fail-closed meter admits again; how long that took.
async fn until_recovered(client: &mut Client, history: &History, label: &str) -> Duration {
    let started = Instant::now();
    for i in 0.. {
        let (response, _) = probe(client, history, "closed", format!("{label}-back-{i}")).await;
        if response.decision == pb::Decision::Allowed as i32 {
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "{label}: rate caps never worked again after the fault");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rejected_dropped_or_paused_changes_no_money_result() {
    let root = tempfile::Builder::new().prefix("allot-faults-redis-").tempdir().expect("temp dir");
    let path = root.path().to_owned();
    let redis = tokio::task::spawn_blocking(move || LocalRedis::start(&path)).await.expect("join").expect("start redis");
    let proxy = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], redis.port()))).await.expect("proxy");
    let server = TestServer::start_with(time::OffsetDateTime::now_utc(), |c| {
        c.redis_url = Some(format!("redis://{}", proxy.addr()));
        c.redis_timeout_ms = REDIS_TIMEOUT_MS;
    })
    .await;
    let (_, mut admin) = server.clients().await;
    let plan = pb::Plan {
        plan_id: "free".into(),
        tier: "free".into(),
        name: "Free".into(),
        meters: vec![
            capped("tokens", pb::RateFailurePolicy::FailOpen),
            capped("open", pb::RateFailurePolicy::FailOpen),
            capped("closed", pb::RateFailurePolicy::FailClosed),
        ],
        is_free_default: true,
        ..Default::default()
    };
    admin.upsert_plan(pb::UpsertPlanRequest { plan: Some(plan) }).await.expect("plan");
    let mut client = workload::client(server.channel().await, &server.tenant.api_key);
    let history = History::new();
    assert_eq!(probe(&mut client, &history, "closed", "healthy".into()).await.0.decision, pb::Decision::Allowed as i32);

    let stop = Stop::new();
    let options = Options { clients: 8, operations_per_client: None, prefix: "redis".into(), ..Options::default() };
    let load = tokio::spawn(workload::run(client.clone(), options, history.clone(), stop.clone()));
    let mut figures = Vec::new();
    for fault in ["reject", "blackhole", "sigstop"] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let paused = match fault {
            "reject" => {
                proxy.set(Mode::Reject);
                None
            }
            "blackhole" => {
                proxy.set(Mode::Blackhole);
                None
            }
            _ => Some(Paused::new(redis.pid())),
        };
        let slowest = probe_during_fault(&mut client, &history, fault, 5).await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        proxy.set(Mode::Pass);
        drop(paused);
        let recovered = until_recovered(&mut client, &history, fault).await;
        println!("{fault}: slowest probe {slowest:?} (redis timeout {REDIS_TIMEOUT_MS} ms); rate caps back {recovered:?} after the fault ended");
        figures.push((fault, slowest, recovered));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.stop();
    tokio::time::timeout(PATIENCE, load).await.expect("workload stopped").expect("workload");

    for (fault, slowest, _) in &figures {
        assert!(*slowest <= Duration::from_millis(REDIS_TIMEOUT_MS) + SLACK, "{fault}: a probe took {slowest:?}");
    }
    let db = server.sql().await;
    let report = history::check(&history, &db, &Expect { debt_limit_credits: 1_000, now: server.clock.now() }).await.expect("check");
    println!("{report}");
    println!("slowest workload call: {:?}", history.operations().iter().flat_map(|op| op.attempts.iter().map(|a| a.elapsed)).max());
    report.assert_clean();
    assert_eq!(report.unknown, 0, "no call of the fail-open workload failed");
    let rate_limited = history
        .operations()
        .iter()
        .filter(|op| op.account != "probe")
        .flat_map(|op| op.attempts.clone())
        .filter(|a| a.attempt == Attempt::Denied { reason: pb::DenialReason::RateLimited as i32 })
        .count();
    assert_eq!(rate_limited, 0, "a fail-open meter is never rate limited by a Redis fault");
    let failures: Vec<&String> = report.codes.keys().filter(|k| !matches!(k.as_str(), "ok" | "denied")).collect();
    assert!(failures.is_empty(), "{:?}", report.codes);
    // The fail-closed meter charged exactly the probes it admitted.
    let closed_entries: i64 =
        db.query_one("SELECT COUNT(*) FROM ledger_entries WHERE meter = 'closed' AND kind = 'debit'", &[]).await.expect("n").get(0);
    let closed_used: i64 = db.query_one("SELECT allowance_used_credits FROM meter_balances WHERE meter = 'closed'", &[]).await.expect("used").get(0);
    assert_eq!(closed_used, closed_entries, "one credit per admitted probe, none for refused ones");
    drop(proxy);
    drop(redis);
}
