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
    builder(lifo_slot).build()
}

/// The runtime's settings (tests narrow them to one worker).
fn builder(lifo_slot: bool) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    if !lifo_slot {
        builder.disable_lifo_slot();
    }
    #[cfg(not(tokio_unstable))]
    let _ = lifo_slot;
    builder
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

    /// The order in which one worker runs two tasks woken (spawned) one after the other by a task
    /// of its own.
    fn order_of_two_woken_tasks(lifo_slot: bool) -> Vec<&'static str> {
        let runtime = builder(lifo_slot).worker_threads(1).build().unwrap();
        let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = ran.clone();
        runtime.block_on(async move {
            // Spawned from a worker's task (not from `block_on`), as a stream's task wakes its
            // connection's.
            tokio::spawn(async move {
                let (first, second) = (log.clone(), log.clone());
                let a = tokio::spawn(async move { first.lock().unwrap().push("first woken") });
                let b = tokio::spawn(async move { second.lock().unwrap().push("second woken") });
                let _ = tokio::join!(a, b);
            })
            .await
            .unwrap();
        });
        let order = ran.lock().unwrap().clone();
        order
    }

    #[test]
    fn with_the_slot_off_woken_tasks_run_in_the_order_they_were_woken() {
        assert_eq!(order_of_two_woken_tasks(false), ["first woken", "second woken"]);
        // With it on, the task woken last jumps the queue: the behaviour turned off.
        assert_eq!(order_of_two_woken_tasks(true), ["second woken", "first woken"]);
    }

    #[test]
    fn a_built_runtime_runs_tasks() {
        for slot in [false, true] {
            let answer = build(slot).unwrap().block_on(async { tokio::spawn(async { 6 * 7 }).await.unwrap() });
            assert_eq!(answer, 42);
        }
    }
}
