//! The tokio runtime the `allot` binary runs on: multi-threaded, one worker per core, with the
//! LIFO slot off.
//!
//! Tokio runs a task woken by the task running now next, ahead of the worker's queue (the LIFO
//! slot). When a batch answers its callers, each caller's HTTP/2 stream finishes and wakes its
//! connection's task, which then ran at once and wrote that one answer: a `writev` per answer
//! (~1.6 per call measured with `perf stat` under `check × 64`), and on loopback the peer's
//! receive path inside each. With the slot off the connection's task runs after the other
//! streams woken with it and writes their answers together, and a client's requests likewise:
//! CPU per call down by a quarter to a half on the calls bounded by CPU (docs/benchmarks.md,
//! finding 40), a little latency more for a task waiting on one answer (a debit batch at 16
//! clients). The setting is one of tokio's unstable ones (`--cfg tokio_unstable`,
//! `.cargo/config.toml`).
//!
//! `ALLOT_TOKIO_LIFO_SLOT=on` turns the slot back on, for comparisons.

/// The variable that turns the LIFO slot back on.
pub const LIFO_SLOT_VAR: &str = "ALLOT_TOKIO_LIFO_SLOT";

/// Whether the LIFO slot is on, from [`LIFO_SLOT_VAR`]'s value (off when unset).
pub fn lifo_slot(setting: Option<&str>) -> anyhow::Result<bool> {
    match setting.map(str::trim) {
        None | Some("off") => Ok(false),
        Some("on") => Ok(true),
        Some(other) => Err(anyhow::anyhow!("{LIFO_SLOT_VAR}: on or off, not {other:?}")),
    }
}

/// Builds the runtime, the LIFO slot on only when `lifo_slot` says so.
pub fn build(lifo_slot: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    if !lifo_slot {
        builder.disable_lifo_slot();
    }
    #[cfg(not(tokio_unstable))]
    let _ = lifo_slot;
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // A test, not a `const` assertion: a build without the flag still runs, and this says why
    // it is slower.
    #[allow(clippy::assertions_on_constants)]
    fn built_with_tokio_unstable() {
        // Without it the slot cannot be turned off (a `RUSTFLAGS` variable replaces the flags
        // of `.cargo/config.toml`).
        assert!(cfg!(tokio_unstable), "build with --cfg tokio_unstable (.cargo/config.toml)");
    }

    #[test]
    fn the_slot_is_off_unless_turned_on() {
        assert!(!lifo_slot(None).unwrap());
        assert!(!lifo_slot(Some("off")).unwrap());
        assert!(lifo_slot(Some(" on ")).unwrap());
        for bad in ["yes", "", "ON", "1"] {
            let err = lifo_slot(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(LIFO_SLOT_VAR), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_built_runtime_runs_tasks_on_its_workers() {
        for slot in [false, true] {
            let runtime = build(slot).unwrap();
            let answer = runtime.block_on(async { tokio::spawn(async { 6 * 7 }).await.unwrap() });
            assert_eq!(answer, 42);
        }
    }
}
