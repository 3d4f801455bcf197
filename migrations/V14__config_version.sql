-- A version of each tenant's configuration: the plans (headers and the free default), their
-- meters' terms, their soft caps and the fair-use settings. Every write to those tables moves it,
-- in the writer's own transaction, whoever writes (any replica, a migration, a DBA by hand).
--
-- Batches of checks and debits read the version (one primary-key look-up) instead of the
-- configuration itself, and take the configuration from an in-process cache filled at that
-- version (`service::plan_book`): a cached entry is used only by a batch that read the same
-- version, so no replica ever decides on configuration older than its own transaction's view
-- (docs/benchmarks.md, finding 22).
--
-- The version moves forward by a random stride, not by one: should a failover to an
-- asynchronous standby or a restore lose a write, the next write does not hand out the lost
-- write's number again for other content (a replica may still hold that number's entry).
ALTER TABLE tenants ADD COLUMN config_version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION allot_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed uuid := CASE TG_OP WHEN 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    UPDATE tenants SET config_version = config_version + 1 + floor(random() * 1000000)::bigint WHERE id = changed;
    -- A write that cannot see its tenant's row (another tenant's context, a job across tenants)
    -- would leave caches stale: refuse it. (A tenant with configuration cannot be deleted: the
    -- configuration tables reference it without a cascade.)
    IF NOT FOUND THEN
        RAISE EXCEPTION 'configuration of tenant % written where its tenant row is not visible', changed;
    END IF;
    RETURN NULL;
END;
$$;

-- TRUNCATE (only an owner or a DBA may) moves every visible tenant's version.
CREATE FUNCTION allot_config_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenants SET config_version = config_version + 1 + floor(random() * 1000000)::bigint;
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
CREATE TRIGGER config_version_truncate AFTER TRUNCATE ON plans
    FOR EACH STATEMENT EXECUTE FUNCTION allot_config_truncated();
CREATE TRIGGER config_version_truncate AFTER TRUNCATE ON plan_meters
    FOR EACH STATEMENT EXECUTE FUNCTION allot_config_truncated();
CREATE TRIGGER config_version_truncate AFTER TRUNCATE ON soft_caps
    FOR EACH STATEMENT EXECUTE FUNCTION allot_config_truncated();
CREATE TRIGGER config_version_truncate AFTER TRUNCATE ON escalation_settings
    FOR EACH STATEMENT EXECUTE FUNCTION allot_config_truncated();
