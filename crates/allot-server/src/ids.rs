//! Validated identifiers. Every string that names something in a request passes through here
//! once, at the gRPC edge; past that point the types guarantee their shape.

use std::fmt;

/// Longest account id, meter name, plan id or idempotency key.
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("may contain only ASCII letters, digits and . _ - : @ /")]
    BadCharacter,
}

fn validate(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@' | b'/')) {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                validate(raw).map(|()| Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// The caller's name for a user or org account, unique within a tenant.
    AccountId
);
string_id!(
    /// A usage dimension, e.g. `requests`, `tokens`, `audio_ms`.
    Meter
);
string_id!(
    /// A plan's id within a tenant.
    PlanId
);
string_id!(
    /// A caller-chosen key that makes a mutation idempotent, unique per tenant.
    IdempotencyKey
);

string_id!(
    /// A subsidy pool's id within a tenant.
    PoolId
);
string_id!(
    /// Who receives a subsidy: a caller-supplied stable id (for example a hash of a verified
    /// email or device), or the account id when none is given. Daily budgets count per identity.
    Identity
);
string_id!(
    /// A trust tier's name, e.g. `new`, `established`, `trusted`, `elite`.
    TrustTier
);

/// The tenant a caller acts for; taken from its credential, never from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantId(pub uuid::Uuid);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_plain() {
        let long = "a".repeat(MAX_ID_LEN + 1);
        let cases = [
            ("user-42", Ok(())),
            ("org:acme/user@x.y_z", Ok(())),
            ("", Err(IdError::Empty)),
            (long.as_str(), Err(IdError::TooLong)),
            ("a b", Err(IdError::BadCharacter)),
            ("é", Err(IdError::BadCharacter)),
            ("x'; drop table", Err(IdError::BadCharacter)),
        ];
        for (raw, expected) in cases {
            assert_eq!(AccountId::parse(raw).map(|_| ()), expected, "{raw:?}");
        }
    }
}
