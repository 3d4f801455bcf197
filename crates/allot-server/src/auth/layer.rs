//! The auth layer in front of every service (`Server::builder().layer(AuthLayer)`): for each
//! call it finds the RPC's required role ([`super::methods`]), authenticates the credential,
//! refuses a role that is too low, takes a concurrency slot of the tenant
//! ([`super::fairness`]), and passes the [`Principal`] to the handler in the request's
//! extensions. Refusals are answered here as gRPC statuses (through `grpc::status`); no handler,
//! no validation and no write runs for a refused call. Health and reflection pass untouched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;

use super::fairness::TenantLimiter;
use super::methods::{access, Access};
use super::{Authenticator, Principal};
use crate::error::Error;

/// What the layer needs; shared by every connection.
pub struct Gate {
    pub authenticator: Authenticator,
    pub limiter: TenantLimiter,
}

/// Adds [`AuthService`] in front of the router.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Gate>);

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, gate: self.0.clone() }
    }
}

/// Authenticates, authorizes and admits the calls to `inner`.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for AuthService<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service that was polled ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let required = match access(request.uri().path()) {
            Access::Open => return Box::pin(inner.call(request)),
            Access::Unknown => return Box::pin(async { Ok(tonic::Status::unimplemented("no such method").into_http()) }),
            Access::Requires(role) => role,
        };
        let gate = self.gate.clone();
        // The body moves separately: the headers are borrowed across the lookup's awaits.
        let (mut parts, body) = request.into_parts();
        Box::pin(async move {
            let admitted = async {
                let principal = gate.authenticator.authenticate(&parts.headers, &parts.extensions).await.inspect_err(|err| {
                    if matches!(err, Error::Unauthenticated) {
                        crate::telemetry::count_auth_refused("unauthenticated");
                    }
                })?;
                if !principal.role.allows(required) {
                    crate::telemetry::count_auth_refused("permission_denied");
                    return Err(Error::PermissionDenied);
                }
                let slot = gate.limiter.acquire(principal.tenant).await?;
                Ok::<(Principal, _), Error>((principal, slot))
            };
            match admitted.await {
                Ok((principal, slot)) => {
                    parts.extensions.insert(principal);
                    let response = inner.call(http::Request::from_parts(parts, body)).await;
                    drop(slot);
                    response
                }
                Err(err) => Ok(tonic::Status::from(err).into_http()),
            }
        })
    }
}
