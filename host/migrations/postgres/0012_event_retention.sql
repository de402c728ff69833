-- Retention (`events.retention_ms`): the relay deletes events older than
-- the retention that are handed on and have no pending delivery, oldest
-- first; this index finds them without reading the young ones.
-- IF NOT EXISTS: an operator with a large outbox on PostgreSQL can build it
-- beforehand with CREATE INDEX CONCURRENTLY (README), so the upgrade does
-- not hold checkouts' inserts while it builds.
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);
