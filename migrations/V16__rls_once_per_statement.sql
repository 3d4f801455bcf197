-- Row-level security's tenant check, evaluated once per statement instead of once per row.
--
-- The policies of V8 compare each row with `allot_tenant()`, a STABLE function that PostgreSQL
-- inlines as `NULLIF(current_setting('allot.tenant_id', true), '')::uuid` and evaluates for every
-- row a statement reads or writes: a uuid parsed from text per row (`uuid_in` was ~4 % of
-- PostgreSQL's CPU in a batch of checks; docs/benchmarks.md, finding 36). Wrapped in a scalar
-- subquery, the same function becomes an InitPlan: evaluated once per statement, its value then
-- compared with each row. What the policies admit is unchanged: the setting cannot change within
-- a statement, and without it (NULL) no row passes.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.relname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
        WHERE p.polname = 'tenant_isolation' AND c.relname <> 'tenants'
    LOOP
        EXECUTE format('ALTER POLICY tenant_isolation ON %I USING (tenant_id = (SELECT allot_tenant())) WITH CHECK (tenant_id = (SELECT allot_tenant()))', t.relname);
    END LOOP;
    FOR t IN
        SELECT c.relname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.polname = 'background_all_tenants'
    LOOP
        EXECUTE format('ALTER POLICY background_all_tenants ON %I USING ((SELECT allot_all_tenants()))', t.relname);
    END LOOP;
END;
$$;
ALTER POLICY tenant_isolation ON tenants USING (id = (SELECT allot_tenant())) WITH CHECK (id = (SELECT allot_tenant()));
