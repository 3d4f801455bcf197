-- Subsidy pools ("generosity pools"): a tenant's shared balances that pay for free-tier usage by
-- trust tier and per-identity daily budget, funded by a share of paid usage and by top-ups.
-- A pool is split into shards (sub-balances) so that concurrent free-tier requests lock
-- different rows; an identity always draws on the shard its id hashes to.

CREATE TABLE subsidy_pools (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           text NOT NULL CHECK (length(id) BETWEEN 1 AND 128),
    -- Share of every paid charge on `meters` that funds the pool, in basis points.
    share_bps    integer NOT NULL CHECK (share_bps BETWEEN 0 AND 10000),
    -- The meters the pool pays for and is funded by.
    meters       text[] NOT NULL CHECK (cardinality(meters) BETWEEN 1 AND 16),
    shard_count  integer NOT NULL CHECK (shard_count BETWEEN 1 AND 64),
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- The balance a subsidy draws on. `balance_credits` is spendable; `reserved_credits` is promised
-- to live holds and returns to the balance (in whole or part) when they settle.
CREATE TABLE subsidy_pool_shards (
    tenant_id         uuid NOT NULL,
    pool_id           text NOT NULL,
    shard             integer NOT NULL CHECK (shard >= 0),
    balance_credits   bigint NOT NULL DEFAULT 0 CHECK (balance_credits >= 0),
    reserved_credits  bigint NOT NULL DEFAULT 0 CHECK (reserved_credits >= 0),
    PRIMARY KEY (tenant_id, pool_id, shard),
    FOREIGN KEY (tenant_id, pool_id) REFERENCES subsidy_pools (tenant_id, id)
);

-- Funding from paid charges, written in the charge's transaction without touching the shards
-- (no shared hot row on the paid path) and settled into the shards in batches.
CREATE TABLE subsidy_pending_funding (
    tenant_id       uuid NOT NULL,
    id              bigserial,
    pool_id         text NOT NULL,
    amount_credits  bigint NOT NULL CHECK (amount_credits > 0),
    entry_id        uuid NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, pool_id) REFERENCES subsidy_pools (tenant_id, id)
);

-- Trust tiers and their daily subsidy budget per identity. A tier never configured (and the
-- default tier `new`) has a budget of 0.
CREATE TABLE trust_tiers (
    tenant_id             uuid NOT NULL REFERENCES tenants (id),
    tier                  text NOT NULL CHECK (length(tier) BETWEEN 1 AND 128),
    daily_budget_credits  bigint NOT NULL CHECK (daily_budget_credits >= 0),
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, tier)
);

CREATE TABLE account_trust (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    account_id  text NOT NULL,
    tier        text NOT NULL CHECK (length(tier) BETWEEN 1 AND 128),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);

-- What each identity received from a pool on one UTC day: absorbed, and reserved by live holds.
CREATE TABLE subsidy_daily (
    tenant_id         uuid NOT NULL,
    pool_id           text NOT NULL,
    identity          text NOT NULL,
    day               date NOT NULL,
    tier              text NOT NULL,
    absorbed_credits  bigint NOT NULL DEFAULT 0 CHECK (absorbed_credits >= 0),
    reserved_credits  bigint NOT NULL DEFAULT 0 CHECK (reserved_credits >= 0),
    PRIMARY KEY (tenant_id, pool_id, identity, day),
    FOREIGN KEY (tenant_id, pool_id) REFERENCES subsidy_pools (tenant_id, id)
);
CREATE INDEX subsidy_daily_by_day ON subsidy_daily (tenant_id, pool_id, day);

-- The pool's part of a live hold, per meter.
CREATE TABLE subsidy_holds (
    tenant_id         uuid NOT NULL,
    hold_id           uuid NOT NULL,
    meter             text NOT NULL,
    pool_id           text NOT NULL,
    shard             integer NOT NULL,
    identity          text NOT NULL,
    day               date NOT NULL,
    account_id        text NOT NULL,
    tier              text NOT NULL,
    reserved_credits  bigint NOT NULL CHECK (reserved_credits > 0),
    cost_credits      bigint NOT NULL CHECK (cost_credits >= reserved_credits),
    status            text NOT NULL CHECK (status IN ('held', 'committed', 'released', 'expired')),
    expires_at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, hold_id, meter),
    FOREIGN KEY (tenant_id, pool_id) REFERENCES subsidy_pools (tenant_id, id)
);
CREATE INDEX subsidy_holds_sweep ON subsidy_holds (expires_at) WHERE status = 'held';

-- Append-only: every movement of a pool's credit. `absorb` and `settle` rows are subsidies
-- (cost = absorbed + account part, `entry_id` the account's ledger entry when it paid anything);
-- `reserve`/`return` move credit between balance and reservations; `refund` gives back part of a
-- subsidy (`refunds_id`); `fund` and `top_up` add credit.
CREATE TABLE subsidy_grants (
    position                    bigserial PRIMARY KEY,
    tenant_id                   uuid NOT NULL,
    id                          uuid NOT NULL,
    pool_id                     text NOT NULL,
    shard                       integer,
    kind                        text NOT NULL CHECK (kind IN ('absorb', 'reserve', 'settle', 'return', 'refund', 'fund', 'top_up')),
    account_id                  text,
    identity                    text,
    tier                        text,
    meter                       text,
    cost_credits                bigint NOT NULL DEFAULT 0 CHECK (cost_credits >= 0),
    reserved_credits            bigint NOT NULL DEFAULT 0,
    absorbed_credits            bigint NOT NULL DEFAULT 0,
    account_credits             bigint NOT NULL DEFAULT 0 CHECK (account_credits >= 0),
    pool_delta_credits          bigint NOT NULL,
    pool_balance_after_credits  bigint,
    entry_id                    uuid,
    hold_id                     uuid,
    refunds_id                  uuid,
    idempotency_key             text,
    created_at                  timestamptz NOT NULL,
    UNIQUE (tenant_id, id),
    CHECK (kind NOT IN ('absorb', 'settle') OR cost_credits = absorbed_credits + account_credits)
);
CREATE INDEX subsidy_grants_by_pool ON subsidy_grants (tenant_id, pool_id, position);
CREATE INDEX subsidy_grants_by_entry ON subsidy_grants (tenant_id, entry_id) WHERE entry_id IS NOT NULL;
CREATE INDEX subsidy_grants_by_refunded ON subsidy_grants (tenant_id, refunds_id) WHERE refunds_id IS NOT NULL;
CREATE UNIQUE INDEX subsidy_grants_top_up_key ON subsidy_grants (tenant_id, pool_id, idempotency_key) WHERE kind = 'top_up';

CREATE FUNCTION subsidy_grants_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'subsidy_grants is append-only';
END;
$$;
CREATE TRIGGER subsidy_grants_append_only
    BEFORE UPDATE OR DELETE ON subsidy_grants
    FOR EACH ROW EXECUTE FUNCTION subsidy_grants_append_only();

-- A hold whose cost the pool covers in full keeps a zero-credit account row, so the hold has a
-- row per meter to lock and settle.
ALTER TABLE holds DROP CONSTRAINT holds_amount_credits_check;
ALTER TABLE holds ADD CONSTRAINT holds_amount_credits_check CHECK (amount_credits >= 0);
