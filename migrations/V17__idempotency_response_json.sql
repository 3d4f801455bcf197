-- An idempotency record's stored answer as `json` (validated text) rather than `jsonb`.
--
-- The answer is written once and replayed verbatim to a retry; nothing ever queries inside it.
-- As `jsonb` every insert built a binary tree from the text (`jsonb_in`, ~5 % of PostgreSQL's CPU
-- in a batch of debits, whose answers are the largest values they write; docs/benchmarks.md,
-- finding 37). As `json` the text is checked and stored as it is. The server reads and writes
-- the column as JSON either way. A replica still running the previous build during a rolling
-- upgrade keeps working: its batches insert `response::jsonb`, which PostgreSQL assigns to the
-- `json` column through the built-in assignment cast.
ALTER TABLE idempotency_records ALTER COLUMN response TYPE json USING response::json;
