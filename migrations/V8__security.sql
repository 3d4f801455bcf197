-- Security and tenancy (docs/security.md): API key roles, the server's restricted database role,
-- row-level security on every tenant table, and the append-only admin audit trail.

-- API keys carry a role; keys issued before roles existed keep full (admin) rights.
ALTER TABLE api_keys ADD COLUMN role text NOT NULL DEFAULT 'admin' CHECK (role IN ('check', 'charge', 'admin'));

-- Admin actions: who (the credential, never a secret), what (the RPC and its target), and the
-- state before and after, written in the action's own transaction.
CREATE TABLE admin_audit (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    id            bigserial,
    actor         text NOT NULL CHECK (length(actor) BETWEEN 1 AND 600),
    actor_role    text NOT NULL CHECK (actor_role IN ('check', 'charge', 'admin')),
    method        text NOT NULL CHECK (length(method) BETWEEN 1 AND 128),
    subject_kind  text NOT NULL,
    subject_key   text NOT NULL,
    before        jsonb,
    after         jsonb,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE FUNCTION admin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'admin_audit is append-only';
END;
$$;
CREATE TRIGGER admin_audit_append_only
    BEFORE UPDATE OR DELETE ON admin_audit
    FOR EACH ROW EXECUTE FUNCTION admin_audit_append_only();
CREATE TRIGGER admin_audit_no_truncate
    BEFORE TRUNCATE ON admin_audit
    FOR EACH STATEMENT EXECUTE FUNCTION admin_audit_append_only();

-- The role the server acts as (`Config::db_role`, `SET ROLE` at connect): no BYPASSRLS, owns no
-- table, so row-level security applies to it. Roles are per cluster: another database of the
-- cluster (or a DBA) may have created it already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'allot_app') THEN
        CREATE ROLE allot_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created concurrently by another database's migration
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'role allot_app is missing and % may not create roles; have a DBA run: CREATE ROLE allot_app NOLOGIN; GRANT allot_app TO %', current_user, current_user;
END;
$$;
-- The migrating (login) role must be able to act as it.
DO $$
BEGIN
    EXECUTE format('GRANT allot_app TO %I', current_user);
EXCEPTION WHEN duplicate_object OR invalid_grant_operation OR insufficient_privilege THEN
    RAISE NOTICE 'could not grant allot_app to %: grant it by hand', current_user;
END;
$$;

GRANT USAGE ON SCHEMA public TO allot_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO allot_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO allot_app;
-- Append-only tables: the server may add and read, never change or remove.
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries, admin_audit FROM allot_app;
-- Migrations are not the server's business.
REVOKE ALL ON refinery_schema_history FROM allot_app;
-- Tables of later migrations (created by the same migrating role) get the same rights.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO allot_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO allot_app;

-- The transaction's tenant (`db::begin` sets it with set_config(..., true)); NULL outside one,
-- so a statement without it sees nothing. After a transaction-local setting ends, the value
-- reads as '' in that session, hence NULLIF.
CREATE FUNCTION allot_tenant() RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT NULLIF(current_setting('allot.tenant_id', true), '')::uuid
$$;
-- A background job spanning tenants (`db::begin_all_tenants`), on the tables opened to it below.
CREATE FUNCTION allot_all_tenants() RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(current_setting('allot.all_tenants', true), '') = 'on'
$$;

-- Row-level security on every table with a tenant_id column (including any added before this
-- migration ran), forced so that a table owner is held to it too. Superusers and BYPASSRLS
-- roles are not; the server never runs as one (`allot_app`).
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.tables tb ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name
        WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' AND tb.table_type = 'BASE TABLE'
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t.table_name);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t.table_name);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = allot_tenant()) WITH CHECK (tenant_id = allot_tenant())', t.table_name);
    END LOOP;
END;
$$;
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (id = allot_tenant()) WITH CHECK (id = allot_tenant());

-- The documented paths across tenants (`db::AllTenants`), each on the tables it needs:
-- the API key lookup (api_keys), the hold sweeper (holds, restrict_usage) and the trial sweep
-- (trials, plans, outbox_counters, outbox_events).
CREATE POLICY background_all_tenants ON api_keys USING (allot_all_tenants());
CREATE POLICY background_all_tenants ON holds USING (allot_all_tenants());
CREATE POLICY background_all_tenants ON restrict_usage USING (allot_all_tenants());
CREATE POLICY background_all_tenants ON trials USING (allot_all_tenants());
CREATE POLICY background_all_tenants ON plans USING (allot_all_tenants());
CREATE POLICY background_all_tenants ON outbox_counters USING (allot_all_tenants());
CREATE POLICY background_all_tenants ON outbox_events USING (allot_all_tenants());
