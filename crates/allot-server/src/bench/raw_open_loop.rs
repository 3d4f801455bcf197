//! The raw read at a fixed offered rate: the same run's baseline for the `check` target's "p99
//! under 2 ms at half of peak load" (docs/benchmarks.md, finding 61).
//!
//! The runner (`../shared/baseline/run`) measures its rows closed loop, as fast as they go. Here
//! the baseline's own read (`check.sql` beside the runner, the work of its `check` row) is offered
//! by `pgbench --rate` at the same share of the raw peak as Allot's open-loop rows are of theirs,
//! with as many clients as the raw peak was reached with, against the bench's PostgreSQL. pgbench
//! measures a transaction's latency from when it was scheduled (its schedule lag included), as
//! the open-loop rows measure a call's from its issue. The first second of the log is left out:
//! pgbench opens its connections on the clock, and the transactions scheduled meanwhile start
//! late (tens of milliseconds at 64 clients here), a start-up cost Allot's rows do not have
//! (their connections are open before the first call).

use std::path::Path;
use std::time::Duration;

use super::{percentiles, Percentiles};
use crate::localstack::LocalPostgres;

/// Accounts the read spreads over, as the runner's `check` row.
const ACCOUNTS: u32 = 10_000;
/// Run before the measured part starts: connection set-up, left out of the figures.
const WARM_UP: Duration = Duration::from_secs(1);
/// pgbench's worker threads, as the runner's.
const THREADS: usize = 2;

/// The raw read offered at a fixed rate.
#[derive(Debug, Clone)]
pub struct RawOpenRow {
    /// The raw closed-loop peak it is a share of, and its clients (also this run's).
    pub peak: (f64, usize),
    pub percent_of_peak: u32,
    pub offered_per_s: f64,
    /// Transactions that finished after the warm-up, per second of the measured part.
    pub answered_per_s: f64,
    pub latency: Percentiles,
    /// Transactions pgbench logged as failed or skipped.
    pub errors: u64,
}

/// The highest raw rate beside a row of `check` or `check-stream` (both compared with the runner's
/// `check` row), and its clients.
pub fn raw_check_peak(rows: &[super::Row]) -> Option<(f64, usize)> {
    rows.iter()
        .filter(|r| r.scenario == "check" || r.scenario == "check-stream")
        .filter_map(|r| r.raw_ops_per_s.map(|raw| (raw, r.clients)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// Offers `runner`'s `check.sql` at `percent` of `peak` for `length` (after [`WARM_UP`]) with
/// pgbench against `postgres`. The runner's rows have created the baseline's schema already.
pub async fn run(runner: &Path, postgres: &LocalPostgres, peak: (f64, usize), percent: u32, length: Duration) -> anyhow::Result<RawOpenRow> {
    // Absolute: pgbench runs in the directory its logs go to.
    let script = runner.parent().map(|dir| dir.join("check.sql")).filter(|s| s.exists());
    let script = script.ok_or_else(|| anyhow::anyhow!("no check.sql beside {}", runner.display()))?.canonicalize()?;
    let offered_per_s = peak.0 * f64::from(percent) / 100.0;
    let logs = tempfile::Builder::new().prefix("allot-bench-raw-").tempdir()?;
    let output = tokio::process::Command::new(postgres.bin_dir().join("pgbench"))
        .current_dir(logs.path())
        .args(["-n", "-M", "prepared", "-c", &peak.1.to_string(), "-j", &THREADS.to_string()])
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
    Ok(RawOpenRow {
        peak,
        percent_of_peak: percent,
        offered_per_s,
        answered_per_s: measured.latencies_us.len() as f64 / length.as_secs_f64(),
        latency: percentiles(&mut measured.latencies_us),
        errors: measured.errors,
    })
}

/// What a pgbench log holds past its warm-up.
#[derive(Debug, PartialEq)]
struct Measured {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// The latencies of the transactions in pgbench's per-transaction `log` (lines `client_id
/// transaction_no time script_no time_epoch time_us [schedule_lag]`, `time` in microseconds from
/// the scheduled start, `failed` or `skipped` for a transaction that did not complete) scheduled
/// at least [`WARM_UP`] after the first, and how many of those did not complete.
fn after_warm_up(log: &str) -> Measured {
    let mut transactions: Vec<(i64, Option<u32>)> = Vec::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let [_, _, time, _, epoch_s, epoch_us, ..] = fields[..] else { continue };
        let (Ok(epoch_s), Ok(epoch_us)) = (epoch_s.parse::<i64>(), epoch_us.parse::<i64>()) else { continue };
        let ended_us = epoch_s * 1_000_000 + epoch_us;
        let latency_us = time.parse::<u32>().ok();
        // Without a latency (failed, skipped) it counts from its end: near enough for the cut.
        transactions.push((ended_us - i64::from(latency_us.unwrap_or(0)), latency_us));
    }
    let Some(first_us) = transactions.iter().map(|(scheduled_us, _)| *scheduled_us).min() else {
        return Measured { latencies_us: Vec::new(), errors: 0 };
    };
    let from_us = first_us + i64::try_from(WARM_UP.as_micros()).expect("a second fits");
    let kept = transactions.into_iter().filter(|(scheduled_us, _)| *scheduled_us >= from_us);
    let (done, failed): (Vec<_>, Vec<_>) = kept.partition(|(_, latency)| latency.is_some());
    Measured { latencies_us: done.into_iter().filter_map(|(_, latency)| latency).collect(), errors: failed.len() as u64 }
}

/// The report's lines for `row` beside Allot's open-loop p99s (`(scenario, p99_ms)`).
pub fn report(row: &RawOpenRow, allot_p99_ms: &[(&str, f64)]) -> String {
    let mut out = format!(
        "| raw check (`pgbench --rate`, `check.sql`) | {:.0} ({}) | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | – | – |\n",
        row.peak.0, row.peak.1, row.offered_per_s, row.answered_per_s, row.latency.p50_ms, row.latency.p95_ms, row.latency.p99_ms, row.errors,
    );
    if row.latency.p99_ms > 0.0 && !allot_p99_ms.is_empty() {
        let ratios: Vec<String> = allot_p99_ms.iter().map(|(scenario, p99_ms)| format!("`{scenario}` {:.2}", p99_ms / row.latency.p99_ms)).collect();
        out.push_str(&format!("\np99 at {} % of each one's own peak, Allot / raw (lower is better): {}.\n", row.percent_of_peak, ratios.join(", ")));
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
    fn the_raw_peak_is_the_highest_raw_read_beside_either_check_row() {
        let rows = [
            row("check", 16, Some(41_000.0)),
            row("debit-uniform", 64, Some(90_000.0)),
            row("check-stream", 64, Some(44_000.0)),
            row("check", 1_000, None),
        ];
        assert_eq!(raw_check_peak(&rows), Some((44_000.0, 64)));
        assert_eq!(raw_check_peak(&rows[1..2]), None, "no check row, no raw read");
        assert_eq!(raw_check_peak(&[row("check", 16, None)]), None, "a run without the baseline");
    }

    #[test]
    fn the_first_second_is_left_out_and_failures_are_counted() {
        // Scheduled at 10.0 s (late by 30 ms: connections opening), 10.5 s, 11.0 s, 11.2 s; one
        // failure at 11.5 s; a line pgbench did not finish writing.
        let log = "0 1 30000 0 10 30000 29000\n\
                   1 1 500 0 10 500500 10\n\
                   0 2 700 0 11 700 20\n\
                   1 2 900 0 11 200900 30\n\
                   0 3 failed 0 11 500000 0\n\
                   1 3 80";
        let measured = after_warm_up(log);
        assert_eq!(measured, Measured { latencies_us: vec![700, 900], errors: 1 });
        assert_eq!(after_warm_up(""), Measured { latencies_us: Vec::new(), errors: 0 });
    }

    #[test]
    fn the_report_puts_the_raw_row_in_the_open_loop_table_with_the_ratios() {
        let raw = RawOpenRow {
            peak: (44_000.0, 64),
            percent_of_peak: 50,
            offered_per_s: 22_000.0,
            answered_per_s: 21_990.0,
            latency: Percentiles { p50_ms: 0.4, p95_ms: 1.1, p99_ms: 2.5 },
            errors: 0,
        };
        let text = report(&raw, &[("check", 10.0), ("check-stream", 5.0)]);
        assert!(
            text.starts_with("| raw check (`pgbench --rate`, `check.sql`) | 44000 (64) | 22000 | 21990 | 0.40 | 1.10 | 2.50 | 0 | – | – |\n"),
            "{text}"
        );
        assert!(text.contains("p99 at 50 % of each one's own peak, Allot / raw (lower is better): `check` 4.00, `check-stream` 2.00."), "{text}");
        assert!(!report(&raw, &[]).contains("Allot / raw"), "no Allot row, no ratio");
    }
}
