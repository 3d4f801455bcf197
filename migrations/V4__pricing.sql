-- Pricing: a price book per tenant (SKUs with effective-dated versions, each pricing some usage
-- dimensions as an exact rational: `credits` per `per_units` units) and each tenant's pricing
-- policy (strict mode, high-value SKU patterns, a default price, sanity bounds per dimension).
-- Versions are never deleted or rewritten except to end them: usage at time t is always rated
-- at the version in force at t. Writers notify channel `allot_prices` in the same transaction.

CREATE TABLE price_versions (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    sku             text NOT NULL CHECK (length(sku) BETWEEN 1 AND 128),
    version         bigint NOT NULL CHECK (version > 0),
    effective_from  timestamptz NOT NULL,
    -- NULL = open-ended; equal to effective_from for a version superseded before it began.
    effective_to    timestamptz CHECK (effective_to >= effective_from),
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, sku, version)
);

CREATE TABLE price_rates (
    tenant_id  uuid NOT NULL,
    sku        text NOT NULL,
    version    bigint NOT NULL,
    dimension  text NOT NULL CHECK (dimension IN ('input_tokens', 'output_tokens', 'cached_tokens', 'audio_ms', 'characters', 'requests')),
    credits    bigint NOT NULL CHECK (credits >= 0),
    per_units  bigint NOT NULL CHECK (per_units > 0),
    PRIMARY KEY (tenant_id, sku, version, dimension),
    FOREIGN KEY (tenant_id, sku, version) REFERENCES price_versions (tenant_id, sku, version)
);

-- A tenant without a row has the default policy: not strict, no patterns, no default price (so
-- unpriced SKUs are refused) and no bounds.
CREATE TABLE pricing_policies (
    tenant_id            uuid PRIMARY KEY REFERENCES tenants (id),
    strict               boolean NOT NULL DEFAULT false,
    high_value_patterns  text[] NOT NULL DEFAULT '{}' CHECK (cardinality(high_value_patterns) <= 64),
    version              bigint NOT NULL CHECK (version > 0),
    updated_at           timestamptz NOT NULL
);

-- Per dimension: the default price (both or neither) and the sanity bounds in credits per 1,000 units.
CREATE TABLE pricing_policy_dimensions (
    tenant_id                      uuid NOT NULL REFERENCES pricing_policies (tenant_id) ON DELETE CASCADE,
    dimension                      text NOT NULL CHECK (dimension IN ('input_tokens', 'output_tokens', 'cached_tokens', 'audio_ms', 'characters', 'requests')),
    default_credits                bigint CHECK (default_credits >= 0),
    default_per_units              bigint CHECK (default_per_units > 0),
    min_cost_credits_per_1k_units  bigint CHECK (min_cost_credits_per_1k_units >= 0),
    max_cost_credits_per_1k_units  bigint CHECK (max_cost_credits_per_1k_units >= 0),
    PRIMARY KEY (tenant_id, dimension),
    CHECK ((default_credits IS NULL) = (default_per_units IS NULL)),
    CHECK (min_cost_credits_per_1k_units IS NULL OR max_cost_credits_per_1k_units IS NULL
           OR min_cost_credits_per_1k_units <= max_cost_credits_per_1k_units)
);
