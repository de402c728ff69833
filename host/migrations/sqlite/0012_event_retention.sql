-- Retention (`events.retention_ms`): the relay deletes events older than
-- the retention that are handed on and have no pending delivery, oldest
-- first; this index finds them without reading the young ones.
CREATE INDEX events_created ON events (created_at);
