-- A version of each tenant's configuration: the plans (headers and the free default), their
-- meters' terms, their soft caps and the fair-use settings. Every write to those tables moves it,
-- in the writer's own transaction, whoever writes (any replica, a migration, a DBA by hand).
--
-- Batches of checks and debits read the version (one primary-key look-up) instead of the
-- configuration itself, and take the configuration from an in-process cache filled at that
-- version (`service::plan_book`): a cached entry is used only by a batch that read the same
-- version, so no replica ever decides on configuration older than its own transaction's view
-- (docs/benchmarks.md, finding 22).
ALTER TABLE tenants ADD COLUMN config_version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION allot_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed uuid := CASE TG_OP WHEN 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    UPDATE tenants SET config_version = config_version + 1 WHERE id = changed;
    -- A write the tenants row cannot see (another tenant's context) would leave caches stale:
    -- refuse it. A delete may find the tenant gone (a cascade from the tenant itself).
    IF NOT FOUND AND TG_OP <> 'DELETE' THEN
        RAISE EXCEPTION 'configuration of tenant % written outside its context', changed;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER config_version AFTER INSERT OR UPDATE OR DELETE ON plans
    FOR EACH ROW EXECUTE FUNCTION allot_config_changed();
CREATE TRIGGER config_version AFTER INSERT OR UPDATE OR DELETE ON plan_meters
    FOR EACH ROW EXECUTE FUNCTION allot_config_changed();
CREATE TRIGGER config_version AFTER INSERT OR UPDATE OR DELETE ON soft_caps
    FOR EACH ROW EXECUTE FUNCTION allot_config_changed();
CREATE TRIGGER config_version AFTER INSERT OR UPDATE OR DELETE ON escalation_settings
    FOR EACH ROW EXECUTE FUNCTION allot_config_changed();
