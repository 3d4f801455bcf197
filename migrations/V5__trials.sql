-- Trials: one per account and one per fingerprint (stored hashed) in a tenant, trial credit per
-- plan meter, whether conversion keeps it, and when to announce a trial's end.

ALTER TABLE plans
    ADD COLUMN trial_keeps_credits boolean NOT NULL DEFAULT false,
    ADD COLUMN trial_ending_notice_ms bigint NOT NULL DEFAULT 259200000 CHECK (trial_ending_notice_ms >= 0);

ALTER TABLE plan_meters ADD COLUMN trial_grant_credits bigint NOT NULL DEFAULT 0 CHECK (trial_grant_credits >= 0);

CREATE TABLE trials (
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    account_id          text NOT NULL,
    fingerprint_sha256  bytea NOT NULL CHECK (length(fingerprint_sha256) = 32),
    plan_id             text NOT NULL,
    started_at          timestamptz NOT NULL,
    ends_at             timestamptz NOT NULL,
    status              text NOT NULL CHECK (status IN ('active', 'converted', 'ended')),
    ending_announced    boolean NOT NULL DEFAULT false,
    grant_ids           uuid[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, account_id),
    UNIQUE (tenant_id, fingerprint_sha256)
);
CREATE INDEX trials_active ON trials (ends_at) WHERE status = 'active';
