//! The stream scenarios (`check-stream`, `debit-uniform-stream`, `debit-hot-stream`,
//! `classify-cooldown-stream`): the same operations as their unary rows, each client sending them
//! one at a time on its own long-lived stream (`CheckStream`, `DebitStream`,
//! `RequestClassificationStream`), so the concurrency — requests in flight — is the client count,
//! as for the unary rows and the raw baseline.

use std::time::Instant;

use allot_proto::v1 as pb;
use pb::check_stream_response::Outcome as CheckOutcome;
use pb::debit_stream_response::Outcome as DebitOutcome;
use pb::request_classification_stream_response::Outcome as ClassificationOutcome;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{account_of, Clients};

/// Whether `scenario` is run on streams.
pub fn is_stream(scenario: &str) -> bool {
    scenario.ends_with("-stream")
}

/// One client of a stream scenario until `deadline`: latencies (µs) and error answers.
pub async fn worker(clients: &Clients, scenario: &'static str, c: usize, worker: usize, deadline: Instant) -> anyhow::Result<(Vec<u32>, u64)> {
    let channel = worker % clients.entitlements.len();
    let key = move |n: u64| format!("{scenario}-{c}-{worker}-{n}");
    match scenario {
        "check-stream" => {
            let (tx, rx) = mpsc::channel(1);
            let answers = clients.entitlements[channel].clone().check_stream(clients.request(ReceiverStream::new(rx))).await?.into_inner();
            let request = |n| pb::CheckStreamRequest { sequence: n, check: Some(super::check_request(account_of(worker, n))) };
            Ok(drive(deadline, &tx, answers, request, |a| matches!(a.outcome, Some(CheckOutcome::Check(_)))).await)
        }
        "debit-uniform-stream" | "debit-hot-stream" => {
            let (tx, rx) = mpsc::channel(1);
            let answers = clients.entitlements[channel].clone().debit_stream(clients.request(ReceiverStream::new(rx))).await?.into_inner();
            let hot = scenario == "debit-hot-stream";
            let request = |n| pb::DebitStreamRequest {
                sequence: n,
                debit: Some(pb::DebitRequest {
                    account_id: if hot { "hot".to_owned() } else { account_of(worker, n) },
                    meter: "tokens".into(),
                    amount_credits: 1,
                    idempotency_key: key(n),
                    ..Default::default()
                }),
            };
            Ok(drive(deadline, &tx, answers, request, |a| matches!(a.outcome, Some(DebitOutcome::Debit(_)))).await)
        }
        _ => {
            let (tx, rx) = mpsc::channel(1);
            let answers =
                clients.fair_use[channel].clone().request_classification_stream(clients.request(ReceiverStream::new(rx))).await?.into_inner();
            let request = |n| pb::RequestClassificationStreamRequest {
                sequence: n,
                request: Some(pb::RequestClassificationRequest { account_id: "held".into() }),
            };
            let cooldown = |a: &pb::RequestClassificationStreamResponse| matches!(&a.outcome, Some(ClassificationOutcome::Response(r)) if r.verdict == pb::ClassificationVerdict::Cooldown as i32);
            Ok(drive(deadline, &tx, answers, request, cooldown).await)
        }
    }
}

/// Sends one request, waits for its answer, and again until `deadline`.
async fn drive<Req, Resp>(
    deadline: Instant,
    requests: &mpsc::Sender<Req>,
    mut answers: tonic::Streaming<Resp>,
    request: impl Fn(u64) -> Req,
    ok: impl Fn(&Resp) -> bool,
) -> (Vec<u32>, u64) {
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    let mut n = 0;
    while Instant::now() < deadline {
        let started = Instant::now();
        if requests.send(request(n)).await.is_err() {
            errors += 1;
            break;
        }
        match answers.message().await {
            Ok(Some(answer)) if ok(&answer) => {}
            Ok(Some(_)) => errors += 1,
            _ => {
                errors += 1;
                break;
            }
        }
        latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        n += 1;
    }
    (latencies_us, errors)
}
