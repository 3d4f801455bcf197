//! `ALLOT_BENCH_STATEMENTS=N`: after each scenario, the N statements that took the most
//! PostgreSQL execution time (from `pg_stat_statements`, which the bench then loads), with
//! calls, execution and planning time and WAL written (bytes, full-page images) per operation,
//! then the counters are reset. It names what a scenario costs the database; parse, plan and
//! protocol time are not in these figures.

/// The setting that loads the extension, added to the bench's PostgreSQL when asked for.
pub const PRELOAD: (&str, &str) = ("shared_preload_libraries", "pg_stat_statements");
/// Planning time is counted too: a statement re-planned on every call shows it here.
pub const TRACK_PLANNING: (&str, &str) = ("pg_stat_statements.track_planning", "on");

/// How many statements to print, from `ALLOT_BENCH_STATEMENTS` (absent or 0: none).
pub fn wanted() -> usize {
    std::env::var("ALLOT_BENCH_STATEMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
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
