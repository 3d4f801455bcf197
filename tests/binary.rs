//! Black-box tests of the real `allot` binary.
//!
//! Each test starts `target/.../allot` as a child process and talks to it only through its
//! command line (stdout, exit status) and over gRPC, exactly as an operator or a client would:
//!
//! - `migrate_is_idempotent_and_create_tenant_prints_a_key`: `allot migrate` on an empty database
//!   applies every file of `migrations/`, a second run applies none; `allot create-tenant` prints
//!   a fresh `allot_…` key.
//! - `serves_reflection_health_and_a_debit_end_to_end`: `allot serve` answers health checks,
//!   server reflection (v1 and v1alpha), an Admin plan upsert and Entitlements debits (allowed,
//!   denied, replayed), rejects missing credentials and invalid input with the right codes and
//!   details, and exits cleanly on SIGTERM.
//! - `version_names_the_commit`: `allot --version` prints `allot <version> (<commit>)`.
//! - `bench_refuses_an_unknown_scenario_before_starting_anything`: a misspelt `--scenarios`
//!   name fails `allot bench` with the list of scenarios, instead of measuring nothing.
//! - `bench_refuses_a_connection_count_out_of_bounds_before_starting_anything`: a bad
//!   `ALLOT_BENCH_CONNECTIONS` fails `allot bench` naming the setting, before any PostgreSQL is
//!   started.
//! - `bench_refuses_an_open_loop_share_out_of_bounds_before_starting_anything`: the same for
//!   `ALLOT_BENCH_OPEN_LOOP_PERCENT`, and
//!   `bench_refuses_a_statement_count_out_of_bounds_before_starting_anything` for
//!   `ALLOT_BENCH_STATEMENTS`.
//! - `bench_runs_every_scenario_with_every_call_answered`: a one-second `allot bench` of every
//!   scenario, unary and streamed, through the load generator's own HTTP/2 client
//!   (`bench/transport.rs`): every row and the open-loop rows report calls and no error.
//!
//! The throwaway PostgreSQL comes from `allot_server::testkit`. Every child is wrapped in
//! [`Child`], which kills it by its own PID if a test fails midway; its stdout and stderr go to
//! files under `CARGO_TARGET_TMPDIR/binary-tests/`, kept only when a test fails (failure
//! messages name them).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_proto::v1::admin_client::AdminClient;
use allot_proto::v1::entitlements_client::EntitlementsClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Longest a CLI command (`migrate`, `create-tenant`, `--version`) may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `allot serve` may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest `allot serve` may take to exit after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the health service may take to report SERVING (its probe runs every second).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A running `allot` child process. Dropping it while it still runs kills it (SIGKILL to its own
/// PID, via `std::process::Child::kill`) and reaps it, so a failed assertion leaves no orphan.
struct Child {
    process: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Child {
    /// Starts `allot <args>` with `env` added and every inherited `ALLOT_*` variable removed (so
    /// the caller's environment cannot change what is tested).
    fn spawn(label: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("binary-tests");
        std::fs::create_dir_all(&dir).expect("create log dir");
        let stem = format!("{label}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let stdout = dir.join(format!("{stem}.stdout"));
        let stderr = dir.join(format!("{stem}.stderr"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_allot"));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ALLOT_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let process = command.spawn().unwrap_or_else(|e| panic!("spawn allot {args:?}: {e}"));
        Child { process, stdout, stderr }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The exit status, if the process has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.process.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit; panics (and so kills it on drop) after `within`.
    async fn wait_for_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(Instant::now() < deadline, "allot (pid {}) still running after {within:?}; {}", self.pid(), self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).expect("read stdout file")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).expect("read stderr file")
    }

    /// Where the output went and the end of stderr, for failure messages.
    fn logs(&self) -> String {
        let stderr = self.stderr();
        let tail: String = stderr.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("stdout: {}, stderr: {}; stderr ends with:\n{tail}", self.stdout.display(), self.stderr.display())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
        // Output is kept only when a test fails (failure messages name the files).
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.stdout);
            let _ = std::fs::remove_file(&self.stderr);
        }
    }
}

/// Runs `allot <args>` to completion, asserts it succeeded and returns its stdout.
async fn run_allot(label: &str, args: &[&str]) -> String {
    let mut child = Child::spawn(label, args, &[]);
    let status = child.wait_for_exit(CLI_TIMEOUT).await;
    assert!(status.success(), "allot {args:?} failed with {status}; {}", child.logs());
    child.stdout()
}

/// Sends SIGTERM to exactly one process, by its PID.
fn sigterm(pid: u32) {
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -TERM {pid} failed: {status}");
}

// ---------------------------------------------------------------------------------------------
// Parsing what the CLI prints
// ---------------------------------------------------------------------------------------------

/// The migration names of `applied <n> migration(s): <name>, <name>`, checked against `<n>`.
fn applied_migrations(stdout: &str) -> Vec<String> {
    let line = stdout.lines().find(|l| l.starts_with("applied ")).unwrap_or_else(|| panic!("no `applied` line in {stdout:?}"));
    let (count, names) = line["applied ".len()..].split_once(" migration(s):").unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let count: usize = count.parse().unwrap_or_else(|_| panic!("count in {line:?}"));
    let names: Vec<String> = names.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect();
    assert_eq!(names.len(), count, "count and names disagree in {line:?}");
    names
}

/// Every migration of `migrations/` as refinery names it (`V<n>__<name>`), in version order.
fn expected_migrations() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut found: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .expect("read migrations/")
        .map(|entry| {
            let name = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".sql").expect(".sql file").to_owned();
            let version = stem[1..].split_once("__").and_then(|(v, _)| v.parse().ok()).expect("V<n>__name");
            (version, stem)
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "migrations/ is empty");
    found.into_iter().map(|(_, stem)| stem).collect()
}

/// The key of `api key <id> (role admin, shown once): allot_<48 hex>`, checked for shape.
fn api_key_from(stdout: &str) -> String {
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("api key ").and_then(|l| l.split_once("(role admin, shown once): ")).map(|(_, key)| key))
        .unwrap_or_else(|| panic!("no api key line in {stdout:?}"))
        .trim()
        .to_owned();
    let secret = key.strip_prefix("allot_").unwrap_or_else(|| panic!("key {key:?} lacks the allot_ prefix"));
    assert!(secret.len() == 48 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "key secret {secret:?} is not 48 hex digits");
    key
}

// ---------------------------------------------------------------------------------------------
// gRPC helpers
// ---------------------------------------------------------------------------------------------

/// Connects to `addr`, retrying until `deadline`; fails early (with the logs) if the server exits.
async fn connect_when_ready(server: &mut Child, addr: &str, within: Duration) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_timeout(Duration::from_secs(1));
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = server.exited() {
            panic!("allot serve exited early with {status}; {}", server.logs());
        }
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        assert!(Instant::now() < deadline, "allot serve did not accept on {addr} within {within:?}; {}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `grpc.health.v1.Health/Check` for `service` until SERVING or `within` passes.
async fn wait_until_serving(channel: Channel, service: &str, within: Duration) {
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        let answer = health.check(HealthCheckRequest { service: service.to_owned() }).await.map(|r| r.into_inner().status);
        if matches!(answer, Ok(s) if s == ServingStatus::Serving as i32) {
            return;
        }
        last = Some(answer);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("health of {service:?} not SERVING within {within:?}; last answer {last:?}");
}

/// A request carrying `Bearer <key>` in `authorization`.
fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii key"));
    request
}

fn debit(account: &str, amount: i64, key: &str) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: account.into(),
        meter: "tokens".into(),
        amount_credits: amount,
        idempotency_key: key.into(),
        mode: pb::DebitMode::Gate as i32,
        ..Default::default()
    }
}

/// What one reflection stream said: the service names listed and the file descriptors returned
/// for `allot.v1.Entitlements`.
#[derive(Debug)]
struct Reflected {
    services: Vec<String>,
    descriptors: Vec<Vec<u8>>,
}

/// `async fn $name(channel) -> Reflected`: sends `list_services` and
/// `file_containing_symbol("allot.v1.Entitlements")` on one bidi stream of the reflection API of
/// `tonic_reflection::pb::$version` (v1 and v1alpha have identical shapes but distinct types).
macro_rules! reflection_probe {
    ($name:ident, $version:ident) => {
        async fn $name(channel: Channel) -> Reflected {
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::ServerReflectionRequest;

            let request = |message| ServerReflectionRequest { host: String::new(), message_request: Some(message) };
            let requests = vec![
                request(MessageRequest::ListServices(String::new())),
                request(MessageRequest::FileContainingSymbol("allot.v1.Entitlements".into())),
            ];
            let mut client = ServerReflectionClient::new(channel);
            let mut stream = client.server_reflection_info(tokio_stream::iter(requests)).await.expect("open reflection stream").into_inner();
            let mut reflected = Reflected { services: Vec::new(), descriptors: Vec::new() };
            for _ in 0..2 {
                let response = stream.message().await.expect("reflection response").expect("stream ended early");
                match response.message_response.expect("a message response") {
                    MessageResponse::ListServicesResponse(list) => reflected.services = list.service.into_iter().map(|s| s.name).collect(),
                    MessageResponse::FileDescriptorResponse(files) => reflected.descriptors = files.file_descriptor_proto,
                    other => panic!("unexpected reflection response {other:?}"),
                }
            }
            reflected
        }
    };
}

reflection_probe!(reflect_v1, v1);
reflection_probe!(reflect_v1alpha, v1alpha);

/// The `field` of every `google.rpc.BadRequest.FieldViolation` in a status's
/// `grpc-status-details-bin` (an encoded `google.rpc.Status`). Decoded by hand with
/// [`length_delimited_fields`] because no protobuf runtime is a dev-dependency of this package.
fn bad_request_fields(details: &[u8]) -> Vec<String> {
    const BAD_REQUEST: &[u8] = b"type.googleapis.com/google.rpc.BadRequest";
    let mut fields = Vec::new();
    // google.rpc.Status { 3: repeated Any details }; Any { 1: type_url, 2: value }.
    for (_, any) in length_delimited_fields(details).into_iter().filter(|(n, _)| *n == 3) {
        let any = length_delimited_fields(any);
        if !any.iter().any(|(n, v)| *n == 1 && *v == BAD_REQUEST) {
            continue;
        }
        // BadRequest { 1: repeated FieldViolation }; FieldViolation { 1: field, 2: description }.
        for (_, value) in any.iter().filter(|(n, _)| *n == 2) {
            for (_, violation) in length_delimited_fields(value).into_iter().filter(|(n, _)| *n == 1) {
                for (_, field) in length_delimited_fields(violation).into_iter().filter(|(n, _)| *n == 1) {
                    fields.push(String::from_utf8(field.to_vec()).expect("utf-8 field name"));
                }
            }
        }
    }
    fields
}

/// The length-delimited fields (`field number`, payload) of one encoded protobuf message; other
/// wire types are skipped. Panics on malformed input.
fn length_delimited_fields(mut buf: &[u8]) -> Vec<(u64, &[u8])> {
    fn varint(buf: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first().expect("truncated varint");
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint too long");
    }
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let tag = varint(&mut buf);
        let skip = match tag & 7 {
            0 => {
                varint(&mut buf);
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(&mut buf)).expect("length");
                fields.push((tag >> 3, buf.get(..len).expect("truncated field")));
                len
            }
            wire => panic!("unsupported wire type {wire}"),
        };
        buf = buf.get(skip..).expect("truncated message");
    }
    fields
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_create_tenant_prints_a_key() {
    // An empty database (not the migrated template), so the first run has work to do.
    let stack = allot_server::testkit::stack();
    let name = format!("binary_migrate_{}", std::process::id());
    allot_server::dev::create_database(&stack.postgres.dsn("postgres"), &name).await.expect("create empty database");
    let url = stack.postgres.dsn(&name);

    let first = run_allot("migrate-1", &["migrate", "--database-url", &url]).await;
    assert_eq!(applied_migrations(&first), expected_migrations(), "first run applies every migration");
    let second = run_allot("migrate-2", &["migrate", "--database-url", &url]).await;
    assert_eq!(applied_migrations(&second), Vec::<String>::new(), "second run applies none");

    let created = run_allot("create-tenant", &["create-tenant", "--database-url", &url, "--name", "acme"]).await;
    let tenant_line = created.lines().next().unwrap_or_default();
    assert!(tenant_line.starts_with("tenant ") && tenant_line.ends_with(" created"), "unexpected first line {tenant_line:?}");
    let key = api_key_from(&created);
    let again = run_allot("create-tenant", &["create-tenant", "--database-url", &url, "--name", "acme"]).await;
    assert_ne!(api_key_from(&again), key, "every tenant gets its own key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_reflection_health_and_a_debit_end_to_end() {
    let url = allot_server::testkit::fresh_database().await;
    let key = api_key_from(&run_allot("create-tenant", &["create-tenant", "--database-url", &url, "--name", "acme"]).await);
    let listen = format!("127.0.0.1:{}", allot_server::localstack::free_port().expect("free port"));
    let mut server = Child::spawn("serve", &["serve", "--listen", &listen, "--database-url", &url], &[("ALLOT_LOG_FORMAT", "json")]);
    let channel = connect_when_ready(&mut server, &listen, STARTUP_TIMEOUT).await;

    // Health: the whole server and the hot-path service.
    for service in ["", "allot.v1.Entitlements"] {
        wait_until_serving(channel.clone(), service, HEALTH_TIMEOUT).await;
    }

    // Reflection, both protocol versions.
    for (version, reflected) in [("v1", reflect_v1(channel.clone()).await), ("v1alpha", reflect_v1alpha(channel.clone()).await)] {
        for service in ["allot.v1.Entitlements", "allot.v1.Admin", "grpc.health.v1.Health"] {
            assert!(reflected.services.iter().any(|s| s == service), "{version}: {service} not listed in {:?}", reflected.services);
        }
        assert!(
            reflected.descriptors.iter().any(|fd| fd.windows(27).any(|w| w == b"allot/v1/entitlements.proto")),
            "{version}: no descriptor of allot/v1/entitlements.proto among {} returned",
            reflected.descriptors.len()
        );
    }

    // A free default plan: 100 tokens per period.
    let mut admin = AdminClient::new(channel.clone());
    let plan = pb::Plan {
        plan_id: "free".into(),
        tier: "free".into(),
        name: "Free".into(),
        meters: vec![pb::MeterAllowance { meter: "tokens".into(), allowance_credits: Some(100), ..Default::default() }],
        trial_days: 0,
        is_free_default: true,
        ..Default::default()
    };
    let stored = admin.upsert_plan(authed(&key, pb::UpsertPlanRequest { plan: Some(plan) })).await.expect("upsert plan").into_inner();
    assert_eq!((stored.plan_id.as_str(), stored.is_free_default, stored.meters.len()), ("free", true, 1));

    // Debit 30 of 100: allowed, paid from the allowance.
    let mut entitlements = EntitlementsClient::new(channel.clone());
    let first = entitlements.debit(authed(&key, debit("u1", 30, "d1"))).await.expect("debit 30").into_inner();
    assert_eq!((first.decision, first.reason), (pb::Decision::Allowed as i32, pb::DenialReason::Unspecified as i32));
    assert!(!first.entry_id.is_empty(), "an allowed debit writes a ledger entry");
    // Breakdown amounts are signed balance changes (as the server's own tests pin: negative for a
    // charge), although entitlements.proto says "sums to the amount".
    assert_eq!(first.breakdown.iter().map(|b| b.amount_credits).sum::<i64>(), -30, "{:?}", first.breakdown);
    assert!(first.breakdown.iter().all(|b| b.kind == pb::BucketKind::Allowance as i32), "{:?}", first.breakdown);
    let meter = first.meter.clone().expect("meter after debit");
    assert_eq!((meter.used_credits, meter.remaining_credits), (30, Some(70)));

    // Debit 80 with 70 left: some credit remains but not enough → INSUFFICIENT_CREDIT.
    let second = entitlements.debit(authed(&key, debit("u1", 80, "d2"))).await.expect("debit 80").into_inner();
    assert_eq!((second.decision, second.reason), (pb::Decision::Denied as i32, pb::DenialReason::InsufficientCredit as i32));
    assert!(second.entry_id.is_empty(), "a denied debit writes nothing");

    // Replaying the first key returns the original response, and charges nothing more.
    let replay = entitlements.debit(authed(&key, debit("u1", 30, "d1"))).await.expect("replay").into_inner();
    assert_eq!(replay, first);
    let check = entitlements
        .check(authed(&key, pb::CheckRequest { account_id: "u1".into(), meter: "tokens".into(), amount_credits: 0, ..Default::default() }))
        .await
        .expect("check")
        .into_inner();
    let meter = check.meter.expect("meter in check");
    assert_eq!((meter.limit_credits, meter.used_credits, meter.remaining_credits), (Some(100), 30, Some(70)));
    assert_eq!(meter.plan_id, "free");

    // Spend the rest; then the allowance is gone and nothing else pays → QUOTA_EXHAUSTED.
    let rest = entitlements.debit(authed(&key, debit("u1", 70, "d3"))).await.expect("debit 70").into_inner();
    assert_eq!(rest.decision, pb::Decision::Allowed as i32);
    let over = entitlements.debit(authed(&key, debit("u1", 1, "d4"))).await.expect("debit 1").into_inner();
    assert_eq!((over.decision, over.reason), (pb::Decision::Denied as i32, pb::DenialReason::QuotaExhausted as i32));

    // No credential, or an unknown one: UNAUTHENTICATED.
    let anonymous = pb::CheckRequest { account_id: "u1".into(), meter: "tokens".into(), amount_credits: 0, ..Default::default() };
    let status = entitlements.check(Request::new(anonymous.clone())).await.expect_err("no authorization header");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let unknown = format!("allot_{}", "0".repeat(48));
    let status = entitlements.check(authed(&unknown, anonymous)).await.expect_err("unknown key");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Invalid input: INVALID_ARGUMENT with a google.rpc.BadRequest naming the field.
    let status = entitlements.debit(authed(&key, debit("u1", 0, "d5"))).await.expect_err("amount 0");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_request_fields(status.details()), ["amount_credits"], "{status:?}");

    // SIGTERM (to this PID only): drains and exits 0.
    drop((entitlements, admin, channel));
    sigterm(server.pid());
    let exit = server.wait_for_exit(SHUTDOWN_TIMEOUT).await;
    assert!(exit.success(), "allot serve exited with {exit} after SIGTERM; {}", server.logs());
    let stderr = server.stderr();
    assert!(stderr.lines().filter(|l| !l.is_empty()).all(|l| l.starts_with('{') && l.ends_with('}')), "ALLOT_LOG_FORMAT=json: {}", server.logs());
    assert!(stderr.contains("\"server stopped\""), "no `server stopped` log line; {}", server.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_the_commit() {
    let stdout = run_allot("version", &["--version"]).await;
    let line = stdout.trim_end();
    let prefix = format!("allot {} (", env!("CARGO_PKG_VERSION"));
    let commit = line.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(')')).unwrap_or_else(|| panic!("{line:?} is not `{prefix}<commit>)`"));
    // Built from a git checkout, the commit is `git rev-parse --short=12`; elsewhere, "unknown".
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() {
        assert!(commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()), "commit {commit:?} is not 12 hex digits");
    } else {
        assert_eq!(commit, "unknown");
    }
}

#[tokio::test]
async fn bench_refuses_an_unknown_scenario_before_starting_anything() {
    let mut child = Child::spawn("bench-unknown", &["bench", "--scenarios", "check chek"], &[]);
    let status = child.wait_for_exit(CLI_TIMEOUT).await;
    assert!(!status.success(), "an unknown scenario must fail the bench; {}", child.logs());
    let stderr = child.stderr();
    assert!(stderr.contains("no scenario \"chek\"") && stderr.contains("classify-cooldown-stream"), "the error names the scenarios: {stderr}");
}

/// Runs `allot bench` with `setting` set to each of `bad`: each run must fail, naming the setting
/// and its `bounds`, before any PostgreSQL is started.
async fn assert_bench_refuses(log_name: &str, setting: &str, bad: &[&str], bounds: &str) {
    for value in bad {
        let mut child = Child::spawn(log_name, &["bench", "--scenarios", "check"], &[(setting, value)]);
        let status = child.wait_for_exit(CLI_TIMEOUT).await;
        assert!(!status.success(), "{setting}={value} must fail the bench; {}", child.logs());
        let stderr = child.stderr();
        assert!(stderr.contains(setting) && stderr.contains(bounds), "the error names the setting: {stderr}");
        assert!(!stderr.contains("postgres started"), "nothing is started before the settings are checked: {stderr}");
    }
}

#[tokio::test]
async fn bench_refuses_a_connection_count_out_of_bounds_before_starting_anything() {
    assert_bench_refuses("bench-connections", "ALLOT_BENCH_CONNECTIONS", &["0", "65", "many"], "from 1 to 64").await;
}

#[tokio::test]
async fn bench_refuses_an_open_loop_share_out_of_bounds_before_starting_anything() {
    assert_bench_refuses("bench-open-loop", "ALLOT_BENCH_OPEN_LOOP_PERCENT", &["0", "101", "half"], "from 1 to 100").await;
}

#[tokio::test]
async fn bench_refuses_a_statement_count_out_of_bounds_before_starting_anything() {
    assert_bench_refuses("bench-statements", "ALLOT_BENCH_STATEMENTS", &["101", "ten", "-1"], "from 0 to 100").await;
}

/// Longest a one-second-per-row `allot bench` of every scenario may take (local stack, 10,000
/// accounts warmed up, 11 rows and 3 open-loop rows).
const BENCH_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn bench_runs_every_scenario_with_every_call_answered() {
    let mut child = Child::spawn("bench-all", &["bench", "--seconds", "1", "--clients", "3", "--baseline", "/nonexistent"], &[]);
    let status = child.wait_for_exit(BENCH_TIMEOUT).await;
    assert!(status.success(), "the bench must finish; {}", child.logs());
    let report = child.stdout();
    let scenarios = [
        "check",
        "debit-uniform",
        "debit-subsidised",
        "debit-rated",
        "debit-hot",
        "reserve-commit",
        "classify-cooldown",
        "check-stream",
        "debit-uniform-stream",
        "debit-hot-stream",
        "classify-cooldown-stream",
    ];
    for scenario in scenarios {
        // | scenario | clients | Allot ops/s | p50 | p95 | p99 | errors | …
        let row = report
            .lines()
            .find(|line| line.starts_with(&format!("| {scenario} | 3 |")))
            .unwrap_or_else(|| panic!("no row for {scenario} in:\n{report}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let ops_per_s: f64 = cells[3].parse().unwrap_or_else(|e| panic!("{row}: {e}"));
        assert!(ops_per_s > 0.0, "{scenario} answered no call: {row}");
        assert_eq!(cells[7], "0", "{scenario} had errors: {row}");
    }
    // The open-loop rows, the floor beside the unary check's among them:
    // | scenario | peak (clients) | offered | answered | p50 | p95 | p99 | errors | …
    let mut offered = Vec::new();
    for scenario in ["check", "check-stream", "classify-cooldown at check's rate (answered from memory: the floor)"] {
        let row = report
            .lines()
            .find(|line| line.starts_with(&format!("| {scenario} | ")) && line.contains("(3)"))
            .unwrap_or_else(|| panic!("no open-loop row for {scenario} in:\n{report}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let answered_per_s: f64 = cells[4].parse().unwrap_or_else(|e| panic!("{row}: {e}"));
        assert!(answered_per_s > 0.0, "{scenario} answered no call offered at a fixed rate: {row}");
        assert_eq!(cells[8], "0", "{scenario} had errors offered at a fixed rate: {row}");
        offered.push(cells[3].to_owned());
    }
    assert_eq!(offered[2], offered[0], "the floor is offered at the unary check's rate:\n{report}");
}
