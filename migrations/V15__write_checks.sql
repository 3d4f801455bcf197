-- A check that a statement wrote as many rows as it was meant to, made inside the statement.
--
-- A debit batch sends its `COMMIT` right behind its writes, in the same round trip
-- (`service/credits/batch/group.rs`, docs/benchmarks.md finding 30). A count checked by the
-- server once a write has answered would come too late: the `COMMIT` is already on its way.
-- Checked here instead, a short write raises, the transaction is aborted, and the `COMMIT` that
-- follows it ends it as a `ROLLBACK`: nothing of the batch is written.
--
-- Used as `WITH w AS (INSERT/UPDATE … RETURNING 1) SELECT allot_expect_rows(count(*), $n, 'what') FROM w`
-- (an aggregate always yields its one row, so the function always runs).
CREATE FUNCTION allot_expect_rows(written bigint, expected bigint, what text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF written IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'a batch wrote % of % %', written, expected, what
            USING HINT = 'the batch is rolled back and its requests are decided alone';
    END IF;
    RETURN written;
END;
$$;
