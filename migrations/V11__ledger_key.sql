-- The ledger is keyed by the entry's identity, `(tenant_id, id)`, alone; `position` has no index
-- of its own.
--
-- Every debit inserts a ledger entry, and each index is one more insertion per entry. Nothing
-- looks an entry up by `position` alone: it orders an account's entries, through
-- `ledger_by_account (tenant_id, account_id, position)`, and the sequence behind it keeps it
-- unique. The unique, not-null `(tenant_id, id)` already identifies every row, so the primary key
-- on `position` is dropped rather than rebuilt elsewhere (instant, whatever the ledger's size;
-- docs/benchmarks.md, finding 14), and logical replication identifies rows by that key.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries REPLICA IDENTITY USING INDEX ledger_entries_tenant_id_id_key;
