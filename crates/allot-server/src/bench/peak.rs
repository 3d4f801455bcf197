//! Peak against peak: for each scenario measured at more than one concurrency, Allot's highest
//! rate over the run's levels against the raw baseline's highest over the levels it ran at,
//! wherever each peaks. The per-row ratio compares the two at one concurrency; this compares what
//! each can do at its best on this machine — PostgreSQL's process per connection peaks at a few
//! dozen clients, batching lanes at more (docs/benchmarks.md, finding 43). Allot's levels past
//! the baseline's (`BASELINE_CLIENTS_MAX`) count too: the raw rate only falls past 16–64 clients,
//! so the raw peak is among the levels it ran at (finding 56).

use super::Row;

/// One scenario's peaks.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    pub scenario: &'static str,
    /// Allot's highest operations per second and the clients it was reached with.
    pub allot: (f64, usize),
    /// Allot's highest over the levels the baseline ran at too.
    pub allot_beside_raw: (f64, usize),
    /// The raw baseline's highest over the levels that have one, and its clients.
    pub raw: (f64, usize),
}

impl Peak {
    pub fn ratio(&self) -> f64 {
        self.allot.0 / self.raw.0
    }

    /// The ratio over the levels the baseline ran at only.
    pub fn ratio_beside_raw(&self) -> f64 {
        self.allot_beside_raw.0 / self.raw.0
    }
}

/// The highest `rate` over `scenario`'s rows (rows without one left out), and the clients it was
/// reached with.
pub fn highest(rows: &[Row], scenario: &str, rate: impl Fn(&Row) -> Option<f64>) -> Option<(f64, usize)> {
    rows.iter().filter(|r| r.scenario == scenario).filter_map(|r| rate(r).map(|v| (v, r.clients))).max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The peaks of every scenario with at least two rows that have a baseline, in the rows' order:
/// Allot's over all of the scenario's rows, the raw one's over those that have a baseline.
pub fn peaks(rows: &[Row]) -> Vec<Peak> {
    let mut scenarios: Vec<&'static str> = Vec::new();
    for row in rows {
        if !scenarios.contains(&row.scenario) {
            scenarios.push(row.scenario);
        }
    }
    scenarios
        .into_iter()
        .filter_map(|scenario| {
            if rows.iter().filter(|r| r.scenario == scenario && r.raw_ops_per_s.is_some()).count() < 2 {
                return None;
            }
            let at_least_two = "at least two rows";
            let allot = highest(rows, scenario, |r| Some(r.ops_per_s)).expect(at_least_two);
            let allot_beside_raw = highest(rows, scenario, |r| r.raw_ops_per_s.map(|_| r.ops_per_s)).expect(at_least_two);
            let raw = highest(rows, scenario, |r| r.raw_ops_per_s).expect(at_least_two);
            (raw.0 > 0.0).then_some(Peak { scenario, allot, allot_beside_raw, raw })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &'static str, clients: usize, ops_per_s: f64, raw_ops_per_s: Option<f64>) -> Row {
        Row { scenario, clients, ops_per_s, p50_ms: 1.0, p95_ms: 1.0, p99_ms: 1.0, errors: 0, cpu_us: None, raw_ops_per_s }
    }

    #[test]
    fn each_side_peaks_where_it_peaks() {
        let rows = [
            row("check", 16, 20_000.0, Some(50_000.0)),
            row("debit-hot", 16, 8_000.0, Some(2_000.0)),
            row("check", 64, 35_000.0, Some(34_000.0)),
            row("check", 256, 48_000.0, Some(25_000.0)),
        ];
        let peaks = peaks(&rows);
        assert_eq!(peaks, vec![Peak { scenario: "check", allot: (48_000.0, 256), allot_beside_raw: (48_000.0, 256), raw: (50_000.0, 16) }]);
        assert!((peaks[0].ratio() - 0.96).abs() < 1e-9);
    }

    #[test]
    fn allot_peaks_at_levels_past_the_baseline_too_and_the_raw_peak_needs_two_levels() {
        let rows = [
            row("check", 16, 20_000.0, Some(50_000.0)),
            row("check", 64, 35_000.0, Some(34_000.0)),
            row("check", 1000, 60_000.0, None),
            row("debit-hot", 16, 8_000.0, Some(2_000.0)),
            row("debit-hot", 1000, 9_000.0, None),
        ];
        let peaks = peaks(&rows);
        assert_eq!(peaks, vec![Peak { scenario: "check", allot: (60_000.0, 1000), allot_beside_raw: (35_000.0, 64), raw: (50_000.0, 16) }]);
        assert!((peaks[0].ratio() - 1.2).abs() < 1e-9 && (peaks[0].ratio_beside_raw() - 0.7).abs() < 1e-9);
    }

    #[test]
    fn a_run_without_a_baseline_has_no_peaks() {
        let rows = [row("check", 16, 20_000.0, None), row("check", 64, 35_000.0, None)];
        assert_eq!(peaks(&rows), vec![]);
    }
}
