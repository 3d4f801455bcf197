//! `allot.v1.Subsidy` handlers: authenticate, convert (`subsidy_proto`), delegate, convert.

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{detached, subsidy_proto};
use crate::service::pools::Pools;

pub struct SubsidyApi {
    pub pools: Pools,
}

#[tonic::async_trait]
impl pb::subsidy_server::Subsidy for SubsidyApi {
    async fn upsert_pool(&self, request: Request<pb::UpsertPoolRequest>) -> Result<Response<pb::UpsertPoolResponse>, Status> {
        let actor = crate::auth::principal(&request)?;
        let cmd = subsidy_proto::upsert_pool(request.into_inner())?;
        let pools = self.pools.clone();
        let pool = detached(async move { pools.upsert(&actor, cmd).await }).await?;
        Ok(Response::new(pb::UpsertPoolResponse { pool: Some(subsidy_proto::pool(pool)) }))
    }

    async fn top_up_pool(&self, request: Request<pb::TopUpPoolRequest>) -> Result<Response<pb::TopUpPoolResponse>, Status> {
        let actor = crate::auth::principal(&request)?;
        let (pool, amount_credits, key) = subsidy_proto::top_up(request.into_inner())?;
        let pools = self.pools.clone();
        let (balance_credits, replayed) = detached(async move { pools.top_up(&actor, &pool, amount_credits, &key).await }).await?;
        Ok(Response::new(pb::TopUpPoolResponse { balance_credits, replayed }))
    }

    async fn upsert_trust_tier(&self, request: Request<pb::UpsertTrustTierRequest>) -> Result<Response<pb::UpsertTrustTierResponse>, Status> {
        let actor = crate::auth::principal(&request)?;
        let (tier, budget) = subsidy_proto::upsert_tier(request.into_inner())?;
        let pools = self.pools.clone();
        detached(async move { pools.upsert_tier(&actor, &tier, budget).await }).await?;
        Ok(Response::new(pb::UpsertTrustTierResponse {}))
    }

    async fn set_account_trust_tier(
        &self,
        request: Request<pb::SetAccountTrustTierRequest>,
    ) -> Result<Response<pb::SetAccountTrustTierResponse>, Status> {
        let actor = crate::auth::principal(&request)?;
        let (account, tier) = subsidy_proto::set_account_tier(request.into_inner())?;
        let pools = self.pools.clone();
        detached(async move { pools.set_account_tier(&actor, &account, &tier).await }).await?;
        Ok(Response::new(pb::SetAccountTrustTierResponse {}))
    }

    async fn get_pool_status(&self, request: Request<pb::GetPoolStatusRequest>) -> Result<Response<pb::GetPoolStatusResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let pool = subsidy_proto::pool_id("pool_id", &request.into_inner().pool_id)?;
        Ok(Response::new(subsidy_proto::status(self.pools.status(tenant, &pool).await?)))
    }

    async fn list_pool_grants(&self, request: Request<pb::ListPoolGrantsRequest>) -> Result<Response<pb::ListPoolGrantsResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let (pool, after, page_size) = subsidy_proto::list_grants(request.into_inner())?;
        let (rows, next) = self.pools.grants(tenant, &pool, after, page_size).await?;
        Ok(Response::new(pb::ListPoolGrantsResponse {
            grants: rows.into_iter().map(|(row, at)| subsidy_proto::grant(row, at)).collect(),
            next_page_token: next.map(|p| p.to_string()).unwrap_or_default(),
        }))
    }
}
