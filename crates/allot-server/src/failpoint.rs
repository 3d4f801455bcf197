//! Crash points for the fault suite. Without the `failpoints` cargo feature every function here
//! is an empty inline function: production builds carry no trigger at all. The feature is turned
//! on only by the root package's dev-dependency, so only the `allot` binary that `cargo test`
//! builds has it; even there nothing fires unless the variable below is set.
//!
//! - `ALLOT_FAILPOINT_CRASH_AFTER_COMMIT=debit,refund` (RPC names, lower case): the process
//!   kills itself with `SIGKILL` right after the named mutation's transaction committed and
//!   before its reply is sent — the window in which a client cannot know that its request
//!   happened. Read once, at the first call.

/// Called by a mutating handler after its service call returned `Ok` (the transaction is
/// committed) and before the response is built.
#[inline(always)]
pub fn after_commit(rpc: &'static str) {
    #[cfg(feature = "failpoints")]
    active::after_commit(rpc);
    #[cfg(not(feature = "failpoints"))]
    let _ = rpc;
}

#[cfg(feature = "failpoints")]
mod active {
    use std::sync::OnceLock;

    /// The variable naming the RPCs to crash after.
    pub const CRASH_AFTER_COMMIT: &str = "ALLOT_FAILPOINT_CRASH_AFTER_COMMIT";

    fn armed() -> &'static [String] {
        static ARMED: OnceLock<Vec<String>> = OnceLock::new();
        ARMED.get_or_init(|| {
            std::env::var(CRASH_AFTER_COMMIT)
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        })
    }

    pub fn after_commit(rpc: &'static str) {
        if !armed().iter().any(|armed| armed == rpc) {
            return;
        }
        // stderr directly: the crash must not wait for a log pipeline.
        eprintln!("failpoint: {CRASH_AFTER_COMMIT} fired after {rpc} committed, killing this process");
        let pid = std::process::id().to_string();
        // SIGKILL, as `kill -9` would: no destructor, no flush, no reply, no core file. The call
        // only returns once the signal was sent, and it is delivered before `kill` exits.
        let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
        std::process::abort();
    }
}
