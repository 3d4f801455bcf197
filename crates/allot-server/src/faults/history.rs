//! A history of client operations: what many concurrent clients asked and how each attempt
//! ended. [`check`] (in `check.rs`) holds it against the database afterwards.
//!
//! Each [`Operation`] is one logical request (a debit under one idempotency key, the commit of
//! one hold, …) with every attempt made for it: retries reuse the key or the hold, so the server
//! must apply it at most once. An attempt ends in one of four ways ([`Attempt`]): `Ok` (the
//! server acknowledged it), `Denied` (a decision: nothing charged), `Refused` (a definite error:
//! nothing changed) or `Unknown` (no definite answer: deadline, transport failure, UNAVAILABLE).
//! The operation's [`Outcome`] is its first definite answer, or unknown if it never got one.
//!
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use super::check::{check, Expect, Report};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Debit,
    Reserve,
    Commit,
    Release,
    Refund,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Debit => "debit",
            Kind::Reserve => "reserve",
            Kind::Commit => "commit",
            Kind::Release => "release",
            Kind::Refund => "refund",
        }
    }
}

/// How one attempt (one RPC) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Acknowledged: the charge's entry id (debit, commit, refund), the hold id (reserve), or
    /// nothing (release).
    Ok { id: Option<String> },
    /// A decision to deny (`DenialReason` as a number): nothing was charged or held.
    Denied { reason: i32 },
    /// A definite error (invalid, conflict, not found): nothing changed.
    Refused { code: tonic::Code, reason: String },
    /// No definite answer: it may or may not have happened.
    Unknown { code: tonic::Code, reason: String },
}

impl Attempt {
    fn is_definite(&self) -> bool {
        !matches!(self, Attempt::Unknown { .. })
    }

    /// A short label for counting: `ok`, `denied`, or the gRPC code (`Internal(transport)` for
    /// an INTERNAL that did not come from Allot's error mapping, e.g. a connection cut mid-call).
    pub fn label(&self) -> String {
        match self {
            Attempt::Ok { .. } => "ok".to_owned(),
            Attempt::Denied { .. } => "denied".to_owned(),
            Attempt::Unknown { code: tonic::Code::Internal, reason } if reason.is_empty() => "Internal(transport)".to_owned(),
            Attempt::Refused { code, .. } | Attempt::Unknown { code, .. } => format!("{code:?}"),
        }
    }
}

/// One attempt and how long it took.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: Attempt,
    pub elapsed: Duration,
}

/// The verdict on an operation: its first definite answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acked { id: Option<String> },
    Denied,
    Refused,
    Unknown,
}

/// One logical request and all its attempts.
#[derive(Debug, Clone)]
pub struct Operation {
    pub kind: Kind,
    pub account: String,
    /// The idempotency key (debit, reserve, refund).
    pub key: Option<String>,
    /// The hold settled (commit, release).
    pub hold_id: Option<String>,
    /// The charge refunded (refund).
    pub refunds: Option<String>,
    pub amount_credits: i64,
    pub attempts: Vec<AttemptRecord>,
}

impl Operation {
    pub fn outcome(&self) -> Outcome {
        match self.attempts.iter().map(|a| &a.attempt).find(|a| a.is_definite()) {
            Some(Attempt::Ok { id }) => Outcome::Acked { id: id.clone() },
            Some(Attempt::Denied { .. }) => Outcome::Denied,
            Some(Attempt::Refused { .. }) => Outcome::Refused,
            Some(Attempt::Unknown { .. }) | None => Outcome::Unknown,
        }
    }

    /// Later definite answers that contradict the first (a replay must repeat it exactly).
    pub(super) fn contradictions(&self) -> Option<String> {
        let mut definite = self.attempts.iter().map(|a| &a.attempt).filter(|a| a.is_definite());
        let first = definite.next()?;
        definite.find(|a| *a != first).map(|other| format!("{} {:?}: first answer {first:?}, later {other:?}", self.kind.as_str(), self.name()))
    }

    /// The key or hold that names this operation.
    pub fn name(&self) -> &str {
        self.key.as_deref().or(self.hold_id.as_deref()).unwrap_or("")
    }
}

/// Operations recorded by many clients at once, plus anomalies clients saw on the wire (a
/// server INTERNAL, a replay that differed).
#[derive(Debug, Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Debug, Default)]
struct Recorded {
    operations: Vec<Operation>,
    anomalies: Vec<String>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The operations and client-seen anomalies recorded so far.
    pub(super) fn snapshot(&self) -> (Vec<Operation>, Vec<String>) {
        let guard = self.lock();
        (guard.operations.clone(), guard.anomalies.clone())
    }

    pub fn record(&self, operation: Operation) {
        self.lock().operations.push(operation);
    }

    /// An anomaly seen by a client (not derivable from the database).
    pub fn anomaly(&self, what: String) {
        self.lock().anomalies.push(what);
    }

    pub fn operations(&self) -> Vec<Operation> {
        self.lock().operations.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every attempt's label (`ok`, `denied`, `Unavailable`, …) with its count.
    pub fn codes(&self) -> BTreeMap<String, usize> {
        let mut codes = BTreeMap::new();
        for op in &self.lock().operations {
            for a in &op.attempts {
                *codes.entry(a.attempt.label()).or_insert(0) += 1;
            }
        }
        codes
    }

    /// The longest attempt that ended with `label`.
    pub fn slowest(&self, label: &str) -> Option<Duration> {
        self.lock().operations.iter().flat_map(|op| &op.attempts).filter(|a| a.attempt.label() == label).map(|a| a.elapsed).max()
    }
}
