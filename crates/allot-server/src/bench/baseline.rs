//! The raw baseline beside each row: one row of `../shared/baseline/run` (pgbench or
//! redis-benchmark against the bench's own PostgreSQL and Redis) at the row's concurrency, for
//! as long, right after the Allot row it is compared with (docs/benchmarks.md, finding 33).

use std::path::Path;

use crate::localstack::{LocalPostgres, LocalRedis};

/// Runs the runner's row `raw_name` at `clients`; its operations per second (`None` when the
/// runner printed no such row).
pub async fn measure(
    script: &Path,
    postgres: &LocalPostgres,
    redis: &LocalRedis,
    seconds: u64,
    raw_name: &str,
    clients: usize,
) -> anyhow::Result<Option<f64>> {
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .args(["--dsn", &postgres.dsn("allot"), "--redis", &format!("127.0.0.1:{}", redis.port())])
        .args(["--seconds", &seconds.to_string(), "--clients", &clients.to_string(), "--only", &only(raw_name)])
        .output()
        .await?;
    if !output.status.success() {
        anyhow::bail!("baseline failed: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    }
    Ok(ops_in(&String::from_utf8_lossy(&output.stdout), raw_name, clients))
}

/// The runner's `--only` for one row. With `cooldown-held` asked for alone, the runner's last
/// test exits 1: the free lock's row is asked for beside it (and ignored).
fn only(raw_name: &str) -> String {
    match raw_name {
        "cooldown-held" => "cooldown-held,cooldown-free".to_owned(),
        _ => raw_name.to_owned(),
    }
}

/// Operations per second of row `raw_name` at `clients` in the runner's Markdown table
/// (`| scenario | clients | ops/s | p50 ms | p99 ms |`).
fn ops_in(table: &str, raw_name: &str, clients: usize) -> Option<f64> {
    table.lines().find_map(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let wanted = cells.len() >= 5 && cells[1] == raw_name && cells[2].parse::<usize>().ok() == Some(clients);
        wanted.then(|| cells[3].parse::<f64>().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "| scenario | clients | ops/s | p50 ms | p99 ms |\n\
                         | --- | --- | --- | --- | --- |\n\
                         | cooldown-free | 64 | 91000 | 0.30 | 0.90 |\n\
                         | cooldown-held | 16 | 98000 | 0.10 | 0.30 |\n\
                         | cooldown-held | 64 | 102828 | 0.31 | 0.87 |\n";

    #[test]
    fn the_row_asked_for_is_read_and_its_neighbours_are_not() {
        assert_eq!(ops_in(TABLE, "cooldown-held", 64), Some(102_828.0));
        assert_eq!(ops_in(TABLE, "cooldown-held", 16), Some(98_000.0));
        assert_eq!(ops_in(TABLE, "cooldown-free", 64), Some(91_000.0));
    }

    #[test]
    fn a_row_the_runner_did_not_print_has_no_figure() {
        assert_eq!(ops_in(TABLE, "debit", 64), None);
        assert_eq!(ops_in(TABLE, "cooldown-held", 90), None);
        assert_eq!(ops_in("| debit | 64 | - | - | - |", "debit", 64), None);
    }

    #[test]
    fn a_held_lock_row_is_asked_for_with_the_free_one_and_others_alone() {
        assert_eq!(only("cooldown-held"), "cooldown-held,cooldown-free");
        assert_eq!(only("debit-hot"), "debit-hot");
    }
}
