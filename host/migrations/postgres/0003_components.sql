-- The component registry: every version of each service component the host
-- has run or been asked to run, with its bytes (so any replica can load it).
CREATE TABLE component_versions (
    component   TEXT NOT NULL,
    version     BIGINT NOT NULL,
    digest      TEXT NOT NULL,
    bytes       BYTEA NOT NULL,
    size        BIGINT NOT NULL,
    -- "bundled", "file:<path>", "upload" or "oci:<reference>@<manifest digest>"
    source      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (component, version),
    UNIQUE (component, digest)
);

-- Activations, newest last. The active version of a component is its newest
-- activation that was not rolled back; a rollback marks the newest one.
CREATE TABLE component_activations (
    component       TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    activated_at    BIGINT NOT NULL,
    rolled_back_at  BIGINT,
    PRIMARY KEY (component, seq),
    FOREIGN KEY (component, version) REFERENCES component_versions (component, version)
);
