//! `allot.v1.FairUse` handlers, with their request validation and response conversion (kept
//! here: nothing else speaks these messages).

use std::collections::BTreeMap;
use std::pin::Pin;

use allot_domain::escalation::{Ladder, SoftCap, SCORE_MAX_MILLI};
use allot_domain::limits::MAX_AMOUNT_CREDITS;
use allot_proto::v1 as pb;
use pb::request_classification_stream_response::Outcome as ClassificationOutcome;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::streams::{Answers, Shape, Streams};
use super::{detached, from_proto, to_proto};
use crate::error::Error;
use crate::repo::fair_use::Settings;
use crate::service::classification::{Classifier, Verdict};
use crate::service::Ctx;

/// Most labels on a classification, and their length.
pub const LABELS_MAX: usize = 16;
pub const LABEL_LEN_MAX: usize = 64;
/// Most soft caps per plan, and restrict-stage budgets per tenant.
pub const SOFT_CAPS_MAX: usize = 32;
pub const BUDGETS_MAX: usize = 64;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

pub struct FairUseApi {
    pub classifier: Classifier,
    pub ctx: Ctx,
    pub streams: Streams,
}

const CLASSIFICATION_STREAM: Shape<
    pb::RequestClassificationStreamRequest,
    pb::RequestClassificationRequest,
    pb::RequestClassificationResponse,
    pb::RequestClassificationStreamResponse,
> = Shape {
    unary_path: "/allot.v1.FairUse/RequestClassification",
    field: "request",
    open: |request| (request.sequence, request.request),
    answer: |sequence, outcome| pb::RequestClassificationStreamResponse {
        sequence,
        outcome: Some(outcome.map_or_else(ClassificationOutcome::Error, ClassificationOutcome::Response)),
    },
};

/// A classification request's outcome as the API answers it.
fn classification(outcome: crate::service::classification::RequestOutcome) -> pb::RequestClassificationResponse {
    let mut response =
        pb::RequestClassificationResponse { stage: to_proto::stage(outcome.stage.as_str()) as i32, reason: outcome.reason, ..Default::default() };
    match outcome.verdict {
        Verdict::Run { ticket, expires_at } => {
            response.verdict = pb::ClassificationVerdict::Run as i32;
            response.ticket = ticket.to_string();
            response.ticket_expires_at = Some(to_proto::timestamp(expires_at));
        }
        Verdict::Cooldown { ends_at } => {
            response.verdict = pb::ClassificationVerdict::Cooldown as i32;
            response.cooldown_ends_at = ends_at.map(to_proto::timestamp);
        }
        Verdict::NotNeeded => response.verdict = pb::ClassificationVerdict::NotNeeded as i32,
    }
    response
}

fn score_milli(score: f64) -> Result<u32, Error> {
    if !score.is_finite() || !(0.0..=1.0).contains(&score) {
        return Err(Error::invalid("score", "must be between 0.0 and 1.0"));
    }
    Ok(((score * f64::from(SCORE_MAX_MILLI)).round() as u32).min(SCORE_MAX_MILLI))
}

fn labels(raw: Vec<String>) -> Result<Vec<String>, Error> {
    if raw.len() > LABELS_MAX {
        return Err(Error::invalid("labels", format!("at most {LABELS_MAX}")));
    }
    for (i, label) in raw.iter().enumerate() {
        if label.is_empty() || label.len() > LABEL_LEN_MAX || label.chars().any(char::is_control) {
            return Err(Error::invalid(format!("labels[{i}]"), format!("1 to {LABEL_LEN_MAX} bytes without control characters")));
        }
    }
    Ok(raw)
}

fn within(field: &str, value: i64, min: i64, max: i64) -> Result<i64, Error> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Error::invalid(field, format!("must be between {min} and {max}")))
    }
}

fn settings(req: pb::EscalationSettings) -> Result<Settings, Error> {
    let ladder = Ladder { warning_after: req.warning_after, throttle_after: req.throttle_after, restrict_after: req.restrict_after };
    if !ladder.is_valid() || ladder.restrict_after > 1_000 {
        return Err(Error::invalid("warning_after", "need 1 ≤ warning_after ≤ throttle_after ≤ restrict_after ≤ 1000"));
    }
    if req.restrict_daily_budgets.len() > BUDGETS_MAX {
        return Err(Error::invalid("restrict_daily_budgets", format!("at most {BUDGETS_MAX}")));
    }
    let mut budgets = BTreeMap::new();
    for (meter, budget) in req.restrict_daily_budgets {
        let field = format!("restrict_daily_budgets[{meter:.64}]");
        let meter = from_proto::meter(&field, &meter)?;
        budgets.insert(meter.as_str().to_owned(), within(&field, budget, 0, MAX_AMOUNT_CREDITS)?);
    }
    Ok(Settings {
        enabled: req.enabled,
        kill_switch: req.kill_switch,
        gate_score_milli: score_milli(req.gate_score).map_err(|_| Error::invalid("gate_score", "must be between 0.0 and 1.0"))?,
        ladder,
        violation_window_ms: within("violation_window_ms", req.violation_window_ms, 60_000, 90 * DAY_MS)?,
        cooldown_ms: within("cooldown_ms", req.cooldown_ms, 1_000, 7 * DAY_MS)?,
        exhausted_cooldown_ms: within("exhausted_cooldown_ms", req.exhausted_cooldown_ms, 1_000, 7 * DAY_MS)?,
        ticket_ttl_ms: within("ticket_ttl_ms", req.ticket_ttl_ms, 1_000, DAY_MS)?,
        throttle_rate_percent: u32::try_from(within("throttle_rate_percent", i64::from(req.throttle_rate_percent), 1, 100)?).unwrap_or(100),
        restrict_daily_budgets: budgets,
        updated_at: None,
    })
}

fn settings_proto(s: Settings) -> pb::EscalationSettings {
    pb::EscalationSettings {
        enabled: s.enabled,
        kill_switch: s.kill_switch,
        gate_score: f64::from(s.gate_score_milli) / f64::from(SCORE_MAX_MILLI),
        warning_after: s.ladder.warning_after,
        throttle_after: s.ladder.throttle_after,
        restrict_after: s.ladder.restrict_after,
        violation_window_ms: s.violation_window_ms,
        cooldown_ms: s.cooldown_ms,
        exhausted_cooldown_ms: s.exhausted_cooldown_ms,
        ticket_ttl_ms: s.ticket_ttl_ms,
        throttle_rate_percent: s.throttle_rate_percent,
        restrict_daily_budgets: s.restrict_daily_budgets.into_iter().collect(),
        updated_at: s.updated_at.map(to_proto::timestamp),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::fair_use_server::FairUse for FairUseApi {
    async fn request_classification(
        &self,
        request: Request<pb::RequestClassificationRequest>,
    ) -> Result<Response<pb::RequestClassificationResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let account = from_proto::account("account_id", &request.into_inner().account_id)?;
        let classifier = self.classifier.clone();
        let outcome = detached(async move { classifier.request(tenant, &account).await }).await?;
        Ok(Response::new(classification(outcome)))
    }

    type RequestClassificationStreamStream = Answers<pb::RequestClassificationStreamResponse>;

    async fn request_classification_stream(
        &self,
        request: Request<Streaming<pb::RequestClassificationStreamRequest>>,
    ) -> Result<Response<Self::RequestClassificationStreamStream>, Status> {
        let classifier = self.classifier.clone();
        self.streams.serve(request, CLASSIFICATION_STREAM, move |tenant, request| {
            let classifier = classifier.clone();
            async move {
                let account = from_proto::account("account_id", &request.account_id)?;
                Ok(classification(classifier.request(tenant, &account).await?))
            }
        })
    }

    async fn submit_classification(
        &self,
        request: Request<pb::SubmitClassificationRequest>,
    ) -> Result<Response<pb::SubmitClassificationResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let req = request.into_inner();
        let ticket = uuid::Uuid::parse_str(&req.ticket).map_err(|_| Error::invalid("ticket", "must be a ticket from RequestClassification"))?;
        let score = score_milli(req.score)?;
        let labels = labels(req.labels)?;
        let classifier = self.classifier.clone();
        let (violation, stage) = detached(async move { classifier.submit(tenant, ticket, score, labels).await }).await?;
        Ok(Response::new(pb::SubmitClassificationResponse { violation, stage: to_proto::stage(stage.as_str()) as i32 }))
    }

    async fn get_escalation(&self, request: Request<pb::GetEscalationRequest>) -> Result<Response<pb::GetEscalationResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let account = from_proto::account("account_id", &request.into_inner().account_id)?;
        let e = self.classifier.escalation(tenant, &account).await?;
        Ok(Response::new(pb::GetEscalationResponse {
            stage: to_proto::stage(e.stage.as_str()) as i32,
            reason: e.reason,
            violations_in_window: e.violations,
            exempt: e.exempt,
            fair_use: Some(to_proto::fair_use(&e.fair_use)),
            history: e
                .history
                .into_iter()
                .map(|c| pb::Classification {
                    score: f64::from(c.score_milli) / f64::from(SCORE_MAX_MILLI),
                    labels: c.labels,
                    synthetic: c.synthetic,
                    violation: c.violation,
                    created_at: Some(to_proto::timestamp(c.created_at)),
                })
                .collect(),
        }))
    }

    async fn get_settings(&self, request: Request<pb::GetSettingsRequest>) -> Result<Response<pb::EscalationSettings>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        Ok(Response::new(settings_proto(self.classifier.settings(tenant).await?)))
    }

    async fn update_settings(&self, request: Request<pb::EscalationSettings>) -> Result<Response<pb::EscalationSettings>, Status> {
        let actor = crate::auth::principal(&request)?;
        let new = settings(request.into_inner())?;
        let classifier = self.classifier.clone();
        let stored = detached(async move { classifier.update_settings(&actor, new).await }).await?;
        Ok(Response::new(settings_proto(stored)))
    }

    async fn set_exempt(&self, request: Request<pb::SetExemptRequest>) -> Result<Response<pb::SetExemptResponse>, Status> {
        let actor = crate::auth::principal(&request)?;
        let req = request.into_inner();
        let account = from_proto::account("account_id", &req.account_id)?;
        let classifier = self.classifier.clone();
        let exempt = detached(async move { classifier.set_exempt(&actor, &account, req.exempt).await }).await?;
        Ok(Response::new(pb::SetExemptResponse { exempt }))
    }

    async fn set_soft_caps(&self, request: Request<pb::SetSoftCapsRequest>) -> Result<Response<pb::SetSoftCapsResponse>, Status> {
        let actor = crate::auth::principal(&request)?;
        let req = request.into_inner();
        let plan = from_proto::plan_id("plan_id", &req.plan_id)?;
        if req.caps.len() > SOFT_CAPS_MAX {
            return Err(Error::invalid("caps", format!("at most {SOFT_CAPS_MAX}")).into());
        }
        let mut caps = Vec::with_capacity(req.caps.len());
        for (i, cap) in req.caps.iter().enumerate() {
            let meter = from_proto::meter(&format!("caps[{i}].meter"), &cap.meter)?;
            let window_ms = within(&format!("caps[{i}].window_ms"), cap.window_ms, HOUR_MS, 31 * DAY_MS)?;
            let threshold_credits = within(&format!("caps[{i}].threshold_credits"), cap.threshold_credits, 1, MAX_AMOUNT_CREDITS)?;
            if caps.iter().any(|(m, c): &(crate::ids::Meter, SoftCap)| *m == meter && c.window_ms == window_ms) {
                return Err(Error::invalid(format!("caps[{i}]"), "the same meter and window twice").into());
            }
            caps.push((meter, SoftCap { window_ms, threshold_credits }));
        }
        let classifier = self.classifier.clone();
        let stored = caps.clone();
        detached(async move { classifier.set_soft_caps(&actor, &plan, caps).await }).await?;
        Ok(Response::new(pb::SetSoftCapsResponse {
            caps: stored
                .into_iter()
                .map(|(m, c)| pb::SoftCap { meter: m.as_str().to_owned(), window_ms: c.window_ms, threshold_credits: c.threshold_credits })
                .collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> Result<Response<Self::WatchEventsStream>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let from = request.into_inner().from_cursor;
        if from < 0 {
            return Err(Error::invalid("from_cursor", "must not be negative").into());
        }
        let rows = tokio_stream::wrappers::ReceiverStream::new(crate::service::events::watch(self.ctx.clone(), tenant, from));
        let stream = rows.map(|row| {
            row.map(|e| pb::Event {
                cursor: e.seq,
                kind: e.kind,
                account_id: e.account_id,
                payload_json: e.payload.to_string(),
                created_at: Some(to_proto::timestamp(e.created_at)),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
