-- Canaries of service components: `version` serves `share` % of new
-- requests beside the active version, until it ends at `ended_at` with an
-- `outcome` (promoted, rolled_back, replaced) and its `reason`. At most one
-- live (not ended) canary at a time, of any component: requests compare the
-- stable set with one change, and every replica splits alike.
CREATE TABLE component_canaries (
    seq         BIGSERIAL PRIMARY KEY,
    component   TEXT NOT NULL,
    version     BIGINT NOT NULL,
    share       BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    outcome     TEXT,
    reason      TEXT,
    FOREIGN KEY (component, version) REFERENCES component_versions (component, version)
);
CREATE UNIQUE INDEX component_canaries_live ON component_canaries ((ended_at IS NULL)) WHERE ended_at IS NULL;
