-- The ledger's primary key is the entry's identity, `(tenant_id, id)`, instead of `position`.
--
-- Every debit inserts a ledger entry, and each index is one more insertion per entry. Nothing
-- looks an entry up by `position` alone: it orders an account's entries, through
-- `ledger_by_account (tenant_id, account_id, position)`, and the sequence behind it keeps it
-- unique. The unique constraint on `(tenant_id, id)` becomes the primary key, so the table keeps
-- one index fewer (docs/benchmarks.md, finding 14).
ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_pkey,
    DROP CONSTRAINT ledger_entries_tenant_id_id_key,
    ADD CONSTRAINT ledger_entries_pkey PRIMARY KEY (tenant_id, id);
