//! Who is calling and what it may do. Every call passes the auth layer ([`layer`]) before any
//! handler runs: it looks the RPC up in the one authorization table ([`methods`]), resolves the
//! credential to a [`Principal`] (tenant, role, credential id), refuses a role below the RPC's
//! (`PERMISSION_DENIED`), takes a slot of the tenant's concurrency limit ([`fairness`]) and hands
//! the principal to the handler in the request's extensions. Handlers read it with [`tenant`]
//! or [`principal`]; the tenant never comes from the payload.
//!
//! Credentials, per deployment (docs/security.md):
//! - bearer API keys `allot_…` ([`api_keys`]): hashed, revocable, with a role;
//! - bearer JWTs ([`jwt`]) verified against configured keys, issuer, audience and expiry;
//! - client certificates ([`certs`]) from a configured CA over mTLS (`crate::tls`), mapped to a
//!   tenant and role by SAN or subject.
//!
//! A bearer credential, when present, decides; otherwise a mapped client certificate does.

pub mod api_keys;
pub mod certs;
pub mod fairness;
pub mod jwt;
pub mod layer;
pub mod methods;
pub mod role;

use std::fmt;
use std::sync::Arc;

use tonic::codegen::http;
use uuid::Uuid;

pub use self::role::Role;
use crate::error::Error;
use crate::ids::TenantId;

/// Longest `authorization` header value looked at, in bytes.
pub const AUTHORIZATION_LEN_MAX: usize = 8 * 1024;

/// Which credential a call came with: the "who" of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An API key, by its id (never the key).
    ApiKey(Uuid),
    /// A JWT, by its issuer and subject.
    Jwt { issuer: String, subject: String },
    /// A client certificate, by the SAN or subject that matched.
    Certificate(String),
    /// The server itself (demo data, command-line tools).
    System(&'static str),
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::ApiKey(id) => write!(f, "api_key:{id}"),
            Credential::Jwt { issuer, subject } => write!(f, "jwt:{issuer}#{subject}"),
            Credential::Certificate(name) => write!(f, "cert:{name}"),
            Credential::System(what) => write!(f, "system:{what}"),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub role: Role,
    pub credential: Credential,
}

impl Principal {
    /// The server acting for a tenant on its own (demo data, tools): admin, audited as `system`.
    pub fn system(tenant: TenantId, what: &'static str) -> Principal {
        Principal { tenant, role: Role::Admin, credential: Credential::System(what) }
    }
}

/// The principal the auth layer attached to the call. A handler behind the layer always finds
/// one; its absence (a handler served without the layer) is refused, never defaulted.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, Error> {
    request.extensions().get::<Principal>().cloned().ok_or(Error::Unauthenticated)
}

/// The caller's tenant (see [`principal`]).
pub fn tenant<T>(request: &tonic::Request<T>) -> Result<TenantId, Error> {
    request.extensions().get::<Principal>().map(|p| p.tenant).ok_or(Error::Unauthenticated)
}

/// Resolves credentials to principals.
pub struct Authenticator {
    api_keys: Option<Arc<api_keys::ApiKeys>>,
    jwt: Option<jwt::JwtVerifier>,
    certs: Option<certs::CertIdentities>,
}

impl Authenticator {
    pub fn new(api_keys: Option<api_keys::ApiKeys>, jwt: Option<jwt::JwtVerifier>, certs: Option<certs::CertIdentities>) -> Authenticator {
        Authenticator { api_keys: api_keys.map(Arc::new), jwt, certs }
    }

    /// The authenticator a configuration asks for: API keys (unless turned off), JWTs when keys
    /// are configured (files are read now; a bad one stops start-up), client certificates when
    /// `certs` (the mTLS mapping) is given.
    pub fn from_config(
        config: &crate::config::Config,
        pool: deadpool_postgres::Pool,
        certs: Option<certs::CertIdentities>,
    ) -> anyhow::Result<Authenticator> {
        let api_keys = config.auth_api_keys.then(|| api_keys::ApiKeys::new(pool, std::time::Duration::from_millis(config.auth_cache_ttl_ms)));
        let public_keys: Vec<&str> =
            config.jwt_public_key_files.as_deref().unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        let jwt = if config.jwt_hs256_secret_file.is_some() || !public_keys.is_empty() {
            let mut settings = jwt::JwtSettings {
                issuer: config.jwt_issuer.clone().unwrap_or_default(),
                audience: config.jwt_audience.clone().unwrap_or_default(),
                leeway_ms: config.jwt_leeway_ms,
                algorithms: jwt::parse_algorithms(&config.jwt_algorithms)?,
                ..jwt::JwtSettings::default()
            };
            if let Some(path) = &config.jwt_hs256_secret_file {
                settings.hs256_secret = Some(jwt::read_setting_file("jwt_hs256_secret_file", path)?);
            }
            for path in public_keys {
                settings.public_keys_pem.push((path.to_owned(), jwt::read_setting_file("jwt_public_key_files", std::path::Path::new(path))?));
            }
            Some(jwt::JwtVerifier::new(settings)?)
        } else {
            None
        };
        Ok(Authenticator::new(api_keys, jwt, certs))
    }

    /// The caller of a request with these headers and extensions, or `Unauthenticated`.
    pub async fn authenticate(&self, headers: &http::HeaderMap, extensions: &http::Extensions) -> Result<Principal, Error> {
        if let Some(token) = bearer(headers)? {
            if api_keys::ApiKeys::is_api_key(token) {
                return match &self.api_keys {
                    Some(keys) => keys.verify(token).await,
                    None => Err(Error::Unauthenticated),
                };
            }
            return match &self.jwt {
                Some(jwt) => jwt.verify(token),
                None => Err(Error::Unauthenticated),
            };
        }
        if let (Some(certs), Some(chain)) = (&self.certs, certs::peer_chain(extensions)) {
            return certs.principal(&chain);
        }
        Err(Error::Unauthenticated)
    }
}

/// The bearer token of the `authorization` header: `None` without the header, `Unauthenticated`
/// for any other scheme or a malformed value.
fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Error> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Ok(None) };
    if value.len() > AUTHORIZATION_LEN_MAX {
        return Err(Error::Unauthenticated);
    }
    let value = value.to_str().map_err(|_| Error::Unauthenticated)?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(Error::Unauthenticated)?.trim();
    if token.is_empty() {
        return Err(Error::Unauthenticated);
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_tokens_are_taken() {
        let long = format!("Bearer allot_{}", "a".repeat(AUTHORIZATION_LEN_MAX));
        let cases = [
            (Some("Bearer allot_abc"), Ok(Some("allot_abc"))),
            (Some("bearer allot_abc "), Ok(Some("allot_abc"))),
            (Some("Bearer eyJ.x.y"), Ok(Some("eyJ.x.y"))),
            (Some("Basic allot_abc"), Err(())),
            (Some("Bearer "), Err(())),
            (Some(long.as_str()), Err(())),
            (None, Ok(None)),
        ];
        for (header, expected) in cases {
            let mut headers = http::HeaderMap::new();
            if let Some(h) = header {
                headers.insert(http::header::AUTHORIZATION, h.parse().expect("ascii"));
            }
            assert_eq!(bearer(&headers).map_err(|_| ()), expected, "{header:?}");
        }
    }

    #[test]
    fn credentials_name_themselves_without_secrets() {
        let id = Uuid::nil();
        assert_eq!(Credential::ApiKey(id).to_string(), format!("api_key:{id}"));
        assert_eq!(Credential::Jwt { issuer: "iss".into(), subject: "svc".into() }.to_string(), "jwt:iss#svc");
        assert_eq!(Credential::Certificate("spiffe://a/b".into()).to_string(), "cert:spiffe://a/b");
    }
}
