//! Latency at a fixed offered rate: the `check` target's "p99 under 2 ms at half of peak load".
//!
//! The closed-loop rows send a client's next call only once its last one is answered, so the load
//! they offer follows Allot's speed and a slow answer delays the calls behind it instead of
//! showing in the figures. Here calls are issued on a schedule whatever the answers do: each
//! millisecond, as many calls as are due at `rate_per_s` since the start, each in its own task,
//! on the load generator's connections in turn. A call's latency runs from its issue to its
//! answer. Calls due in one millisecond leave together, a little burstier than evenly spaced
//! arrivals (tokio's timer ticks in milliseconds). `check-stream` offers the same calls on 64
//! long-lived `CheckStream`s in turn, many in flight on each, its answers matched to their
//! requests by sequence.
//!
//! Beside the unary `check` row, [`FLOOR`] is offered at the same rate: a call the server answers
//! from memory (a held cooldown: no PostgreSQL, and Redis about once a second), so its latency is
//! what the machine, the load generator and a gRPC call through Allot's layers cost at that rate
//! — a floor under the check's in the same run (docs/benchmarks.md, finding 64).
//!
//! The issuer stops issuing once [`IN_FLIGHT_MAX`] calls are unanswered (or a stream has as many
//! in flight as the server reads ahead) and the row says
//! `saturated`: the offered rate is then beyond what the server sustains, and issuing more would
//! measure only a queue (and grow the generator's memory without bound).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allot_proto::v1 as pb;
use pb::check_stream_response::Outcome as CheckOutcome;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{cpu, percentiles, Clients, Percentiles};

/// The share of the closed-loop peak offered by default, in per cent: the target's "half of peak
/// load". `ALLOT_BENCH_OPEN_LOOP_PERCENT` offers another share, to find where latency turns.
pub const PERCENT_OF_PEAK_DEFAULT: u32 = 50;
/// The setting that changes it.
pub const PERCENT_SETTING: &str = "ALLOT_BENCH_OPEN_LOOP_PERCENT";
/// Most unanswered calls before the run is saturated and stops issuing.
pub const IN_FLIGHT_MAX: usize = 4_096;
/// How often due calls are issued.
const TICK: Duration = Duration::from_millis(1);
/// Longest the run waits, after its last issue, for the calls still unanswered.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// Callers the issued calls are spread over for their accounts (`super::account_of`).
const CALLERS: u64 = 1_024;
/// The scenario offered at the unary check's rate as a floor under its latency.
pub const FLOOR: &str = "classify-cooldown";

/// One open-loop measurement.
#[derive(Debug, Clone)]
pub struct OpenRow {
    pub scenario: &'static str,
    /// The scenario whose closed-loop peak sets the offered rate: itself, or for [`FLOOR`] the
    /// check it is measured beside.
    pub paced_by: &'static str,
    /// That closed-loop peak, and the clients it was reached with.
    pub peak: (f64, usize),
    /// The share of the peak offered, in per cent.
    pub percent_of_peak: u32,
    pub offered_per_s: f64,
    /// Calls answered within the run's length and drain, per second of the run.
    pub answered_per_s: f64,
    pub latency: Percentiles,
    pub errors: u64,
    /// The most calls unanswered at once.
    pub in_flight_max: usize,
    /// Whether issuing stopped at [`IN_FLIGHT_MAX`] unanswered calls.
    pub saturated: bool,
    /// CPU microseconds per call, as in the closed-loop rows.
    pub cpu_us: Option<(f64, f64)>,
}

/// The share of the peak to offer, from [`PERCENT_SETTING`]'s value (absent: the default).
pub fn percent_of_peak(setting: Option<&str>) -> anyhow::Result<u32> {
    crate::env_setting::within(PERCENT_SETTING, setting, 1..=100, PERCENT_OF_PEAK_DEFAULT, "a share of the peak in per cent")
}

/// Calls due `elapsed` into a run offering `rate_per_s`.
pub fn due(elapsed: Duration, rate_per_s: f64) -> u64 {
    assert!(rate_per_s.is_finite() && rate_per_s >= 0.0, "a rate is a finite count per second: {rate_per_s}");
    (elapsed.as_secs_f64() * rate_per_s) as u64
}

/// The highest closed-loop rate of `scenario` over `rows` and its clients, if it was measured.
pub fn peak_of(rows: &[super::Row], scenario: &str) -> Option<(f64, usize)> {
    super::peak::highest(rows, scenario, |r| Some(r.ops_per_s))
}

/// What the calls of a run have come to, shared by the tasks that see them answered.
#[derive(Default)]
struct Tally {
    latencies_us: Mutex<Vec<u32>>,
    errors: AtomicU64,
    in_flight: AtomicUsize,
}

impl Tally {
    /// A call issued at `sent` was answered (`ok`: as expected).
    fn answered(&self, sent: Instant, ok: bool) {
        let latency_us = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.lock().expect("no task panics holding the latencies").push(latency_us);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Streams the streamed row spreads its calls over (as many as the 64-client closed-loop row's).
const STREAMS: usize = 64;

/// Offers `scenario` (`check`; `check-stream`: the same calls spread over [`STREAMS`]
/// long-lived streams, many in flight on each; or [`FLOOR`]) at `percent` of `paced_by`'s closed-loop
/// `peak` for `length`.
pub async fn run(
    clients: &Clients,
    scenario: &'static str,
    paced_by: &'static str,
    peak: (f64, usize),
    percent: u32,
    length: Duration,
) -> anyhow::Result<OpenRow> {
    let offered_per_s = peak.0 * f64::from(percent) / 100.0;
    let tally = Arc::new(Tally::default());
    let streams = match scenario {
        "check" | FLOOR => None,
        "check-stream" => Some(CheckStreams::open(clients, &tally).await?),
        _ => anyhow::bail!("no open-loop row for {scenario}"),
    };
    let shared = Arc::new(clients.clone());
    let mut in_flight_max = 0;
    let mut saturated = false;
    let cpu_before = cpu::Sample::now();
    let started = Instant::now();
    let mut issued = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < length && !saturated {
        tick.tick().await;
        let due = due(started.elapsed().min(length), offered_per_s);
        while issued < due {
            let unanswered = tally.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            in_flight_max = in_flight_max.max(unanswered);
            let sent = unanswered <= IN_FLIGHT_MAX
                && match &streams {
                    Some(streams) => streams.send(issued),
                    None => {
                        let (clients, tally) = (shared.clone(), tally.clone());
                        let (caller, n) = (issued % CALLERS, issued / CALLERS);
                        tokio::spawn(async move {
                            let sent = Instant::now();
                            let ok = super::operation(&clients, scenario, 0, caller as usize, n).await;
                            tally.answered(sent, ok);
                        });
                        true
                    }
                };
            if !sent {
                tally.in_flight.fetch_sub(1, Ordering::AcqRel);
                saturated = true;
                break;
            }
            issued += 1;
        }
    }
    let drain_until = Instant::now() + DRAIN_MAX;
    while tally.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(TICK).await;
    }
    drop(streams); // ends the streams; their readers stop
    let mut latencies_us = std::mem::take(&mut *tally.latencies_us.lock().expect("no task panics holding the latencies"));
    let answered = latencies_us.len() as f64;
    let cpu_us = cpu_before.zip(cpu::Sample::now()).map(|(before, after)| after.per_op_us(&before, answered));
    Ok(OpenRow {
        scenario,
        paced_by,
        peak,
        percent_of_peak: percent,
        offered_per_s,
        answered_per_s: answered / length.as_secs_f64(),
        latency: percentiles(&mut latencies_us),
        errors: tally.errors.load(Ordering::Relaxed),
        in_flight_max,
        saturated,
        cpu_us,
    })
}

/// [`STREAMS`] `CheckStream`s, each with a reader that matches answers to requests by sequence.
struct CheckStreams {
    senders: Vec<mpsc::Sender<pb::CheckStreamRequest>>,
    /// Per stream: when each unanswered request (by sequence) was sent.
    sent_at: Vec<Arc<Mutex<HashMap<u64, Instant>>>>,
}

impl CheckStreams {
    async fn open(clients: &Clients, tally: &Arc<Tally>) -> anyhow::Result<CheckStreams> {
        let (mut senders, mut sent_at) = (Vec::with_capacity(STREAMS), Vec::with_capacity(STREAMS));
        for stream in 0..STREAMS {
            // The server reads at most this many requests of a stream ahead of its answers.
            let (tx, rx) = mpsc::channel(crate::grpc::streams::IN_FLIGHT_PER_STREAM_MAX);
            let mut entitlements = clients.entitlements[stream % clients.entitlements.len()].clone();
            let mut answers = entitlements.check_stream(clients.request(ReceiverStream::new(rx))).await?.into_inner();
            let pending: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
            let (reader_pending, tally) = (pending.clone(), tally.clone());
            tokio::spawn(async move {
                while let Ok(Some(answer)) = answers.message().await {
                    let sent = reader_pending.lock().expect("no task panics holding the sequences").remove(&answer.sequence);
                    if let Some(sent) = sent {
                        tally.answered(sent, matches!(answer.outcome, Some(CheckOutcome::Check(_))));
                    }
                }
            });
            senders.push(tx);
            sent_at.push(pending);
        }
        Ok(CheckStreams { senders, sent_at })
    }

    /// Sends call `n` on its stream; false when that stream has as many in flight as it may.
    fn send(&self, n: u64) -> bool {
        let stream = usize::try_from(n % STREAMS as u64).expect("below the stream count");
        let request = pb::CheckStreamRequest { sequence: n, check: Some(super::check_request(super::account_of(stream, n))) };
        self.sent_at[stream].lock().expect("no task panics holding the sequences").insert(n, Instant::now());
        if self.senders[stream].try_send(request).is_ok() {
            return true;
        }
        self.sent_at[stream].lock().expect("no task panics holding the sequences").remove(&n);
        false
    }
}

/// The report's section for `rows` (empty when none was run).
pub fn report(rows: &[OpenRow]) -> String {
    let Some(first) = rows.first() else { return String::new() };
    let mut out = format!(
        "\nLatency at a fixed offered rate (open loop: calls issued each millisecond as they fall due, whatever the answers do), {} % of the closed-loop peak:\n\n",
        first.percent_of_peak
    );
    out.push_str("| scenario | peak ops/s (clients) | offered ops/s | answered ops/s | p50 ms | p95 ms | p99 ms | errors | most in flight | CPU µs/op: Allot+client / rest |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for row in rows {
        let floor = if row.scenario == FLOOR { " (answered from memory: the floor)" } else { "" };
        let name = match row.paced_by == row.scenario {
            true => format!("{}{floor}", row.scenario),
            false => format!("{} at {}'s rate{floor}", row.scenario, row.paced_by),
        };
        out.push_str(&format!(
            "| {} | {:.0} ({}) | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {}{} | {} |\n",
            name,
            row.peak.0,
            row.peak.1,
            row.offered_per_s,
            row.answered_per_s,
            row.latency.p50_ms,
            row.latency.p95_ms,
            row.latency.p99_ms,
            row.errors,
            row.in_flight_max,
            if row.saturated { " (saturated: issuing stopped)" } else { "" },
            row.cpu_us.map_or("–".to_owned(), |(own, rest)| format!("{own:.0} / {rest:.0}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_of_the_peak_defaults_to_half_and_takes_a_percentage() {
        assert_eq!(percent_of_peak(None).unwrap(), 50);
        assert_eq!(percent_of_peak(Some("30")).unwrap(), 30);
        assert_eq!(percent_of_peak(Some("100")).unwrap(), 100);
        for bad in ["0", "101", "half", "-5", ""] {
            let error = percent_of_peak(Some(bad)).unwrap_err().to_string();
            assert!(error.contains(PERCENT_SETTING) && error.contains("from 1 to 100"), "{bad}: {error}");
        }
    }

    #[test]
    fn calls_fall_due_at_the_offered_rate() {
        assert_eq!(due(Duration::ZERO, 20_000.0), 0);
        assert_eq!(due(Duration::from_millis(1), 20_000.0), 20);
        assert_eq!(due(Duration::from_micros(1_500), 20_000.0), 30);
        assert_eq!(due(Duration::from_secs(4), 19_067.5), 76_270);
        assert_eq!(due(Duration::from_secs(1), 0.0), 0);
    }

    #[test]
    #[should_panic(expected = "a rate is a finite count per second")]
    fn a_negative_rate_is_a_bug() {
        due(Duration::from_secs(1), -1.0);
    }

    fn row(scenario: &'static str, clients: usize, ops_per_s: f64) -> super::super::Row {
        super::super::Row { scenario, clients, ops_per_s, p50_ms: 0.0, p95_ms: 0.0, p99_ms: 0.0, errors: 0, cpu_us: None, raw_ops_per_s: None }
    }

    #[test]
    fn the_peak_is_the_scenarios_fastest_row() {
        let rows = [row("check", 16, 13_902.0), row("debit-uniform", 64, 90_000.0), row("check", 256, 38_135.0), row("check", 64, 31_974.0)];
        assert_eq!(peak_of(&rows, "check"), Some((38_135.0, 256)));
        assert_eq!(peak_of(&rows, "check-stream"), None);
    }

    #[test]
    fn the_report_names_a_saturated_run() {
        let latency = Percentiles { p50_ms: 0.8, p95_ms: 1.4, p99_ms: 1.9 };
        let open = OpenRow {
            scenario: "check",
            paced_by: "check",
            peak: (38_135.0, 256),
            percent_of_peak: 50,
            offered_per_s: 19_067.0,
            answered_per_s: 19_050.0,
            latency,
            errors: 0,
            in_flight_max: 40,
            saturated: false,
            cpu_us: Some((50.0, 20.0)),
        };
        assert_eq!(report(&[]), "", "no open-loop row, no section");
        let text = report(std::slice::from_ref(&open));
        assert!(text.contains("50 % of the closed-loop peak"), "{text}");
        assert!(text.contains("| check | 38135 (256) | 19067 | 19050 | 0.80 | 1.40 | 1.90 | 0 | 40 | 50 / 20 |"), "{text}");
        let mut streamed = open.clone();
        streamed.scenario = "check-stream";
        streamed.paced_by = "check-stream";
        streamed.saturated = true;
        let both = report(&[open, streamed]);
        assert_eq!(both.matches("closed-loop peak").count(), 1, "one heading for every row: {both}");
        assert!(both.contains("| check-stream | 38135 (256) |") && both.contains("40 (saturated: issuing stopped)"), "{both}");
    }

    #[test]
    fn the_floor_is_named_by_the_check_whose_rate_it_is_offered_at() {
        let latency = Percentiles { p50_ms: 0.3, p95_ms: 0.9, p99_ms: 1.6 };
        let floor = OpenRow {
            scenario: FLOOR,
            paced_by: "check",
            peak: (30_000.0, 256),
            percent_of_peak: 50,
            offered_per_s: 15_000.0,
            answered_per_s: 14_990.0,
            latency,
            errors: 0,
            in_flight_max: 30,
            saturated: false,
            cpu_us: None,
        };
        let text = report(&[floor]);
        assert!(
            text.contains("| classify-cooldown at check's rate (answered from memory: the floor) | 30000 (256) | 15000 | 14990 | 0.30 | 0.90 | 1.60 | 0 | 30 | – |"),
            "{text}"
        );
    }
}
