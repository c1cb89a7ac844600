-- The last known state of each cluster, so that an appliance restarted while a cluster's API server is
-- unreachable still serves and announces that cluster's Services. A cache, never history.
CREATE TABLE observed_cache (
    cluster  TEXT    PRIMARY KEY,
    body     TEXT    NOT NULL,  -- JSON of model::observed::ObservedCluster
    saved_at INTEGER NOT NULL
) STRICT;
