-- Allot's first schema: tenants and their API keys, plans, subscriptions, per-meter balances,
-- grants, holds, the append-only ledger and idempotency records.
-- Every row carries tenant_id and every key starts with it, so the data can be split by tenant
-- and account.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Bearer API keys, stored as SHA-256 hashes; the key itself is shown once.
CREATE TABLE api_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    id            uuid NOT NULL,
    key_sha256    bytea NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE plans (
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    id               text NOT NULL,
    tier             text NOT NULL,
    name             text NOT NULL,
    trial_days       integer NOT NULL DEFAULT 0 CHECK (trial_days BETWEEN 0 AND 366),
    is_free_default  boolean NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
-- At most one fallback plan per tenant.
CREATE UNIQUE INDEX plans_one_free_default ON plans (tenant_id) WHERE is_free_default;

CREATE TABLE plan_meters (
    tenant_id             uuid NOT NULL,
    plan_id               text NOT NULL,
    meter                 text NOT NULL,
    allowance_credits     bigint CHECK (allowance_credits >= 0),  -- NULL = unlimited
    rollover_cap_credits  bigint NOT NULL DEFAULT 0 CHECK (rollover_cap_credits >= 0),
    debt_limit_credits    bigint NOT NULL DEFAULT 0 CHECK (debt_limit_credits >= 0),
    PRIMARY KEY (tenant_id, plan_id, meter),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE subscriptions (
    tenant_id             uuid NOT NULL REFERENCES tenants (id),
    account_id            text NOT NULL,
    plan_id               text NOT NULL,
    status                text NOT NULL CHECK (status IN ('active', 'trialing', 'past_due', 'canceled', 'unpaid', 'incomplete')),
    current_period_start  timestamptz NOT NULL,
    current_period_end    timestamptz NOT NULL CHECK (current_period_end > current_period_start),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans (tenant_id, id)
);

-- One row per account and meter: the row every charge locks (SELECT ... FOR UPDATE).
-- `seq` numbers the meter's ledger entries without gaps.
CREATE TABLE meter_balances (
    tenant_id               uuid NOT NULL REFERENCES tenants (id),
    account_id              text NOT NULL,
    meter                   text NOT NULL,
    period_start            timestamptz NOT NULL,
    period_end              timestamptz NOT NULL CHECK (period_end > period_start),
    allowance_credits       bigint CHECK (allowance_credits >= 0),  -- NULL = unlimited
    allowance_used_credits  bigint NOT NULL DEFAULT 0 CHECK (allowance_used_credits >= 0),
    rollover_credits        bigint NOT NULL DEFAULT 0 CHECK (rollover_credits >= 0),
    debt_credits            bigint NOT NULL DEFAULT 0 CHECK (debt_credits >= 0),
    seq                     bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id, meter),
    CHECK (allowance_credits IS NULL OR allowance_used_credits <= allowance_credits)
);

CREATE TABLE grants (
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    id                 uuid NOT NULL,
    account_id         text NOT NULL,
    meter              text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('purchased', 'promotional')),
    amount_credits     bigint NOT NULL CHECK (amount_credits > 0),
    remaining_credits  bigint NOT NULL CHECK (remaining_credits >= 0),
    priority           integer NOT NULL DEFAULT 0,
    expires_at         timestamptz,
    created_at         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX grants_live ON grants (tenant_id, account_id, meter) WHERE remaining_credits > 0;

CREATE TABLE holds (
    tenant_id                 uuid NOT NULL REFERENCES tenants (id),
    id                        uuid NOT NULL,
    account_id                text NOT NULL,
    meter                     text NOT NULL,
    amount_credits            bigint NOT NULL CHECK (amount_credits > 0),
    status                    text NOT NULL CHECK (status IN ('held', 'committed', 'released', 'expired')),
    expires_at                timestamptz NOT NULL,
    created_at                timestamptz NOT NULL,
    settled_at                timestamptz,
    -- The encoded response of the settling call, replayed to retries.
    settlement_request_sha256 bytea,
    settlement_response       jsonb,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX holds_live ON holds (tenant_id, account_id, meter, expires_at) WHERE status = 'held';
CREATE INDEX holds_sweep ON holds (expires_at) WHERE status = 'held';

-- Append-only: every change of a balance, with its breakdown across buckets.
CREATE TABLE ledger_entries (
    position           bigserial PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    id                 uuid NOT NULL,
    account_id         text NOT NULL,
    meter              text NOT NULL,
    seq                bigint NOT NULL CHECK (seq > 0),
    kind               text NOT NULL CHECK (kind IN ('debit', 'commit', 'refund', 'grant', 'period_roll', 'grant_expiry')),
    delta_credits      bigint NOT NULL,
    breakdown          jsonb NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    refunds_entry_id   uuid,
    hold_id            uuid,
    idempotency_key    text,
    created_at         timestamptz NOT NULL,
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, account_id, meter, seq)
);
CREATE INDEX ledger_by_account ON ledger_entries (tenant_id, account_id, position);
CREATE INDEX ledger_refunds ON ledger_entries (tenant_id, refunds_entry_id) WHERE refunds_entry_id IS NOT NULL;

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only';
END;
$$;
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

-- The outcome of every idempotent request, replayed to retries with the same key.
CREATE TABLE idempotency_records (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    key             text NOT NULL,
    operation       text NOT NULL,
    request_sha256  bytea NOT NULL,
    response        jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
