-- The component registry: every version of each service component the host
-- has run or been asked to run, with its bytes (so any replica can load it).
CREATE TABLE component_versions (
    component   TEXT NOT NULL,
    version     INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    bytes       BLOB NOT NULL,
    size        INTEGER NOT NULL,
    -- "bundled", "file:<path>", "upload" or "oci:<reference>@<manifest digest>"
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (component, version),
    UNIQUE (component, digest)
);

-- Activations, newest last. The active version of a component is its newest
-- activation that was not rolled back; a rollback marks the newest one.
CREATE TABLE component_activations (
    component       TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    activated_at    INTEGER NOT NULL,
    rolled_back_at  INTEGER,
    PRIMARY KEY (component, seq),
    FOREIGN KEY (component, version) REFERENCES component_versions (component, version)
);
