//! `allot.v1.Pricing` handlers: authenticate, convert (`pricing_proto`), delegate, convert.

use allot_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{detached, pricing_proto};
use crate::service::pricing::Pricing;

pub struct PricingApi {
    pub pricing: Pricing,
}

#[tonic::async_trait]
impl pb::pricing_server::Pricing for PricingApi {
    async fn upsert_price(&self, request: Request<pb::UpsertPriceRequest>) -> Result<Response<pb::Price>, Status> {
        let actor = crate::auth::principal(&request)?;
        let cmd = pricing_proto::upsert_price(request.into_inner())?;
        let pricing = self.pricing.clone();
        let price = detached(async move { pricing.upsert_price(&actor, cmd).await }).await?;
        Ok(Response::new(pricing_proto::price(price)))
    }

    async fn list_prices(&self, request: Request<pb::ListPricesRequest>) -> Result<Response<pb::ListPricesResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let req = pricing_proto::list_prices(request.into_inner())?;
        let (prices, next_page_token) = self.pricing.list_prices(tenant, req).await?;
        Ok(Response::new(pb::ListPricesResponse { prices: prices.into_iter().map(pricing_proto::price).collect(), next_page_token }))
    }

    async fn retire_price(&self, request: Request<pb::RetirePriceRequest>) -> Result<Response<pb::Price>, Status> {
        let actor = crate::auth::principal(&request)?;
        let (sku, at) = pricing_proto::retire_price(request.into_inner())?;
        let pricing = self.pricing.clone();
        let price = detached(async move { pricing.retire_price(&actor, &sku, at).await }).await?;
        Ok(Response::new(pricing_proto::price(price)))
    }

    async fn estimate(&self, request: Request<pb::EstimateRequest>) -> Result<Response<pb::EstimateResponse>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        let (sku, quantities, at) = pricing_proto::estimate(request.into_inner())?;
        let rated = self.pricing.estimate(tenant, &sku, &quantities, at).await?;
        Ok(Response::new(pricing_proto::estimate_response(rated)))
    }

    async fn get_pricing_policy(&self, request: Request<pb::GetPricingPolicyRequest>) -> Result<Response<pb::PricingPolicy>, Status> {
        let tenant = crate::auth::tenant(&request)?;
        Ok(Response::new(pricing_proto::policy_to_proto(self.pricing.policy(tenant).await?)))
    }

    async fn update_pricing_policy(&self, request: Request<pb::UpdatePricingPolicyRequest>) -> Result<Response<pb::PricingPolicy>, Status> {
        let actor = crate::auth::principal(&request)?;
        let policy = pricing_proto::policy(request.into_inner())?;
        let pricing = self.pricing.clone();
        let record = detached(async move { pricing.update_policy(&actor, policy).await }).await?;
        Ok(Response::new(pricing_proto::policy_to_proto(record)))
    }
}
