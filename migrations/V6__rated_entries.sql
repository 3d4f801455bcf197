-- Charges of usage given as a SKU keep how they were rated: SKU, quantities, price version, cost.
ALTER TABLE ledger_entries ADD COLUMN rating jsonb;
