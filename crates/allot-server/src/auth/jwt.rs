//! Bearer JWTs, verified against configured keys: an HS256 secret and/or RSA, EC or Ed25519
//! public keys (PEM files). A token must carry a signature by one of them in an allowed
//! algorithm, the configured issuer and audience, an expiry (checked with a small leeway) and the
//! claims `tenant_id` (a UUID) and `role` (`check`, `charge`, `admin`). `alg=none`, unsigned and
//! unverifiable tokens are refused: the algorithm must be on the allow-list and match the key.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{Credential, Principal, Role};
use crate::error::Error;
use crate::ids::TenantId;

/// Shortest HS256 secret accepted, in bytes.
pub const HS256_SECRET_LEN_MIN: usize = 32;
/// Most public key files.
pub const PUBLIC_KEYS_MAX: usize = 16;
/// Longest issuer or subject kept for the audit trail, in bytes.
pub const NAME_LEN_MAX: usize = 256;

/// Where the JWT settings come from (see `Config`).
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    pub hs256_secret: Option<Vec<u8>>,
    pub public_keys_pem: Vec<(String, Vec<u8>)>,
    pub issuer: String,
    pub audience: String,
    pub leeway_ms: u64,
    /// Allowed algorithms; empty = every algorithm of the configured keys' families (HS256 for
    /// the secret; RS256/PS256, ES256/ES384 or EdDSA for public keys).
    pub algorithms: Vec<Algorithm>,
}

/// A JWT setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("jwt: {0}")]
    Invalid(String),
}

struct Key {
    name: String,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Verifies bearer JWTs.
pub struct JwtVerifier {
    keys: Vec<Key>,
    validation: Validation,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    tenant_id: String,
    role: String,
}

/// Reads a file for a setting, naming the setting (never the content) on failure.
pub fn read_setting_file(setting: &str, path: &Path) -> Result<Vec<u8>, JwtConfigError> {
    std::fs::read(path).map_err(|e| JwtConfigError::Invalid(format!("{setting}: {} cannot be read ({e})", path.display())))
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings) -> Result<JwtVerifier, JwtConfigError> {
        let invalid = |m: String| JwtConfigError::Invalid(m);
        if settings.issuer.is_empty() || settings.audience.is_empty() {
            return Err(invalid("an issuer and an audience are required".into()));
        }
        if settings.public_keys_pem.len() > PUBLIC_KEYS_MAX {
            return Err(invalid(format!("at most {PUBLIC_KEYS_MAX} public keys")));
        }
        let mut keys = Vec::new();
        if let Some(secret) = &settings.hs256_secret {
            let secret = secret.trim_ascii();
            if secret.len() < HS256_SECRET_LEN_MIN {
                return Err(invalid(format!("the HS256 secret must be at least {HS256_SECRET_LEN_MIN} bytes")));
            }
            keys.push(Key { name: "hs256".into(), key: DecodingKey::from_secret(secret), algorithms: vec![Algorithm::HS256] });
        }
        for (name, pem) in &settings.public_keys_pem {
            let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                (key, vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512])
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                (key, vec![Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                (key, vec![Algorithm::EdDSA])
            } else {
                return Err(invalid(format!("{name}: not an RSA, EC or Ed25519 public key in PEM")));
            };
            keys.push(Key { name: name.clone(), key, algorithms });
        }
        if keys.is_empty() {
            return Err(invalid("no key configured".into()));
        }
        if !settings.algorithms.is_empty() {
            for key in &mut keys {
                key.algorithms.retain(|a| settings.algorithms.contains(a));
            }
            if let Some(unused) = keys.iter().find(|k| k.algorithms.is_empty()) {
                return Err(invalid(format!("key {} can verify none of the allowed algorithms", unused.name)));
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = keys.iter().flat_map(|k| k.algorithms.iter().copied()).collect();
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = settings.leeway_ms.div_ceil(1_000);
        Ok(JwtVerifier { keys, validation })
    }

    /// The principal of a valid token, or `Unauthenticated` (the reason is logged at debug, never
    /// sent: it would help a forger).
    pub fn verify(&self, token: &str) -> Result<Principal, Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse("header", &e))?;
        let mut last = None;
        for key in self.keys.iter().filter(|k| k.algorithms.contains(&header.alg)) {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![header.alg];
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return principal(data.claims),
                Err(err) => last = Some(err),
            }
        }
        Err(match last {
            Some(err) => refuse("token", &err),
            None => refuse("algorithm", &format!("{:?} is not allowed", header.alg)),
        })
    }
}

fn refuse(what: &str, why: &dyn std::fmt::Display) -> Error {
    tracing::debug!(jwt.refused = what, reason = %why, "jwt refused");
    Error::Unauthenticated
}

fn principal(claims: Claims) -> Result<Principal, Error> {
    let tenant = uuid::Uuid::parse_str(&claims.tenant_id).map_err(|_| refuse("tenant_id", &"not a UUID"))?;
    let role: Role = claims.role.parse().map_err(|e| refuse("role", &e))?;
    if claims.sub.is_empty() || claims.sub.len() > NAME_LEN_MAX || claims.iss.len() > NAME_LEN_MAX {
        return Err(refuse("sub", &"empty or too long"));
    }
    Ok(Principal { tenant: TenantId(tenant), role, credential: Credential::Jwt { issuer: claims.iss, subject: claims.sub } })
}

/// Parses an allow-list like `HS256,RS256`.
pub fn parse_algorithms(list: &str) -> Result<Vec<Algorithm>, JwtConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.parse::<Algorithm>().map_err(|_| JwtConfigError::Invalid(format!("unknown algorithm {a:?}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            issuer: "https://idp.test".into(),
            audience: "allot".into(),
            leeway_ms: 30_000,
            ..JwtSettings::default()
        })
        .expect("verifier")
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn claims(exp: i64) -> serde_json::Value {
        json!({"iss": "https://idp.test", "aud": "allot", "sub": "checkout", "exp": exp,
               "tenant_id": "6f1c2b9e-0000-4000-8000-000000000001", "role": "charge"})
    }

    fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).expect("sign")
    }

    #[test]
    fn a_valid_token_names_tenant_role_and_subject() {
        let p = verifier().verify(&sign(&claims(now() + 300), SECRET)).expect("valid");
        assert_eq!((p.role, p.tenant.to_string().as_str()), (Role::Charge, "6f1c2b9e-0000-4000-8000-000000000001"));
        assert_eq!(p.credential.to_string(), "jwt:https://idp.test#checkout");
    }

    #[test]
    fn forged_expired_unsigned_and_foreign_tokens_are_refused() {
        let v = verifier();
        let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(now() + 300)));
        let mut tampered = sign(&claims(now() + 300), SECRET);
        tampered.insert(tampered.rfind('.').expect("dot") + 1, 'A');
        let mut other = claims(now() + 300);
        let cases = [
            ("alg=none", unsigned),
            ("wrong secret", sign(&claims(now() + 300), b"another-secret-another-secret-xx")),
            ("expired beyond leeway", sign(&claims(now() - 120), SECRET)),
            ("tampered signature", tampered),
            ("garbage", "a.b.c".into()),
            ("wrong audience", {
                other["aud"] = json!("someone-else");
                sign(&other, SECRET)
            }),
            (
                "wrong issuer",
                sign(
                    &json!({"iss": "evil", "aud": "allot", "sub": "x", "exp": now() + 300, "tenant_id": "6f1c2b9e-0000-4000-8000-000000000001", "role": "admin"}),
                    SECRET,
                ),
            ),
            (
                "no expiry",
                sign(
                    &json!({"iss": "https://idp.test", "aud": "allot", "sub": "x", "tenant_id": "6f1c2b9e-0000-4000-8000-000000000001", "role": "admin"}),
                    SECRET,
                ),
            ),
            (
                "unknown role",
                sign(
                    &json!({"iss": "https://idp.test", "aud": "allot", "sub": "x", "exp": now() + 300, "tenant_id": "6f1c2b9e-0000-4000-8000-000000000001", "role": "root"}),
                    SECRET,
                ),
            ),
            (
                "bad tenant",
                sign(
                    &json!({"iss": "https://idp.test", "aud": "allot", "sub": "x", "exp": now() + 300, "tenant_id": "acme", "role": "admin"}),
                    SECRET,
                ),
            ),
        ];
        for (what, token) in cases {
            assert!(matches!(v.verify(&token), Err(Error::Unauthenticated)), "{what} must be refused");
        }
        v.verify(&sign(&claims(now() - 10), SECRET)).expect("expired within the leeway is accepted");
    }

    #[test]
    fn public_keys_verify_their_own_algorithms_and_resist_algorithm_confusion() {
        let key = rcgen::KeyPair::generate().expect("P-256 key");
        let public_pem = key.public_key_pem();
        let v = JwtVerifier::new(JwtSettings {
            public_keys_pem: vec![("idp.pem".into(), public_pem.clone().into_bytes())],
            issuer: "https://idp.test".into(),
            audience: "allot".into(),
            ..JwtSettings::default()
        })
        .expect("verifier");
        let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec key");
        let token = encode(&Header::new(Algorithm::ES256), &claims(now() + 300), &signing).expect("sign");
        assert_eq!(v.verify(&token).expect("ES256 by the configured key").role, Role::Charge);
        // The classic confusion: HS256 keyed with the public key's bytes must not pass.
        let confused = sign(&claims(now() + 300), public_pem.as_bytes());
        assert!(matches!(v.verify(&confused), Err(Error::Unauthenticated)), "HS256 against a public key");
        let other = rcgen::KeyPair::generate().expect("another key");
        let forged =
            encode(&Header::new(Algorithm::ES256), &claims(now() + 300), &EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).expect("ec"))
                .expect("sign");
        assert!(matches!(v.verify(&forged), Err(Error::Unauthenticated)), "another key's signature");
    }

    #[test]
    fn an_algorithm_off_the_list_is_refused() {
        let v = JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            issuer: "i".into(),
            audience: "a".into(),
            algorithms: parse_algorithms("RS256").expect("list"),
            ..JwtSettings::default()
        });
        assert!(v.is_err(), "a secret that may verify no allowed algorithm is a configuration error");
        let token = encode(&Header::new(Algorithm::HS384), &claims(now() + 300), &EncodingKey::from_secret(SECRET)).expect("sign");
        assert!(matches!(verifier().verify(&token), Err(Error::Unauthenticated)), "HS384 is not on the default list");
        assert!(parse_algorithms("HS256, none").is_err());
    }
}
