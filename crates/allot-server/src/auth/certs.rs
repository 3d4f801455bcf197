//! Client certificates → principals. The TLS handshake (`crate::tls`) has already verified the
//! chain against the configured client CA and the validity dates; this maps the leaf
//! certificate's names (DNS and URI SANs, subject CN) to a tenant and role through a mapping
//! file, re-read with the certificates:
//!
//! ```toml
//! [[identity]]
//! match = "uri:spiffe://payments/checkout"   # or "dns:checkout.internal", "cn:checkout"
//! tenant_id = "6f1c2b9e-…"
//! role = "charge"
//! ```
//!
//! A certificate none of whose names is mapped is refused (`UNAUTHENTICATED`).

use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{Credential, Principal, Role};
use crate::error::Error;
use crate::ids::TenantId;

/// Most identities in a mapping file.
pub const IDENTITIES_MAX: usize = 10_000;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(rename = "match")]
    name: String,
    tenant_id: uuid::Uuid,
    role: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    identity: Vec<Entry>,
}

/// One mapped name: `dns:…`, `uri:…` or `cn:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub tenant: TenantId,
    pub role: Role,
}

/// The mapping, shared with the reloader.
#[derive(Clone, Default)]
pub struct CertIdentities(Arc<RwLock<Arc<Vec<Identity>>>>);

impl CertIdentities {
    /// Parses a mapping file's text.
    pub fn parse(text: &str) -> Result<Vec<Identity>, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        if file.identity.len() > IDENTITIES_MAX {
            return Err(format!("at most {IDENTITIES_MAX} identities"));
        }
        file.identity
            .into_iter()
            .map(|e| {
                let kind = e.name.split_once(':').map(|(k, _)| k);
                if !matches!(kind, Some("dns" | "uri" | "cn")) || e.name.len() > 1_024 {
                    return Err(format!("{:?}: a match is dns:NAME, uri:URI or cn:NAME", e.name));
                }
                let role = e.role.parse::<Role>().map_err(|err| err.to_string())?;
                Ok(Identity { name: e.name, tenant: TenantId(e.tenant_id), role })
            })
            .collect()
    }

    /// Reads and installs a mapping file; on error the previous mapping stays.
    pub fn load(&self, path: &Path) -> Result<usize, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{} cannot be read ({e})", path.display()))?;
        let identities = Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let count = identities.len();
        self.set(identities);
        Ok(count)
    }

    pub fn set(&self, identities: Vec<Identity>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(identities);
    }

    /// The principal of a verified chain's leaf certificate.
    pub fn principal(&self, chain: &[CertificateDer<'static>]) -> Result<Principal, Error> {
        let leaf = chain.first().ok_or(Error::Unauthenticated)?;
        let names = names(leaf).ok_or(Error::Unauthenticated)?;
        let identities = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        let found = identities.iter().find(|i| names.contains(&i.name)).ok_or_else(|| {
            tracing::debug!(cert.names = ?names, "client certificate not mapped to a tenant");
            Error::Unauthenticated
        })?;
        Ok(Principal { tenant: found.tenant, role: found.role, credential: Credential::Certificate(found.name.clone()) })
    }
}

/// The leaf certificate's names: `dns:…` and `uri:…` SANs and `cn:…` subject common names.
pub fn names(der: &CertificateDer<'_>) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(format!("dns:{dns}")),
                GeneralName::URI(uri) => names.push(format!("uri:{uri}")),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(format!("cn:{cn}"));
        }
    }
    Some(names)
}

/// The verified peer chain of a call that came over mTLS.
pub fn peer_chain(extensions: &http::Extensions) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_files_are_checked() {
        let good = "[[identity]]\nmatch = \"uri:spiffe://pay/checkout\"\ntenant_id = \"6f1c2b9e-0000-4000-8000-000000000001\"\nrole = \"charge\"\n";
        let parsed = CertIdentities::parse(good).expect("valid");
        assert_eq!(parsed[0].role, Role::Charge);
        for bad in [
            good.replace("uri:", "email:"),
            good.replace("charge", "root"),
            good.replace("6f1c2b9e-0000-4000-8000-000000000001", "acme"),
            format!("{good}extra = 1\n"),
        ] {
            assert!(CertIdentities::parse(&bad).is_err(), "{bad}");
        }
    }
}
