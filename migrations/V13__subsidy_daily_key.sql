-- One index on `subsidy_daily`, keyed `(tenant_id, pool_id, day, identity)`.
--
-- Every subsidised request reads and updates its identity's row for the day by the full key.
-- With a second index on `(tenant_id, pool_id, day)` (for the day's report by tier), plans made
-- while the table's statistics were those of a small table looked the identity's row up through
-- that index, filtering `identity` over every identity of the day: the cost of a request grew
-- with the pool's identities that day (docs/benchmarks.md, finding 17). The key now leads with the
-- day, so it serves both the per-identity look-ups (all four columns) and the report (its
-- prefix), and there is no other index to prefer.
ALTER TABLE subsidy_daily
    DROP CONSTRAINT subsidy_daily_pkey,
    ADD PRIMARY KEY (tenant_id, pool_id, day, identity);
DROP INDEX subsidy_daily_by_day;
