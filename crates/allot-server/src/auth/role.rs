//! What a credential may do. Roles are ordered: `check` < `charge` < `admin`, and a credential
//! may call every RPC whose required role is at most its own (an admin may also charge and
//! check; a charging service may also check).

use std::fmt;
use std::str::FromStr;

/// A credential's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read-only: decisions (`Check`), balances, usage, plans, prices, events.
    Check,
    /// Moves credit on the hot path: debit, reserve, commit, release, refund, classifications.
    Charge,
    /// Changes the tenant's set-up: plans, subscriptions, accounts, grants, trials, prices and
    /// fair-use controls. Every admin action is audited.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Check, Role::Charge, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Check => "check",
            Role::Charge => "charge",
            Role::Admin => "admin",
        }
    }

    /// Whether a credential of this role may call an RPC that requires `required`.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `check`, `charge` or `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected check, charge or admin)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.chars().take(32).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Admin.allows(Role::Charge) && Role::Admin.allows(Role::Check));
        assert!(Role::Charge.allows(Role::Check) && !Role::Charge.allows(Role::Admin));
        assert!(!Role::Check.allows(Role::Charge));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err() && "Admin".parse::<Role>().is_err());
    }
}
