//! The one authorization table: every RPC's full gRPC path and the role it requires. The auth
//! layer (`auth::layer`) consults it for every call before any handler runs; a path that is not
//! here and not open (health, reflection) is refused. A unit test checks the table against the
//! compiled descriptor set, so a new RPC without an entry fails the build's tests.

use super::role::Role;

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential: health checks and reflection.
    Open,
    /// A credential of at least this role.
    Requires(Role),
    /// Not an RPC of this server.
    Unknown,
}

/// Services anyone may call (probes and `grpcurl list`).
pub const OPEN_SERVICES: [&str; 3] = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Every Allot RPC and the role it requires.
pub const METHODS: &[(&str, Role)] = &[
    // The hot path: decisions are read-only, moving credit needs `charge`.
    ("/allot.v1.Entitlements/Check", Role::Check),
    ("/allot.v1.Entitlements/Debit", Role::Charge),
    ("/allot.v1.Entitlements/Reserve", Role::Charge),
    ("/allot.v1.Entitlements/Commit", Role::Charge),
    ("/allot.v1.Entitlements/Release", Role::Charge),
    ("/allot.v1.Entitlements/Refund", Role::Charge),
    ("/allot.v1.Entitlements/GetUsageSummary", Role::Check),
    ("/allot.v1.Entitlements/GetUsageBreakdown", Role::Check),
    // Streams of calls open with their unary twin's role; each request is checked again.
    ("/allot.v1.Entitlements/CheckStream", Role::Check),
    ("/allot.v1.Entitlements/DebitStream", Role::Charge),
    // Set-up: reads are `check`, every change is `admin` (and audited).
    ("/allot.v1.Admin/UpsertPlan", Role::Admin),
    ("/allot.v1.Admin/GetPlan", Role::Check),
    ("/allot.v1.Admin/ListPlans", Role::Check),
    ("/allot.v1.Admin/UpsertSubscription", Role::Admin),
    ("/allot.v1.Admin/GetSubscription", Role::Check),
    ("/allot.v1.Admin/UpsertAccount", Role::Admin),
    ("/allot.v1.Admin/GetAccount", Role::Check),
    ("/allot.v1.Admin/StartTrial", Role::Admin),
    ("/allot.v1.Admin/GrantCredits", Role::Admin),
    ("/allot.v1.Admin/GetBalance", Role::Check),
    ("/allot.v1.Admin/ListLedgerEntries", Role::Check),
    // Fair use: the classifier flow runs beside charging; controls are `admin`.
    ("/allot.v1.FairUse/RequestClassification", Role::Charge),
    ("/allot.v1.FairUse/SubmitClassification", Role::Charge),
    ("/allot.v1.FairUse/GetEscalation", Role::Check),
    ("/allot.v1.FairUse/GetSettings", Role::Check),
    ("/allot.v1.FairUse/UpdateSettings", Role::Admin),
    ("/allot.v1.FairUse/SetExempt", Role::Admin),
    ("/allot.v1.FairUse/SetSoftCaps", Role::Admin),
    ("/allot.v1.FairUse/WatchEvents", Role::Check),
    ("/allot.v1.FairUse/RequestClassificationStream", Role::Charge),
    // Prices: reads and estimates are `check`, the price book and policy are `admin`.
    ("/allot.v1.Pricing/UpsertPrice", Role::Admin),
    ("/allot.v1.Pricing/ListPrices", Role::Check),
    ("/allot.v1.Pricing/RetirePrice", Role::Admin),
    ("/allot.v1.Pricing/Estimate", Role::Check),
    ("/allot.v1.Pricing/GetPricingPolicy", Role::Check),
    ("/allot.v1.Pricing/UpdatePricingPolicy", Role::Admin),
    // Subsidy pools: status and the grant log are `check`, settings, top-ups and tiers `admin`.
    ("/allot.v1.Subsidy/UpsertPool", Role::Admin),
    ("/allot.v1.Subsidy/TopUpPool", Role::Admin),
    ("/allot.v1.Subsidy/UpsertTrustTier", Role::Admin),
    ("/allot.v1.Subsidy/SetAccountTrustTier", Role::Admin),
    ("/allot.v1.Subsidy/GetPoolStatus", Role::Check),
    ("/allot.v1.Subsidy/ListPoolGrants", Role::Check),
];

/// What the call to `path` (`/package.Service/Method`) needs.
pub fn access(path: &str) -> Access {
    if let Some((_, role)) = METHODS.iter().find(|(p, _)| *p == path) {
        return Access::Requires(*role);
    }
    let service = path.trim_start_matches('/').split_once('/').map_or("", |(service, _)| service);
    if OPEN_SERVICES.contains(&service) {
        Access::Open
    } else {
        Access::Unknown
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// `/package.Service/Method` of every method in Allot's compiled protos.
    fn described_methods() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(allot_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut paths = Vec::new();
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
        paths
    }

    #[test]
    fn every_rpc_declares_its_role() {
        let described = described_methods();
        assert!(described.len() >= 30, "the descriptor set lists the RPCs: {described:?}");
        for path in &described {
            assert!(matches!(access(path), Access::Requires(_)), "{path} has no entry in auth::methods::METHODS");
        }
        for (path, _) in METHODS {
            assert!(described.iter().any(|d| d == path), "{path} is in METHODS but is no RPC");
        }
        let mut seen = std::collections::HashSet::new();
        assert!(METHODS.iter().all(|(p, _)| seen.insert(*p)), "a path is listed twice");
    }

    #[test]
    fn health_and_reflection_are_open_and_the_rest_is_closed() {
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"), Access::Open);
        assert_eq!(access("/allot.v1.Admin/UpsertPlan"), Access::Requires(Role::Admin));
        assert_eq!(access("/allot.v1.Entitlements/Debit"), Access::Requires(Role::Charge));
        assert_eq!(access("/allot.v1.Admin/DropTables"), Access::Unknown);
        assert_eq!(access("/grpc.health.v1.Health"), Access::Unknown, "a service without a method is no call");
        assert_eq!(access(""), Access::Unknown);
    }
}
