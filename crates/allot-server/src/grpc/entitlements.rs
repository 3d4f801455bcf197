//! `allot.v1.Entitlements` handlers: authenticate, convert, delegate (`detached`: a call runs to
//! its end though its caller goes away), convert.

use allot_proto::v1 as pb;
use pb::check_stream_response::Outcome as CheckOutcome;
use pb::debit_stream_response::Outcome as DebitOutcome;
use tonic::{Request, Response, Status, Streaming};

use super::streams::{Answers, Shape, Streams};
use super::{detached, from_proto, to_proto};
use crate::service::credits::Credits;
use crate::service::summary::Reports;

pub struct EntitlementsApi {
    pub credits: Credits,
    pub reports: Reports,
    pub streams: Streams,
}

const CHECK_STREAM: Shape<pb::CheckStreamRequest, pb::CheckRequest, pb::CheckResponse, pb::CheckStreamResponse> = Shape {
    unary_path: "/allot.v1.Entitlements/Check",
    field: "check",
    open: |request| (request.sequence, request.check),
    answer: |sequence, outcome| pb::CheckStreamResponse { sequence, outcome: Some(outcome.map_or_else(CheckOutcome::Error, CheckOutcome::Check)) },
};

const DEBIT_STREAM: Shape<pb::DebitStreamRequest, pb::DebitRequest, pb::DebitResponse, pb::DebitStreamResponse> = Shape {
    unary_path: "/allot.v1.Entitlements/Debit",
    field: "debit",
    open: |request| (request.sequence, request.debit),
    answer: |sequence, outcome| pb::DebitStreamResponse { sequence, outcome: Some(outcome.map_or_else(DebitOutcome::Error, DebitOutcome::Debit)) },
};

#[tonic::async_trait]
impl pb::entitlements_server::Entitlements for EntitlementsApi {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let cmd = from_proto::check(request.into_inner())?;
        let outcome = self.credits.check(tenant, cmd).await?;
        Ok(Response::new(to_proto::check(outcome)))
    }

    async fn debit(&self, request: Request<pb::DebitRequest>) -> Result<Response<pb::DebitResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let cmd = from_proto::debit(request.into_inner())?;
        let credits = self.credits.clone();
        let outcome = detached(async move { credits.debit(tenant, cmd).await }).await?;
        crate::failpoint::after_commit("debit");
        Ok(Response::new(to_proto::debit(outcome)))
    }

    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let cmd = from_proto::reserve(request.into_inner())?;
        let credits = self.credits.clone();
        let outcome = detached(async move { credits.reserve(tenant, cmd).await }).await?;
        crate::failpoint::after_commit("reserve");
        Ok(Response::new(to_proto::reserve(outcome)))
    }

    async fn commit(&self, request: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let cmd = from_proto::commit(request.into_inner())?;
        let credits = self.credits.clone();
        let outcome = detached(async move { credits.commit(tenant, cmd).await }).await?;
        crate::failpoint::after_commit("commit");
        Ok(Response::new(to_proto::commit(outcome)))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let hold_id = from_proto::release(request.into_inner())?;
        let credits = self.credits.clone();
        let outcome = detached(async move { credits.release(tenant, hold_id).await }).await?;
        crate::failpoint::after_commit("release");
        Ok(Response::new(to_proto::release(outcome)))
    }

    async fn refund(&self, request: Request<pb::RefundRequest>) -> Result<Response<pb::RefundResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let cmd = from_proto::refund(request.into_inner())?;
        let credits = self.credits.clone();
        let outcome = detached(async move { credits.refund(tenant, cmd).await }).await?;
        crate::failpoint::after_commit("refund");
        Ok(Response::new(to_proto::refund(outcome)))
    }

    type CheckStreamStream = Answers<pb::CheckStreamResponse>;

    async fn check_stream(&self, request: Request<Streaming<pb::CheckStreamRequest>>) -> Result<Response<Self::CheckStreamStream>, Status> {
        let credits = self.credits.clone();
        self.streams.serve(request, CHECK_STREAM, move |tenant, request| {
            let credits = credits.clone();
            async move {
                let cmd = from_proto::check(request)?;
                Ok(to_proto::check(credits.check(tenant, cmd).await?))
            }
        })
    }

    type DebitStreamStream = Answers<pb::DebitStreamResponse>;

    async fn debit_stream(&self, request: Request<Streaming<pb::DebitStreamRequest>>) -> Result<Response<Self::DebitStreamStream>, Status> {
        let credits = self.credits.clone();
        self.streams.serve(request, DEBIT_STREAM, move |tenant, request| {
            let credits = credits.clone();
            async move {
                let cmd = from_proto::debit(request)?;
                let outcome = credits.debit(tenant, cmd).await?;
                crate::failpoint::after_commit("debit");
                Ok(to_proto::debit(outcome))
            }
        })
    }

    async fn get_usage_summary(&self, request: Request<pb::GetUsageSummaryRequest>) -> Result<Response<pb::GetUsageSummaryResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let account = from_proto::account("account_id", &request.into_inner().account_id)?;
        let summary = self.reports.summary(tenant, &account).await?;
        Ok(Response::new(to_proto::summary(account.as_str().to_owned(), summary)))
    }

    async fn get_usage_breakdown(&self, request: Request<pb::GetUsageBreakdownRequest>) -> Result<Response<pb::GetUsageBreakdownResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let (account, meter, group_by, period_at) = from_proto::breakdown(request.into_inner())?;
        let (period, groups) = self.reports.breakdown(tenant, &account, &meter, &group_by, period_at).await?;
        Ok(Response::new(to_proto::breakdown_response(period, groups)))
    }
}
