-- The current period's overall usage of a meter lives on its row in `meter_balances`.
--
-- `usage_rollups` kept a meter's overall total per period under `attr_key` '' — a row upserted by
-- every charge besides the meter's own row, which the charge updates anyway. The overall total
-- and count of charges of one period are now columns of that row, with the period they belong
-- to (`period_usage_start`, NULL while they are zero). When a meter's row is saved in a later
-- period, the figures of the earlier one are added to its '' roll-up, as are refunds of a
-- period that is over. The overall usage of a period is therefore its '' roll-up (if any) plus
-- the row's figures when they belong to it.
--
-- Because the figures name their own period, a binary from before this migration that saves the
-- row (a rolling upgrade) cannot move them to the wrong period: it leaves them as they are, with
-- their period, and writes its own charges to the '' roll-up as before. Rolling back below this
-- migration is not supported: older binaries do not read these columns.
ALTER TABLE meter_balances
    ADD COLUMN period_usage_start timestamptz,
    ADD COLUMN period_charged_credits bigint NOT NULL DEFAULT 0,
    ADD COLUMN period_charges bigint NOT NULL DEFAULT 0 CHECK (period_charges >= 0),
    ADD CHECK (period_usage_start IS NOT NULL OR (period_charged_credits = 0 AND period_charges = 0));
