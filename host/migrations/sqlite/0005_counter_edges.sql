-- Counters at the edges of i64: on SQLite the fix is in the statements
-- (storage/sql/tx.rs); this keeps the migration numbers of both backends alike.
SELECT 1;
