//! The tokio runtime the `allot` binary runs on: multi-threaded, one worker per core, with the
//! LIFO slot off and external events looked for every [`EVENT_INTERVAL_DEFAULT`] task polls.
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
//!
//! A busy worker looks for external events — the answers of PostgreSQL and Redis, the next
//! HTTP/2 frames, timers — once every *event interval* task polls (tokio's default 61); until
//! then an answer that has arrived waits in the socket while the worker polls other tasks.
//! Every call here waits on such answers, most of them one after another (a debit batch's two
//! round trips, each with several answers), and most polls are short, so the binary looks every
//! [`EVENT_INTERVAL_DEFAULT`] polls. Against 61, in interleaved runs: `debit-uniform` at 16
//! clients won 10 pairings of 12 and `classify-cooldown` at 64 all 9, `check` at 256 won 4 of 5;
//! `classify-cooldown-stream` at 64, bounded by CPU with few socket events a call, lost 5 of 7
//! (−5 %); the rest moved within the noise (docs/benchmarks.md, finding 49). Each look costs an
//! `epoll_wait`, which is why the interval is not 1.
//! `ALLOT_TOKIO_EVENT_INTERVAL=N` (1–255) sets another interval, for comparisons.

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

/// The variable that sets the event interval.
pub const EVENT_INTERVAL_VAR: &str = "ALLOT_TOKIO_EVENT_INTERVAL";
/// Task polls between two looks for external events, unless [`EVENT_INTERVAL_VAR`] says otherwise.
pub const EVENT_INTERVAL_DEFAULT: u32 = 7;
/// The widest interval accepted (about four times tokio's default).
pub const EVENT_INTERVAL_MAX: u32 = 255;

/// The event interval from [`EVENT_INTERVAL_VAR`]'s value ([`EVENT_INTERVAL_DEFAULT`] when unset).
pub fn event_interval(setting: Option<&str>) -> anyhow::Result<u32> {
    crate::env_setting::within(EVENT_INTERVAL_VAR, setting, 1..=EVENT_INTERVAL_MAX, EVENT_INTERVAL_DEFAULT, "a number of task polls")
}

/// How the runtime is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Whether tokio's LIFO slot is on.
    pub lifo_slot: bool,
    /// Task polls between two looks for external events.
    pub event_interval: u32,
}

impl Tuning {
    /// The binary's tuning: the LIFO slot off, the default interval.
    pub const DEFAULT: Tuning = Tuning { lifo_slot: false, event_interval: EVENT_INTERVAL_DEFAULT };

    /// The tuning [`LIFO_SLOT_VAR`] and [`EVENT_INTERVAL_VAR`] ask for.
    pub fn from_env() -> anyhow::Result<Tuning> {
        Ok(Tuning {
            lifo_slot: lifo_slot(std::env::var(LIFO_SLOT_VAR).ok().as_deref())?,
            event_interval: event_interval(std::env::var(EVENT_INTERVAL_VAR).ok().as_deref())?,
        })
    }
}

/// Builds the runtime `tuning` describes.
pub fn build(tuning: Tuning) -> std::io::Result<tokio::runtime::Runtime> {
    builder(tuning).build()
}

/// The runtime's settings (tests narrow them to one worker).
fn builder(tuning: Tuning) -> tokio::runtime::Builder {
    assert!((1..=EVENT_INTERVAL_MAX).contains(&tuning.event_interval), "an event interval within its bounds");
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().event_interval(tuning.event_interval);
    #[cfg(tokio_unstable)]
    if !tuning.lifo_slot {
        builder.disable_lifo_slot();
    }
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
        let runtime = builder(Tuning { lifo_slot, ..Tuning::DEFAULT }).worker_threads(1).build().unwrap();
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
        for lifo_slot in [false, true] {
            let answer = build(Tuning { lifo_slot, ..Tuning::DEFAULT }).unwrap().block_on(async { tokio::spawn(async { 6 * 7 }).await.unwrap() });
            assert_eq!(answer, 42);
        }
    }

    #[test]
    fn the_event_interval_defaults_and_takes_a_count_within_its_bounds() {
        assert_eq!(event_interval(None).unwrap(), EVENT_INTERVAL_DEFAULT);
        assert_eq!(event_interval(Some("1")).unwrap(), 1);
        assert_eq!(event_interval(Some(" 61 ")).unwrap(), 61);
        assert_eq!(event_interval(Some("255")).unwrap(), EVENT_INTERVAL_MAX);
        for bad in ["0", "256", "seven", "", "-1"] {
            let err = event_interval(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(EVENT_INTERVAL_VAR), "{bad:?}: {err}");
        }
    }

    /// How often one worker, kept busy by two tasks waking each other `rounds` times (two polls a
    /// round, none of them touching the I/O driver), notices a socket that is readable again
    /// each time it has been read.
    fn reads_while_busy(event_interval: u32, rounds: usize) -> usize {
        let runtime = builder(Tuning { event_interval, ..Tuning::DEFAULT }).worker_threads(1).build().unwrap();
        runtime.block_on(async move {
            tokio::spawn(async move {
                let (writer, reader) = tokio::net::UnixStream::pair().unwrap();
                let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let reading = {
                    let done = done.clone();
                    tokio::spawn(async move {
                        let (mut reads, mut buf) = (0, [0u8; 16]);
                        writer.try_write(b"x").unwrap();
                        while !done.load(std::sync::atomic::Ordering::Relaxed) {
                            reader.readable().await.unwrap();
                            // Drained, so the next look finds it readable only through the driver.
                            while reader.try_read(&mut buf).is_ok() {}
                            reads += 1;
                            writer.try_write(b"x").unwrap();
                        }
                        reads
                    })
                };
                let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<()>(1);
                let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<()>(1);
                let ponger = tokio::spawn(async move {
                    while ping_rx.recv().await.is_some() {
                        pong_tx.send(()).await.unwrap();
                    }
                });
                for _ in 0..rounds {
                    ping_tx.send(()).await.unwrap();
                    pong_rx.recv().await.unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                drop(ping_tx);
                ponger.await.unwrap();
                reading.await.unwrap()
            })
            .await
            .unwrap()
        })
    }

    #[test]
    fn a_busy_worker_looks_for_answers_every_event_interval_polls() {
        let rounds = 2_000;
        let (often, seldom) = (reads_while_busy(EVENT_INTERVAL_DEFAULT, rounds), reads_while_busy(61, rounds));
        // Two polls a round and one more per read: about 2 × rounds / (interval − 1) reads (667
        // and 67 here).
        assert!(often > 4 * seldom, "every {EVENT_INTERVAL_DEFAULT} polls: {often} reads; every 61: {seldom}");
        assert!(often >= rounds / EVENT_INTERVAL_DEFAULT as usize, "{often} reads in {rounds} rounds");
    }
}
