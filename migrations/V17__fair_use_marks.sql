-- A mark on the account row of every account that has fair-use state: an exemption, a stored
-- stage or a violation.
--
-- Every batch of checks and debits reads its accounts' fair-use standings, and nearly every
-- account has none: the three subqueries that read them (exemption, violations in the window,
-- stored stage) were about half of what PostgreSQL spent starting and running a batch's standing
-- read (docs/benchmarks.md, findings 55 and 59). The batch now reads the mark with the account's
-- org membership, one probe of `accounts`, and reads the standings of marked accounts only.
--
-- The mark is set by triggers in the transaction that writes the state, before the state row
-- is written, so a snapshot that sees no mark sees no state either, and an account's first mark
-- is the first lock its state takes in every transaction that writes any. It is never cleared
-- (an account whose exemption was removed keeps its mark and is read the longer way), so a
-- trigger that finds it set writes nothing and takes no lock: an upsert that finds its row locks
-- it even when it changes nothing. A row the trigger creates has no org, as an absent row has.
ALTER TABLE accounts ADD COLUMN fair_use_marked boolean NOT NULL DEFAULT false;

CREATE FUNCTION allot_mark_fair_use() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts WHERE tenant_id = NEW.tenant_id AND id = NEW.account_id AND fair_use_marked;
    IF NOT FOUND THEN
        INSERT INTO accounts (tenant_id, id, fair_use_marked) VALUES (NEW.tenant_id, NEW.account_id, true)
        ON CONFLICT (tenant_id, id) DO UPDATE SET fair_use_marked = true;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER mark_fair_use BEFORE INSERT OR UPDATE OF account_id ON escalation_exempt
    FOR EACH ROW EXECUTE FUNCTION allot_mark_fair_use();
CREATE TRIGGER mark_fair_use BEFORE INSERT OR UPDATE OF account_id ON escalation_state
    FOR EACH ROW EXECUTE FUNCTION allot_mark_fair_use();
CREATE TRIGGER mark_fair_use BEFORE INSERT OR UPDATE OF account_id, violation ON classifications
    FOR EACH ROW WHEN (NEW.violation) EXECUTE FUNCTION allot_mark_fair_use();

-- Marks for the state written before this migration. Row-level security is forced on these
-- tables even for their owner (V8), and a migration has no tenant: lifted for the owner while
-- the marks are written, restored before the transaction ends.
ALTER TABLE accounts NO FORCE ROW LEVEL SECURITY;
ALTER TABLE escalation_exempt NO FORCE ROW LEVEL SECURITY;
ALTER TABLE escalation_state NO FORCE ROW LEVEL SECURITY;
ALTER TABLE classifications NO FORCE ROW LEVEL SECURITY;
INSERT INTO accounts (tenant_id, id, fair_use_marked)
SELECT DISTINCT tenant_id, account_id, true FROM (
    SELECT tenant_id, account_id FROM escalation_exempt
    UNION ALL SELECT tenant_id, account_id FROM escalation_state
    UNION ALL SELECT tenant_id, account_id FROM classifications WHERE violation
) AS s
ON CONFLICT (tenant_id, id) DO UPDATE SET fair_use_marked = true;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
ALTER TABLE escalation_exempt FORCE ROW LEVEL SECURITY;
ALTER TABLE escalation_state FORCE ROW LEVEL SECURITY;
ALTER TABLE classifications FORCE ROW LEVEL SECURITY;
