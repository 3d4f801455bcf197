-- V17's fair-use mark, taken without a lock once the account is marked, and before the state row.
--
-- V17's trigger upserted the account's row after every insert of fair-use state, and an upsert
-- that finds its row locks it even when it changes nothing: every violation recorded locked the
-- account's `accounts` row, after the state row, while a batch's first stage row for an account
-- locked them in the other order. The trigger now reads the mark first and writes it only when
-- it is not set yet (a mark is never cleared, so a mark it sees stays), and runs before the row
-- it guards is written: an account's first mark is then the first lock its state takes, in every
-- transaction that writes any.
CREATE OR REPLACE FUNCTION allot_mark_fair_use() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts WHERE tenant_id = NEW.tenant_id AND id = NEW.account_id AND fair_use_marked;
    IF NOT FOUND THEN
        INSERT INTO accounts (tenant_id, id, fair_use_marked) VALUES (NEW.tenant_id, NEW.account_id, true)
        ON CONFLICT (tenant_id, id) DO UPDATE SET fair_use_marked = true;
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER mark_fair_use ON escalation_exempt;
DROP TRIGGER mark_fair_use ON escalation_state;
DROP TRIGGER mark_fair_use ON classifications;
CREATE TRIGGER mark_fair_use BEFORE INSERT OR UPDATE OF account_id ON escalation_exempt
    FOR EACH ROW EXECUTE FUNCTION allot_mark_fair_use();
CREATE TRIGGER mark_fair_use BEFORE INSERT OR UPDATE OF account_id ON escalation_state
    FOR EACH ROW EXECUTE FUNCTION allot_mark_fair_use();
CREATE TRIGGER mark_fair_use BEFORE INSERT OR UPDATE OF account_id, violation ON classifications
    FOR EACH ROW WHEN (NEW.violation) EXECUTE FUNCTION allot_mark_fair_use();
