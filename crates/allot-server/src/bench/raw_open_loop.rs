//! The raw read at a fixed offered rate: the same run's baseline for the `check` target's "p99
//! under 2 ms at half of peak load" (docs/benchmarks.md, finding 61).
//!
//! The runner (`../shared/baseline/run`) measures its rows closed loop, as fast as they go. Here
//! the baseline's own read (`check.sql` beside the runner, the work of its `check` row) is offered
//! by `pgbench --rate` at the same share of a raw peak as an Allot open-loop row is of its own
//! peak: the raw peak of that row's scenario, as in the peak-against-peak table, with as many
//! clients as it was reached with but at most [`CLIENTS_MAX`], against the bench's PostgreSQL
//! while the server idles.
//!
//! The two sides are offered differently, and the report says so. pgbench schedules
//! transactions as a Poisson process (burstier than the open-loop rows' calls, issued each
//! millisecond) and runs at most one per client at a time: a transaction scheduled while its
//! client is busy waits, and its latency counts from when it was scheduled. Allot's rows have no
//! such limit (up to 4,096 calls in flight). So the row also gives the raw p99 of the
//! transactions' own time, their schedule lag left out: the raw side's tail without its clients'
//! queueing, a lower bound.
//!
//! The first second of the log is left out: the first transactions start up to tens of
//! milliseconds late (most likely on fresh backends: statements still to be prepared, caches
//! cold), while Allot's connections are warm by the time its open-loop rows run. pgbench stops
//! at its deadline without waiting for transactions still queued, which are not logged.

use std::path::Path;
use std::time::Duration;

use super::{percentiles, Percentiles};
use crate::localstack::LocalPostgres;

/// Accounts the read spreads over, as the runner's `check` row.
const ACCOUNTS: u32 = 10_000;
/// Run before the measured part starts, and left out of the figures.
const WARM_UP: Duration = Duration::from_secs(1);
/// pgbench's worker threads, as the runner's.
const THREADS: usize = 2;
/// Most pgbench clients: more backends only lengthen the raw tail on two cores (finding 61's
/// table: 16 had the shortest at 20,000 and 25,000 reads/s), so the raw side is given its best.
const CLIENTS_MAX: usize = 16;

/// The raw read offered at a fixed rate.
#[derive(Debug, Clone)]
pub struct RawOpenRow {
    /// The Allot open-loop row it is the baseline of.
    pub beside: &'static str,
    /// The raw closed-loop peak it is a share of, and its clients.
    pub peak: (f64, usize),
    /// pgbench's clients: the peak's, at most [`CLIENTS_MAX`].
    pub clients: usize,
    pub percent_of_peak: u32,
    pub offered_per_s: f64,
    /// Transactions scheduled after the warm-up, per second from the warm-up's end to the last
    /// transaction's end: below the offered rate when pgbench falls behind its schedule.
    pub answered_per_s: f64,
    /// From each transaction's scheduled start (its schedule lag included).
    pub latency: Percentiles,
    /// The transactions' own time, their schedule lag left out.
    pub service_p99_ms: f64,
    /// Transactions pgbench logged as failed or skipped (after the warm-up).
    pub errors: u64,
}

/// The highest raw rate beside `scenario`'s rows (its raw peak in the peak-against-peak table),
/// and its clients.
pub fn raw_peak_of(rows: &[super::Row], scenario: &str) -> Option<(f64, usize)> {
    super::peak::highest(rows, scenario, |r| r.raw_ops_per_s)
}

/// The open-loop rows that get a raw row beside them: those offered at their own scenario's peak
/// (the check rows), not the floor, which is offered at the unary check's rate and has no raw
/// read of its own.
pub fn paced_by_own_peak(open: &[super::open_loop::OpenRow]) -> impl Iterator<Item = &super::open_loop::OpenRow> {
    open.iter().filter(|row| row.paced_by == row.scenario)
}

/// Offers `runner`'s `check.sql` at `percent` of `peak` for `length` (after [`WARM_UP`]) with
/// pgbench against `postgres`, as the baseline of Allot's open-loop row `beside`. The runner's
/// rows have created the baseline's schema already.
pub async fn run(
    runner: &Path,
    postgres: &LocalPostgres,
    beside: &'static str,
    peak: (f64, usize),
    percent: u32,
    length: Duration,
) -> anyhow::Result<RawOpenRow> {
    // Absolute: pgbench runs in the directory its logs go to.
    let script = runner.parent().map(|dir| dir.join("check.sql")).filter(|s| s.exists());
    let script = script.ok_or_else(|| anyhow::anyhow!("no check.sql beside {}", runner.display()))?.canonicalize()?;
    let offered_per_s = peak.0 * f64::from(percent) / 100.0;
    let clients = peak.1.min(CLIENTS_MAX);
    let logs = tempfile::Builder::new().prefix("allot-bench-raw-").tempdir()?;
    let output = tokio::process::Command::new(postgres.bin_dir().join("pgbench"))
        .current_dir(logs.path())
        .args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", &THREADS.to_string()])
        .args(["-T", &(WARM_UP + length).as_secs().to_string(), "-R", &format!("{offered_per_s:.0}")])
        .args(["-D", &format!("naccounts={ACCOUNTS}"), "-f"])
        .arg(&script)
        .args(["--log", "--log-prefix=tx", &postgres.dsn("allot")])
        .output()
        .await?;
    if !output.status.success() {
        anyhow::bail!("pgbench --rate failed: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    }
    let mut log = String::new();
    for entry in std::fs::read_dir(logs.path())? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("tx.")) {
            log.push_str(&std::fs::read_to_string(path)?);
        }
    }
    let mut measured = after_warm_up(&log);
    let span_s = measured.span_us as f64 / 1e6;
    Ok(RawOpenRow {
        beside,
        peak,
        clients,
        percent_of_peak: percent,
        offered_per_s,
        answered_per_s: if span_s > 0.0 { measured.latencies_us.len() as f64 / span_s } else { 0.0 },
        latency: percentiles(&mut measured.latencies_us),
        service_p99_ms: percentiles(&mut measured.service_us).p99_ms,
        errors: measured.errors,
    })
}

/// What a pgbench log holds past its warm-up.
#[derive(Debug, PartialEq)]
struct Measured {
    /// Per transaction, from its scheduled start.
    latencies_us: Vec<u32>,
    /// Per transaction, its own time (the latency less its schedule lag).
    service_us: Vec<u32>,
    /// From the warm-up's end to the last transaction's end.
    span_us: i64,
    /// Transactions logged as failed or skipped.
    errors: u64,
}

/// The transactions in pgbench's per-transaction `log` (lines `client_id transaction_no time
/// script_no time_epoch time_us schedule_lag`, with `--rate`: `time` in microseconds from the
/// scheduled start, or `failed` / `skipped`; `time_epoch time_us` when it ended; `schedule_lag`
/// the wait before it started) scheduled at least [`WARM_UP`] after the first. Lines of another
/// shape are left out.
fn after_warm_up(log: &str) -> Measured {
    let mut transactions: Vec<Logged> = Vec::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [_, _, time, _, epoch_s, epoch_us, lag, ..] = fields[..] else { continue };
        let (Ok(epoch_s), Ok(epoch_us), Ok(lag_us)) = (epoch_s.parse::<i64>(), epoch_us.parse::<i64>(), lag.parse::<u32>()) else { continue };
        let ended_us = epoch_s * 1_000_000 + epoch_us;
        match (time, time.parse::<u32>()) {
            (_, Ok(latency_us)) => {
                transactions.push(Logged { scheduled_us: ended_us - i64::from(latency_us), ended_us, done: Some((latency_us, lag_us)) })
            }
            // It has no latency: counted from its end, near enough for the cut.
            ("failed" | "skipped", _) => transactions.push(Logged { scheduled_us: ended_us, ended_us, done: None }),
            _ => {}
        }
    }
    let Some(first_us) = transactions.iter().map(|t| t.scheduled_us).min() else {
        return Measured { latencies_us: Vec::new(), service_us: Vec::new(), span_us: 0, errors: 0 };
    };
    let from_us = first_us + i64::try_from(WARM_UP.as_micros()).expect("a second fits");
    transactions.retain(|t| t.scheduled_us >= from_us);
    let last_end_us = transactions.iter().map(|t| t.ended_us).max().unwrap_or(from_us);
    let done: Vec<(u32, u32)> = transactions.iter().filter_map(|t| t.done).collect();
    Measured {
        latencies_us: done.iter().map(|(latency_us, _)| *latency_us).collect(),
        service_us: done.iter().map(|(latency_us, lag_us)| latency_us.saturating_sub(*lag_us)).collect(),
        span_us: last_end_us - from_us,
        errors: (transactions.len() - done.len()) as u64,
    }
}

/// One transaction of a pgbench log, in microseconds.
struct Logged {
    scheduled_us: i64,
    ended_us: i64,
    /// Its latency from the scheduled start and its schedule lag; `None` if it failed or was
    /// skipped.
    done: Option<(u32, u32)>,
}

/// The report's lines for the raw rows beside Allot's open-loop `rows`: one table row each (to
/// follow the open-loop table's), then the p99 ratios.
pub fn report(raw: &[RawOpenRow], rows: &[super::open_loop::OpenRow]) -> String {
    let mut out = String::new();
    for row in raw {
        out.push_str(&format!(
            "| raw check beside {} (`pgbench --rate`, `check.sql`) | {:.0} ({}) | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | ≤ {} (its clients) | – |\n",
            row.beside,
            row.peak.0,
            row.peak.1,
            row.offered_per_s,
            row.answered_per_s,
            row.latency.p50_ms,
            row.latency.p95_ms,
            row.latency.p99_ms,
            row.errors,
            row.clients,
        ));
    }
    let ratios: Vec<String> = raw
        .iter()
        .filter_map(|r| {
            let allot = paced_by_own_peak(rows).find(|a| a.scenario == r.beside)?;
            (r.service_p99_ms > 0.0).then(|| {
                format!(
                    "`{}` {:.2} ({:.2} against the raw p99 without pgbench's schedule lag, {:.2} ms)",
                    r.beside,
                    allot.latency.p99_ms / r.latency.p99_ms,
                    allot.latency.p99_ms / r.service_p99_ms,
                    r.service_p99_ms
                )
            })
        })
        .collect();
    if !ratios.is_empty() {
        out.push_str(&format!(
            "\np99 at {} % of each one's own peak, Allot / raw (lower is better): {}. pgbench schedules its transactions as a Poisson process and runs one per client at a time; its latency counts from the scheduled start.\n",
            raw[0].percent_of_peak,
            ratios.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &'static str, clients: usize, raw: Option<f64>) -> super::super::Row {
        super::super::Row { scenario, clients, ops_per_s: 1.0, p50_ms: 0.0, p95_ms: 0.0, p99_ms: 0.0, errors: 0, cpu_us: None, raw_ops_per_s: raw }
    }

    #[test]
    fn a_scenarios_raw_peak_is_the_highest_raw_read_beside_its_own_rows() {
        let rows = [
            row("check", 16, Some(41_000.0)),
            row("debit-uniform", 64, Some(90_000.0)),
            row("check-stream", 16, Some(50_000.0)),
            row("check", 64, Some(44_000.0)),
            row("check", 1_000, None),
        ];
        assert_eq!(raw_peak_of(&rows, "check"), Some((44_000.0, 64)));
        assert_eq!(raw_peak_of(&rows, "check-stream"), Some((50_000.0, 16)));
        assert_eq!(raw_peak_of(&rows[1..2], "check"), None, "no check row, no raw read");
        assert_eq!(raw_peak_of(&[row("check", 16, None)], "check"), None, "a run without the baseline");
    }

    #[test]
    fn the_first_second_is_left_out_and_the_schedule_lag_is_taken_off_the_service_time() {
        // Scheduled at 10.0 s (started 29 ms late), 10.5 s, 11.05 s and 11.2 s (20 and 30 µs
        // late, the last ending at 11.2009 s); a failure at 11.1 s; a line of another shape and
        // one pgbench did not finish writing.
        let log = "0 1 30000 0 10 30000 29000\n\
                   1 1 500 0 10 500500 10\n\
                   0 2 700 0 11 50700 20\n\
                   1 2 900 0 11 200900 30\n\
                   0 3 failed 0 11 100000 0\n\
                   0 4 unknown 0 11 100000 0\n\
                   1 3 80";
        let measured = after_warm_up(log);
        let expected = Measured { latencies_us: vec![700, 900], service_us: vec![680, 870], span_us: 200_900, errors: 1 };
        assert_eq!(measured, expected, "the span runs from the cut (11.0 s) to the last end");
        assert_eq!(after_warm_up(""), Measured { latencies_us: Vec::new(), service_us: Vec::new(), span_us: 0, errors: 0 });
    }

    /// A real pgbench against a real PostgreSQL: its log, as this version writes it, is parsed
    /// into latencies, and the first second is left out.
    #[tokio::test]
    async fn pgbench_offers_the_script_beside_the_runner_at_the_share_of_the_peak_asked_for() {
        let root = tempfile::tempdir().expect("tempdir");
        let stack = root.path().join("stack");
        std::fs::create_dir(&stack).expect("stack dir");
        let mut postgres = tokio::task::spawn_blocking(move || LocalPostgres::start(&stack)).await.expect("join").expect("start postgres");
        crate::dev::create_database(&postgres.dsn("postgres"), "allot").await.expect("create database");
        let baseline = root.path().join("baseline");
        std::fs::create_dir(&baseline).expect("baseline dir");
        std::fs::write(baseline.join("check.sql"), "\\set aid random(1, :naccounts)\nSELECT :aid;\n").expect("script");
        let runner = baseline.join("run");
        std::fs::write(&runner, "").expect("runner");
        // Half of 600/s with 2 clients: 300/s, for two seconds after the warm-up.
        let measured = run(&runner, &postgres, "check", (600.0, 2), 50, Duration::from_secs(2)).await;
        postgres.stop();
        let row = measured.expect("pgbench runs");
        assert_eq!((row.beside, row.clients, row.offered_per_s, row.errors), ("check", 2, 300.0, 0), "{row:?}");
        assert!((200.0..=400.0).contains(&row.answered_per_s), "about 300 a second past the warm-up: {row:?}");
        let Percentiles { p50_ms, p99_ms, .. } = row.latency;
        assert!(p50_ms > 0.0 && p50_ms <= p99_ms && p99_ms < 1_000.0, "{row:?}");
        assert!(row.service_p99_ms > 0.0 && row.service_p99_ms <= p99_ms, "the lag is taken off: {row:?}");
        let missing = run(&root.path().join("run"), &postgres, "check", (600.0, 2), 50, Duration::from_secs(1)).await.unwrap_err();
        assert!(missing.to_string().contains("no check.sql beside"), "{missing}");
    }

    fn open_row(scenario: &'static str, p99_ms: f64) -> super::super::open_loop::OpenRow {
        super::super::open_loop::OpenRow {
            scenario,
            paced_by: scenario,
            peak: (30_000.0, 256),
            percent_of_peak: 50,
            offered_per_s: 15_000.0,
            answered_per_s: 15_000.0,
            latency: Percentiles { p50_ms: 1.0, p95_ms: 2.0, p99_ms },
            errors: 0,
            in_flight_max: 100,
            saturated: false,
            cpu_us: None,
        }
    }

    #[test]
    fn the_report_puts_the_raw_rows_in_the_open_loop_table_with_the_ratios() {
        let raw = RawOpenRow {
            beside: "check",
            peak: (44_000.0, 64),
            clients: 16,
            percent_of_peak: 50,
            offered_per_s: 22_000.0,
            answered_per_s: 21_990.0,
            latency: Percentiles { p50_ms: 0.4, p95_ms: 1.1, p99_ms: 2.5 },
            service_p99_ms: 0.5,
            errors: 0,
        };
        let text = report(std::slice::from_ref(&raw), &[open_row("check", 10.0), open_row("check-stream", 5.0)]);
        assert!(
            text.starts_with("| raw check beside check (`pgbench --rate`, `check.sql`) | 44000 (64) | 22000 | 21990 | 0.40 | 1.10 | 2.50 | 0 | ≤ 16 (its clients) | – |\n"),
            "{text}"
        );
        assert!(
            text.contains("Allot / raw (lower is better): `check` 4.00 (20.00 against the raw p99 without pgbench's schedule lag, 0.50 ms)."),
            "{text}"
        );
        assert!(!text.contains("`check-stream`"), "no raw row beside it, no ratio: {text}");
        assert!(!report(std::slice::from_ref(&raw), &[]).contains("Allot / raw"), "no Allot row, no ratio");
        assert_eq!(report(&[], &[open_row("check", 10.0)]), "", "no raw row, nothing");
    }

    #[test]
    fn the_floor_gets_no_raw_row() {
        let mut floor = open_row(super::super::open_loop::FLOOR, 3.0);
        floor.paced_by = "check";
        let open = [open_row("check", 10.0), floor, open_row("check-stream", 5.0)];
        let beside: Vec<&str> = paced_by_own_peak(&open).map(|row| row.scenario).collect();
        assert_eq!(beside, ["check", "check-stream"]);
    }
}
