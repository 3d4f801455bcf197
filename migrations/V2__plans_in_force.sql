-- Plans in force: rate caps, org pooling with member caps, cancellation at period end,
-- multi-meter holds, ledger attributes and usage roll-ups.

ALTER TABLE plans ADD COLUMN scope text NOT NULL DEFAULT 'user' CHECK (scope IN ('user', 'org'));

ALTER TABLE plan_meters
    ADD COLUMN rate_limit_per_minute bigint CHECK (rate_limit_per_minute > 0),
    ADD COLUMN rate_burst bigint CHECK (rate_burst > 0),
    ADD COLUMN rate_fail_open boolean NOT NULL DEFAULT true,
    ADD COLUMN member_cap_credits bigint CHECK (member_cap_credits >= 0);

ALTER TABLE subscriptions ADD COLUMN cancel_at_period_end boolean NOT NULL DEFAULT false;

-- A plan change mid-period may leave more used than the new allowance.
ALTER TABLE meter_balances DROP CONSTRAINT meter_balances_check;

-- Accounts and their org. Accounts without a row are stand-alone.
CREATE TABLE accounts (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          text NOT NULL,
    org_id      text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK (org_id IS NULL OR org_id <> id)
);
CREATE INDEX accounts_by_org ON accounts (tenant_id, org_id) WHERE org_id IS NOT NULL;

-- A hold may cover several meters: one row per meter, sharing the hold id.
ALTER TABLE holds DROP CONSTRAINT holds_pkey;
ALTER TABLE holds
    ADD PRIMARY KEY (tenant_id, id, meter),
    ADD COLUMN acting_account_id text,
    ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}';
UPDATE holds SET acting_account_id = account_id;
ALTER TABLE holds ALTER COLUMN acting_account_id SET NOT NULL;
CREATE INDEX holds_by_member ON holds (tenant_id, account_id, meter, acting_account_id) WHERE status = 'held';

ALTER TABLE ledger_entries
    ADD COLUMN acting_account_id text,
    ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}';

-- A pooled member's use of an org meter per period (debits and commits, less refunds).
CREATE TABLE member_usage (
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    org_id             text NOT NULL,
    meter              text NOT NULL,
    period_start       timestamptz NOT NULL,
    member_id          text NOT NULL,
    used_credits       bigint NOT NULL DEFAULT 0 CHECK (used_credits >= 0),
    PRIMARY KEY (tenant_id, org_id, meter, period_start, member_id)
);

-- Charged totals per attribute value and period, kept in the same transaction as the ledger so
-- breakdowns never scan the ledger. `attr_key` '' holds the meter's overall total.
CREATE TABLE usage_rollups (
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    account_id     text NOT NULL,
    meter          text NOT NULL,
    period_start   timestamptz NOT NULL,
    attr_key       text NOT NULL,
    attr_value     text NOT NULL,
    total_credits  bigint NOT NULL DEFAULT 0,
    charges        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, account_id, meter, period_start, attr_key, attr_value)
);

-- A plan change mid-period is recorded in the ledger.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('debit', 'commit', 'refund', 'grant', 'period_roll', 'grant_expiry', 'plan_change'));
