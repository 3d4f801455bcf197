//! Per-minute rate caps, counted in Redis with one atomic script per decision (weighted GCRA over
//! every capped meter of a request: all pass or none is counted). Redis never holds money: when
//! it cannot answer within the timeout, each meter follows its plan's policy (fail open, counted
//! and logged, or fail closed as RATE_LIMITED).
//!
//! Bound: a cap of L units per minute with burst B admits, in any window of w seconds, at most
//! B + L·w/60 units (at most B + L in any minute, and never more than B at one instant). The
//! default burst is L. Time comes from the caller's clock (replicas should run NTP).

use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;
use time::OffsetDateTime;

/// Microseconds in a minute.
const MINUTE_US: f64 = 60_000_000.0;
/// Longest wait reported (a weight above the burst can never fit).
pub const RETRY_AFTER_MAX_MS: i64 = 3_600_000;

/// One capped meter of a request.
#[derive(Debug, Clone)]
pub struct RateRequest {
    pub key: String,
    pub limit_per_minute: i64,
    pub burst: i64,
    pub weight: i64,
    pub fail_open: bool,
}

/// A capped meter's figures after the decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateView {
    pub limit_per_minute: i64,
    pub remaining: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub reset_at: OffsetDateTime,
    pub failed_open: bool,
}

/// The decision on all capped meters of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateDecision {
    /// Index (into the requests) of the meter that refused, and how long until it would fit.
    pub limited: Option<(usize, i64)>,
    /// One view per request, in order.
    pub views: Vec<RateView>,
}

/// Counts rate use in Redis.
#[derive(Clone)]
pub struct RateLimiter {
    redis: Option<Client>,
    timeout: Duration,
    script: Script,
}

impl RateLimiter {
    pub fn new(redis: Option<Client>, timeout: Duration) -> RateLimiter {
        RateLimiter { redis, timeout, script: Script::from_lua(include_str!("rate_gcra.lua")) }
    }

    /// The Redis key of one account's meter. The hash tag keeps an account's meters in one slot.
    pub fn key(tenant: &str, account: &str, meter: &str) -> String {
        format!("allot:rate:{{{tenant}:{account}}}:{meter}")
    }

    /// Decides (and with `consume`, counts) all `requests` at `now`.
    #[tracing::instrument(name = "redis.rate", skip_all, fields(rate.meters = requests.len(), rate.consume = consume))]
    pub async fn decide(&self, requests: &[RateRequest], now: OffsetDateTime, consume: bool) -> RateDecision {
        if requests.is_empty() {
            return RateDecision { limited: None, views: Vec::new() };
        }
        let now_us = i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
        match self.run(requests, now_us, consume).await {
            Ok(reply) => interpret(requests, now, now_us, &reply),
            Err(reason) => self.on_failure(requests, now, &reason),
        }
    }

    async fn run(&self, requests: &[RateRequest], now_us: i64, consume: bool) -> Result<Vec<String>, String> {
        let redis = self.redis.as_ref().ok_or_else(|| "no redis configured".to_owned())?;
        let keys: Vec<String> = requests.iter().map(|r| r.key.clone()).collect();
        let mut args: Vec<String> = vec![now_us.to_string(), if consume { "1" } else { "0" }.to_owned()];
        for r in requests {
            let interval = MINUTE_US / r.limit_per_minute as f64;
            args.push(format!("{interval:.3}"));
            args.push(format!("{:.3}", interval * r.burst as f64));
            args.push(r.weight.to_string());
        }
        let call = self.script.evalsha_with_reload::<Vec<Value>, _, _>(redis, keys, args);
        let values = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("timed out after {} ms", self.timeout.as_millis()))?
            .map_err(|e| e.to_string())?;
        values.into_iter().map(|v| v.as_string().ok_or_else(|| "unexpected script reply".to_owned())).collect()
    }

    /// Redis could not answer: each meter follows its policy.
    fn on_failure(&self, requests: &[RateRequest], now: OffsetDateTime, reason: &str) -> RateDecision {
        let closed = requests.iter().position(|r| !r.fail_open);
        let views = requests
            .iter()
            .map(|r| RateView { limit_per_minute: r.limit_per_minute, remaining: 0, reset_at: now, failed_open: r.fail_open })
            .collect();
        match closed {
            Some(index) => {
                metrics_fail("closed");
                tracing::warn!(error = %reason, rate.key = %requests[index].key, "rate store unavailable, failing closed");
                RateDecision { limited: Some((index, 1_000)), views }
            }
            None => {
                metrics_fail("open");
                tracing::warn!(error = %reason, meters = requests.len(), "rate store unavailable, failing open");
                RateDecision { limited: None, views }
            }
        }
    }
}

fn metrics_fail(policy: &'static str) {
    crate::telemetry::count_rate_store_failure(policy);
}

fn interpret(requests: &[RateRequest], now: OffsetDateTime, now_us: i64, reply: &[String]) -> RateDecision {
    let number = |i: usize| reply.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let allowed = number(0) >= 1.0;
    let views = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let interval = MINUTE_US / r.limit_per_minute as f64;
            let backlog_us = (number(3 + i) - now_us as f64).max(0.0);
            let remaining = ((interval * r.burst as f64 - backlog_us) / interval).floor().max(0.0) as i64;
            RateView {
                limit_per_minute: r.limit_per_minute,
                remaining: remaining.min(r.burst),
                reset_at: now + time::Duration::microseconds(backlog_us as i64),
                failed_open: false,
            }
        })
        .collect();
    let limited = if allowed {
        None
    } else {
        let index = (number(1) as usize).saturating_sub(1);
        let wait_ms = ((number(2) / 1_000.0).ceil() as i64).clamp(1, RETRY_AFTER_MAX_MS);
        Some((index, wait_ms))
    };
    RateDecision { limited, views }
}
