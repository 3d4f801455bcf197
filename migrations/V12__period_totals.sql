-- The current period's overall usage of a meter lives on its row in `meter_balances`.
--
-- `usage_rollups` kept a meter's overall total per period under `attr_key` '' — a row upserted by
-- every charge besides the meter's own row, which the charge updates anyway. The current period's
-- total and count of charges are now two columns of that row; when the meter moves to a new
-- period, the closing period's figures are added to its '' roll-up, as are refunds of a period
-- that is over. The overall usage of a period is therefore its '' roll-up (if any) plus the
-- row's figures while the row is in that period. Rows written before this migration keep their
-- '' roll-ups; the sum counts them once. Per-attribute roll-ups are unchanged.
ALTER TABLE meter_balances
    ADD COLUMN period_charged_credits bigint NOT NULL DEFAULT 0,
    ADD COLUMN period_charges bigint NOT NULL DEFAULT 0 CHECK (period_charges >= 0);
