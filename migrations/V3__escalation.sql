-- Fair use: escalation settings and exemptions per tenant, soft caps per plan and meter, hourly
-- usage for rolling windows, classifications, violations, stages, classifier tickets, daily
-- budgets in the restrict stage, and an outbox of events streamed to consumers.

CREATE TABLE escalation_settings (
    tenant_id                  uuid PRIMARY KEY REFERENCES tenants (id),
    enabled                    boolean NOT NULL DEFAULT true,
    kill_switch                boolean NOT NULL DEFAULT false,
    gate_score_milli           integer NOT NULL DEFAULT 700 CHECK (gate_score_milli BETWEEN 0 AND 1000),
    warning_after              integer NOT NULL DEFAULT 1 CHECK (warning_after >= 1),
    throttle_after             integer NOT NULL DEFAULT 2,
    restrict_after             integer NOT NULL DEFAULT 3,
    violation_window_ms        bigint NOT NULL DEFAULT 604800000 CHECK (violation_window_ms > 0),
    cooldown_ms                bigint NOT NULL DEFAULT 43200000 CHECK (cooldown_ms > 0),
    exhausted_cooldown_ms      bigint NOT NULL DEFAULT 3600000 CHECK (exhausted_cooldown_ms > 0),
    ticket_ttl_ms              bigint NOT NULL DEFAULT 900000 CHECK (ticket_ttl_ms > 0),
    throttle_rate_percent      integer NOT NULL DEFAULT 25 CHECK (throttle_rate_percent BETWEEN 1 AND 100),
    -- {"meter": daily budget in credits} applied in the restrict stage.
    restrict_daily_budgets     jsonb NOT NULL DEFAULT '{}',
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CHECK (warning_after <= throttle_after AND throttle_after <= restrict_after)
);

CREATE TABLE escalation_exempt (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    account_id  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, account_id)
);

-- Soft caps: usage of a meter above a threshold within a rolling window (e.g. 4 h in a day).
CREATE TABLE soft_caps (
    tenant_id          uuid NOT NULL,
    plan_id            text NOT NULL,
    meter              text NOT NULL,
    window_ms          bigint NOT NULL CHECK (window_ms BETWEEN 3600000 AND 2678400000),
    threshold_credits  bigint NOT NULL CHECK (threshold_credits > 0),
    PRIMARY KEY (tenant_id, plan_id, meter, window_ms),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans (tenant_id, id) ON DELETE CASCADE
);

-- Charged credits per account, meter and hour (debits and commits), for rolling windows.
CREATE TABLE usage_hourly (
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    account_id     text NOT NULL,
    meter          text NOT NULL,
    hour           timestamptz NOT NULL,
    used_credits   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, account_id, meter, hour)
);

-- The account's stage as last stored, for audit and events; the truth is the violations.
CREATE TABLE escalation_state (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    account_id  text NOT NULL,
    stage       text NOT NULL CHECK (stage IN ('none', 'warning', 'throttle', 'restrict')),
    reason      text NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);

CREATE TABLE classifications (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL,
    account_id   text NOT NULL,
    score_milli  integer NOT NULL CHECK (score_milli BETWEEN 0 AND 1000),
    labels       jsonb NOT NULL DEFAULT '[]',
    synthetic    boolean NOT NULL,
    violation    boolean NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX classifications_violations ON classifications (tenant_id, account_id, created_at) WHERE violation;

CREATE TABLE classifier_tickets (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL,
    account_id   text NOT NULL,
    issued_at    timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    PRIMARY KEY (tenant_id, id)
);

-- Usage of restricted meters per UTC day while the account is in the restrict stage.
CREATE TABLE restrict_usage (
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    account_id    text NOT NULL,
    meter         text NOT NULL,
    day           date NOT NULL,
    used_credits  bigint NOT NULL DEFAULT 0 CHECK (used_credits >= 0),
    PRIMARY KEY (tenant_id, account_id, meter, day)
);

-- Events for consumers, numbered per tenant without gaps and in commit order (the counter row
-- is locked by the writing transaction).
CREATE TABLE outbox_counters (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    last_seq   bigint NOT NULL DEFAULT 0
);

CREATE TABLE outbox_events (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    seq         bigint NOT NULL,
    kind        text NOT NULL,
    account_id  text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

-- Every change of settings and exemptions, with who made it.
CREATE TABLE escalation_audit (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          bigserial,
    action      text NOT NULL,
    before      jsonb,
    after       jsonb,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- A hold placed in the restrict stage pre-charges the meter's daily budget of that day.
ALTER TABLE holds ADD COLUMN restrict_day date;
