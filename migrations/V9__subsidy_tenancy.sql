-- Subsidy pools under the security model of V8: the grant log is append-only for the server's
-- role too, and the subsidy sweep (`db::AllTenants::SubsidySweep`) may find pending funding and
-- expired pool reservations across tenants (it settles each in its tenant's own transaction).
REVOKE UPDATE, DELETE, TRUNCATE ON subsidy_grants FROM allot_app;
CREATE POLICY background_all_tenants ON subsidy_pending_funding USING (allot_all_tenants());
CREATE POLICY background_all_tenants ON subsidy_holds USING (allot_all_tenants());
