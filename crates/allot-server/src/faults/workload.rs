//! A mixed workload: `clients` concurrent tasks, each acting for one of `accounts` accounts on one
//! meter, choosing at random (seeded) among debit (gate or record), reserve, commit or release of
//! a hold it holds, and refund of part of a charge it made. Every operation is retried while its
//! outcome is unknown, with the same idempotency key (or the same hold and actual amount), up to
//! `attempts_max` times; some acknowledged debits are sent once more to check that the replay
//! repeats the answer. Every attempt is recorded in a [`History`].
//!
//! The workload decides nothing about correctness; [`super::history::check`] does, afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use allot_proto::v1::entitlements_client::EntitlementsClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::history::{Attempt, AttemptRecord, History, Kind, Operation};

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    pub fn new(api_key: &str) -> Bearer {
        Bearer(format!("Bearer {api_key}").parse().expect("an API key is ASCII"))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Client = EntitlementsClient<InterceptedService<Channel, Bearer>>;

/// An Entitlements client on `channel` with `api_key`.
pub fn client(channel: Channel, api_key: &str) -> Client {
    EntitlementsClient::with_interceptor(channel, Bearer::new(api_key))
}

/// A channel to `addr` that connects when first used and reconnects after the server restarts.
pub fn lazy_channel(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_timeout(Duration::from_secs(1)).connect_lazy()
}

/// The free default plan the workload expects: `meter` with `allowance_credits` a period and
/// debt down to `-debt_limit_credits`.
pub fn plan_request(meter: &str, allowance_credits: i64, debt_limit_credits: i64) -> pb::UpsertPlanRequest {
    pb::UpsertPlanRequest {
        plan: Some(pb::Plan {
            plan_id: "free".into(),
            tier: "free".into(),
            name: "Free".into(),
            meters: vec![pb::MeterAllowance {
                meter: meter.into(),
                allowance_credits: Some(allowance_credits),
                debt_limit_credits,
                ..Default::default()
            }],
            is_free_default: true,
            ..Default::default()
        }),
    }
}

/// How the workload runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub accounts: usize,
    pub clients: usize,
    pub meter: String,
    /// Amounts are drawn from 1..=this.
    pub amount_max_credits: i64,
    /// Each attempt's gRPC deadline.
    pub attempt_timeout: Duration,
    /// Attempts per operation before its outcome stays unknown.
    pub attempts_max: u32,
    /// Pause between attempts.
    pub retry_pause: Duration,
    pub hold_ttl_ms: i64,
    /// Operations per client; `None` runs until stopped.
    pub operations_per_client: Option<usize>,
    /// Percent of acknowledged debits sent again to check their replay.
    pub replay_percent: u32,
    /// Keys start with this (unique per run on a database).
    pub prefix: String,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            accounts: 4,
            clients: 16,
            meter: "tokens".into(),
            amount_max_credits: 200,
            attempt_timeout: Duration::from_secs(5),
            attempts_max: 100,
            retry_pause: Duration::from_millis(100),
            hold_ttl_ms: 3_600_000,
            operations_per_client: Some(40),
            replay_percent: 10,
            prefix: "w".into(),
            seed: 1,
        }
    }
}

/// Tells running clients to finish the operation in hand and stop.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs the workload against `client` until every client has done its operations or `stop`
/// is set; returns when all clients have finished (retries included).
pub async fn run(client: Client, options: Options, history: History, stop: Stop) {
    let mut tasks = Vec::with_capacity(options.clients);
    for index in 0..options.clients {
        let worker = Worker {
            client: client.clone(),
            rng: StdRng::seed_from_u64(options.seed.wrapping_mul(1_000_003).wrapping_add(index as u64)),
            account: format!("{}-acct-{}", options.prefix, index % options.accounts.max(1)),
            index,
            options: options.clone(),
            history: history.clone(),
            charges: Vec::new(),
            holds: Vec::new(),
            serial: 0,
        };
        let stop = stop.clone();
        tasks.push(tokio::spawn(worker.run(stop)));
    }
    for task in tasks {
        task.await.expect("workload client panicked");
    }
}

/// One client's state: what it may settle or refund.
struct Worker {
    client: Client,
    rng: StdRng,
    account: String,
    index: usize,
    options: Options,
    history: History,
    /// Acknowledged charges: entry id, amount, refunded so far (as acknowledged).
    charges: Vec<(String, i64, i64)>,
    /// Acknowledged holds: id, amount.
    holds: Vec<(String, i64)>,
    serial: usize,
}

/// The request of one operation, kept for its retries.
#[derive(Debug, Clone)]
pub enum Call {
    Debit(pb::DebitRequest),
    Reserve(pb::ReserveRequest),
    Commit(pb::CommitRequest),
    Release(pb::ReleaseRequest),
    Refund(pb::RefundRequest),
}

impl Worker {
    async fn run(mut self, stop: Stop) {
        let mut done = 0;
        while !stop.is_stopped() && self.options.operations_per_client.is_none_or(|n| done < n) {
            self.one().await;
            done += 1;
        }
    }

    fn key(&mut self) -> String {
        self.serial += 1;
        format!("{}-c{}-{}", self.options.prefix, self.index, self.serial)
    }

    fn amount(&mut self) -> i64 {
        self.rng.random_range(1..=self.options.amount_max_credits.max(1))
    }

    /// Chooses, runs and records one operation.
    async fn one(&mut self) {
        let roll = self.rng.random_range(0..100);
        let meter = self.options.meter.clone();
        let account = self.account.clone();
        let (kind, call, amount, hold_id, refunds) = if !self.holds.is_empty() && roll < 25 {
            let (hold_id, held) = self.holds.swap_remove(self.rng.random_range(0..self.holds.len()));
            if self.rng.random_bool(0.7) {
                let actual = self.rng.random_range(1..=held + held / 5 + 1);
                let call = Call::Commit(pb::CommitRequest { hold_id: hold_id.clone(), actual_credits: actual, ..Default::default() });
                (Kind::Commit, call, actual, Some(hold_id), None)
            } else {
                (Kind::Release, Call::Release(pb::ReleaseRequest { hold_id: hold_id.clone() }), held, Some(hold_id), None)
            }
        } else if roll < 40 && self.charges.iter().any(|(_, amount, refunded)| refunded < amount) {
            let open: Vec<usize> = (0..self.charges.len()).filter(|i| self.charges[*i].2 < self.charges[*i].1).collect();
            let i = open[self.rng.random_range(0..open.len())];
            let (entry, charged, refunded) = self.charges[i].clone();
            let amount = self.rng.random_range(1..=charged - refunded);
            let key = self.key();
            let call = Call::Refund(pb::RefundRequest { entry_id: entry.clone(), amount_credits: amount, idempotency_key: key });
            (Kind::Refund, call, amount, None, Some(entry))
        } else if roll < 60 {
            let amount = self.amount();
            let key = self.key();
            let call = Call::Reserve(pb::ReserveRequest {
                account_id: account.clone(),
                meter,
                amount_credits: amount,
                ttl_ms: self.options.hold_ttl_ms,
                idempotency_key: key,
                ..Default::default()
            });
            (Kind::Reserve, call, amount, None, None)
        } else {
            let amount = self.amount();
            let key = self.key();
            let mode = if self.rng.random_bool(0.2) { pb::DebitMode::Record } else { pb::DebitMode::Gate };
            let call = Call::Debit(pb::DebitRequest {
                account_id: account.clone(),
                meter,
                amount_credits: amount,
                idempotency_key: key,
                mode: mode as i32,
                ..Default::default()
            });
            (Kind::Debit, call, amount, None, None)
        };
        let key = match &call {
            Call::Debit(r) => Some(r.idempotency_key.clone()),
            Call::Reserve(r) => Some(r.idempotency_key.clone()),
            Call::Refund(r) => Some(r.idempotency_key.clone()),
            Call::Commit(_) | Call::Release(_) => None,
        };
        let mut op = Operation { kind, account, key, hold_id, refunds, amount_credits: amount, attempts: Vec::new() };
        for _ in 0..self.options.attempts_max.max(1) {
            let attempt = send(&mut self.client, &call, self.options.attempt_timeout, &self.history).await;
            let definite = !matches!(attempt.attempt, Attempt::Unknown { .. });
            op.attempts.push(attempt);
            if definite {
                break;
            }
            tokio::time::sleep(self.options.retry_pause).await;
        }
        // Some acknowledged debits once more: the replay must repeat the answer exactly.
        if kind == Kind::Debit
            && matches!(op.attempts.last().map(|a| &a.attempt), Some(Attempt::Ok { .. }))
            && self.rng.random_range(0..100) < self.options.replay_percent
        {
            let replay = send(&mut self.client, &call, self.options.attempt_timeout, &self.history).await;
            if !matches!(replay.attempt, Attempt::Unknown { .. }) {
                op.attempts.push(replay);
            }
        }
        if let Some(Attempt::Ok { id }) = op.attempts.iter().map(|a| &a.attempt).find(|a| !matches!(a, Attempt::Unknown { .. })) {
            match (kind, id) {
                (Kind::Debit | Kind::Commit, Some(entry)) => self.charges.push((entry.clone(), amount, 0)),
                (Kind::Reserve, Some(hold)) => self.holds.push((hold.clone(), amount)),
                (Kind::Refund, _) => {
                    if let Some(charge) = self.charges.iter_mut().find(|c| Some(&c.0) == op.refunds.as_ref()) {
                        charge.2 += amount;
                    }
                }
                _ => {}
            }
        }
        self.history.record(op);
    }
}

/// Sends `call` once with `timeout` as its deadline; how it ended. A server-side INTERNAL is also
/// recorded in `history` as an anomaly.
pub async fn send(client: &mut Client, call: &Call, timeout: Duration, history: &History) -> AttemptRecord {
    let started = Instant::now();
    let allowed = pb::Decision::Allowed as i32;
    let failed = |status: &Status| {
        let reason = error_reason(status);
        if status.code() == Code::Internal && reason == "INTERNAL" {
            history.anomaly(format!("server answered INTERNAL: {}", status.message()));
        }
        classify(status.code(), reason)
    };
    let attempt = match call.clone() {
        Call::Debit(r) => match client.debit(deadline(r, timeout)).await {
            Ok(r) if r.get_ref().decision == allowed => Attempt::Ok { id: Some(r.into_inner().entry_id) },
            Ok(r) => Attempt::Denied { reason: r.get_ref().reason },
            Err(status) => failed(&status),
        },
        Call::Reserve(r) => match client.reserve(deadline(r, timeout)).await {
            Ok(r) if r.get_ref().decision == allowed => Attempt::Ok { id: Some(r.into_inner().hold_id) },
            Ok(r) => Attempt::Denied { reason: r.get_ref().reason },
            Err(status) => failed(&status),
        },
        Call::Commit(r) => match client.commit(deadline(r, timeout)).await {
            Ok(r) if r.get_ref().decision == allowed => Attempt::Ok { id: Some(r.into_inner().entry_id) },
            Ok(r) => Attempt::Denied { reason: r.get_ref().reason },
            Err(status) => failed(&status),
        },
        Call::Release(r) => match client.release(deadline(r, timeout)).await {
            Ok(r) if r.get_ref().status == pb::HoldStatus::Released as i32 => Attempt::Ok { id: None },
            Ok(r) => Attempt::Denied { reason: r.get_ref().status },
            Err(status) => failed(&status),
        },
        Call::Refund(r) => match client.refund(deadline(r, timeout)).await {
            Ok(r) => Attempt::Ok { id: Some(r.into_inner().entry_id) },
            Err(status) => failed(&status),
        },
    };
    AttemptRecord { attempt, elapsed: started.elapsed() }
}

fn deadline<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The `ErrorInfo.reason` of a status from Allot (empty for transport errors).
pub fn error_reason(status: &Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

/// Definite refusals change nothing; everything else may or may not have happened.
pub fn classify(code: Code, reason: String) -> Attempt {
    match code {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange
        | Code::Unimplemented => Attempt::Refused { code, reason },
        _ => Attempt::Unknown { code, reason },
    }
}
