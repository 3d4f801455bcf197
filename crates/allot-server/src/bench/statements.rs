//! `ALLOT_BENCH_STATEMENTS=N`: after each scenario, the N statements that took the most
//! PostgreSQL execution time (from `pg_stat_statements`, which the bench then loads), with
//! calls, execution and planning time and WAL written (bytes, full-page images) per operation,
//! then the counters are reset. It names what a scenario costs the database; parse, plan and
//! protocol time are not in these figures.

/// The setting that loads the extension, added to the bench's PostgreSQL when asked for.
pub const PRELOAD: (&str, &str) = ("shared_preload_libraries", "pg_stat_statements");
/// Planning time is counted too: a statement re-planned on every call shows it here.
pub const TRACK_PLANNING: (&str, &str) = ("pg_stat_statements.track_planning", "on");

/// The setting naming how many statements to print.
pub const SETTING: &str = "ALLOT_BENCH_STATEMENTS";
/// Most statements a report lists.
pub const WANTED_MAX: usize = 100;

/// How many statements to print, from `ALLOT_BENCH_STATEMENTS` (`None` or 0: none); a value that
/// is not a count up to [`WANTED_MAX`] is refused, naming the setting, rather than read as none.
pub fn wanted(setting: Option<&str>) -> anyhow::Result<usize> {
    crate::env_setting::within(SETTING, setting, 0..=WANTED_MAX, 0, "a number of statements")
}

/// Creates the extension in `dsn`'s database and resets its counters.
pub async fn prepare(dsn: &str) -> anyhow::Result<()> {
    super::connect(dsn).await?.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();").await?;
    Ok(())
}

/// The top `limit` statements since the last reset, per operation of a scenario that did `ops`
/// operations, as Markdown lines; resets the counters.
pub async fn report(dsn: &str, limit: usize, ops: f64) -> anyhow::Result<String> {
    let client = super::connect(dsn).await?;
    let rows = client
        .query(
            "SELECT calls, total_exec_time, total_plan_time, rows, wal_bytes::float8, wal_fpi, regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements \
             WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time + total_plan_time DESC LIMIT $1",
            &[&i64::try_from(limit)?],
        )
        .await?;
    let mut out = String::from("| calls/op | exec µs/op | plan µs/op | rows/call | WAL bytes/op | full pages/op | statement |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for row in rows {
        let (calls, exec_ms, plan_ms, rows): (i64, f64, f64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let (wal_bytes, wal_full_pages, query): (f64, i64, String) = (row.get(4), row.get(5), row.get(6));
        let shown: String = query.chars().take(110).collect();
        out.push_str(&format!(
            "| {:.2} | {:.1} | {:.1} | {:.1} | {:.0} | {:.3} | `{}` |\n",
            calls as f64 / ops,
            exec_ms * 1000.0 / ops,
            plan_ms * 1000.0 / ops,
            rows as f64 / (calls.max(1) as f64),
            wal_bytes / ops,
            wal_full_pages as f64 / ops,
            shown.replace('|', "\\|")
        ));
    }
    client.batch_execute("SELECT pg_stat_statements_reset()").await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_defaults_to_none_and_takes_a_count_within_the_limit() {
        assert_eq!(wanted(None).unwrap(), 0);
        assert_eq!(wanted(Some("0")).unwrap(), 0);
        assert_eq!(wanted(Some(" 10 ")).unwrap(), 10);
        assert_eq!(wanted(Some("100")).unwrap(), WANTED_MAX);
    }

    #[test]
    fn wanted_refuses_what_is_not_a_count_within_the_limit_naming_the_setting() {
        for bad in ["101", "ten", "", "-1", "1.5"] {
            let err = wanted(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(SETTING) && err.contains("from 0 to 100"), "{bad:?}: {err}");
        }
    }
}
