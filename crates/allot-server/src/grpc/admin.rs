//! `allot.v1.Admin` handlers: authenticate, convert, delegate, convert.

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{detached, from_proto, to_proto};
use crate::service::admin::Admin;
use crate::service::trials::{Refusal, TrialOutcome, Trials};

pub struct AdminApi {
    pub admin: Admin,
    pub trials: Trials,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn upsert_plan(&self, request: Request<pb::UpsertPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let actor = crate::auth::principal(&request)?;
        let plan = from_proto::plan(request.into_inner())?;
        let admin = self.admin.clone();
        let plan = detached(async move { admin.upsert_plan(&actor, plan).await }).await?;
        Ok(Response::new(to_proto::plan(plan)))
    }

    async fn get_plan(&self, request: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let id = from_proto::plan_id("plan_id", &request.into_inner().plan_id)?;
        Ok(Response::new(to_proto::plan(self.admin.get_plan(tenant, &id).await?)))
    }

    async fn list_plans(&self, request: Request<pb::ListPlansRequest>) -> Result<Response<pb::ListPlansResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let req = request.into_inner();
        let page_size = from_proto::page_size(req.page_size)?;
        let after = from_proto::plan_token(&req.page_token)?;
        let (plans, next_page_token) = self.admin.list_plans(tenant, page_size, &after).await?;
        Ok(Response::new(pb::ListPlansResponse { plans: plans.into_iter().map(to_proto::plan).collect(), next_page_token }))
    }

    async fn upsert_subscription(&self, request: Request<pb::UpsertSubscriptionRequest>) -> Result<Response<pb::Subscription>, Status> {
        let actor = crate::auth::principal(&request)?;
        let sub = from_proto::subscription(request.into_inner())?;
        let admin = self.admin.clone();
        let (sub, entitled) = detached(async move { admin.upsert_subscription(&actor, sub).await }).await?;
        Ok(Response::new(to_proto::subscription(sub, entitled)))
    }

    async fn get_subscription(&self, request: Request<pb::GetSubscriptionRequest>) -> Result<Response<pb::Subscription>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let account = from_proto::account("account_id", &request.into_inner().account_id)?;
        let (sub, entitled) = self.admin.get_subscription(tenant, &account).await?;
        Ok(Response::new(to_proto::subscription(sub, entitled)))
    }

    async fn upsert_account(&self, request: Request<pb::Account>) -> Result<Response<pb::Account>, Status> {
        let actor = crate::auth::principal(&request)?;
        let (account, org) = from_proto::account_record(request.into_inner())?;
        self.admin.upsert_account(&actor, &account, org.as_ref()).await?;
        Ok(Response::new(pb::Account { account_id: account.as_str().to_owned(), org_id: org.map(|o| o.as_str().to_owned()).unwrap_or_default() }))
    }

    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let account = from_proto::account("account_id", &request.into_inner().account_id)?;
        let org = self.admin.get_account(tenant, &account).await?;
        Ok(Response::new(pb::Account { account_id: account.as_str().to_owned(), org_id: org.map(|o| o.as_str().to_owned()).unwrap_or_default() }))
    }

    async fn grant_credits(&self, request: Request<pb::GrantCreditsRequest>) -> Result<Response<pb::GrantCreditsResponse>, Status> {
        let actor = crate::auth::principal(&request)?;
        let cmd = from_proto::grant(request.into_inner())?;
        let admin = self.admin.clone();
        let outcome = detached(async move { admin.grant(&actor, cmd).await }).await?;
        Ok(Response::new(to_proto::grant(outcome)))
    }

    async fn get_balance(&self, request: Request<pb::GetBalanceRequest>) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let account = from_proto::account("account_id", &request.into_inner().account_id)?;
        let balance = self.admin.balance(tenant, &account).await?;
        Ok(Response::new(to_proto::balance(account.as_str().to_owned(), balance)))
    }

    async fn list_ledger_entries(&self, request: Request<pb::ListLedgerEntriesRequest>) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let req = request.into_inner();
        let account = from_proto::account("account_id", &req.account_id)?;
        let meter = if req.meter.is_empty() { None } else { Some(from_proto::meter("meter", &req.meter)?) };
        let page_size = from_proto::page_size(req.page_size)?;
        let after = from_proto::ledger_token(&req.page_token)?;
        let (entries, next) = self.admin.ledger(tenant, &account, meter.as_ref(), page_size, after).await?;
        Ok(Response::new(to_proto::ledger(entries, next)))
    }

    async fn start_trial(&self, request: Request<pb::StartTrialRequest>) -> Result<Response<pb::StartTrialResponse>, Status> {
        let actor = crate::auth::principal(&request)?;
        let (account, plan, fingerprint) = from_proto::start_trial(request.into_inner())?;
        let trials = self.trials.clone();
        let outcome = detached(async move { trials.start(&actor, &account, &plan, &fingerprint).await }).await?;
        Ok(Response::new(match outcome {
            TrialOutcome::Started { subscription, ends_at, grant_ids } => pb::StartTrialResponse {
                started: true,
                refusal: pb::TrialRefusal::Unspecified as i32,
                subscription: Some(to_proto::subscription(subscription, true)),
                ends_at: Some(to_proto::timestamp(ends_at)),
                grant_ids: grant_ids.iter().map(ToString::to_string).collect(),
            },
            TrialOutcome::Refused(refusal) => pb::StartTrialResponse {
                refusal: match refusal {
                    Refusal::AccountUsed => pb::TrialRefusal::AccountUsed,
                    Refusal::FingerprintUsed => pb::TrialRefusal::FingerprintUsed,
                    Refusal::PaidAccount => pb::TrialRefusal::PaidAccount,
                } as i32,
                ..Default::default()
            },
        }))
    }
}
