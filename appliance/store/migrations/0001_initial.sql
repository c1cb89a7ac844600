-- Configuration history as a temporal table: each row is one version of one object, valid from the revision
-- that wrote it until the revision that replaced or deleted it (NULL while current). A revision only touches
-- the objects it changes, and the whole document at any revision is one indexed query.
CREATE TABLE revisions (
    number      INTEGER PRIMARY KEY,
    created_at  INTEGER NOT NULL,           -- unix milliseconds
    author      TEXT    NOT NULL,
    source      TEXT    NOT NULL CHECK (source IN ('api', 'ui', 'cli', 'import', 'system')),
    message     TEXT    NOT NULL DEFAULT '',
    rollback_of INTEGER                     -- the revision whose document this one restored, if any
) STRICT;

CREATE TABLE config_objects (
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    since_rev  INTEGER NOT NULL REFERENCES revisions (number),
    until_rev  INTEGER REFERENCES revisions (number),
    body       TEXT    NOT NULL,            -- JSON
    PRIMARY KEY (kind, name, since_rev)
) STRICT;
CREATE UNIQUE INDEX config_objects_current ON config_objects (kind, name) WHERE until_rev IS NULL;
CREATE INDEX config_objects_until ON config_objects (until_rev);
CREATE INDEX config_objects_since ON config_objects (since_rev);

CREATE TABLE allocations (
    address      TEXT    PRIMARY KEY,
    pool         TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    allocated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX allocations_owner ON allocations (owner);

-- A commit-confirm in progress: revert to `revert_to` unless confirmed before `deadline` (survives restarts).
CREATE TABLE pending_confirm (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    revision  INTEGER NOT NULL REFERENCES revisions (number),
    revert_to INTEGER NOT NULL,
    deadline  INTEGER NOT NULL,
    author    TEXT    NOT NULL
) STRICT;

CREATE TABLE users (
    id                   INTEGER PRIMARY KEY,
    username             TEXT    NOT NULL UNIQUE,
    password_hash        TEXT    NOT NULL,
    role                 TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    must_change_password INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    id_hash      TEXT    PRIMARY KEY,       -- SHA-256 of the cookie value; the value itself is never stored
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    client       TEXT    NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE tokens (
    id           TEXT    PRIMARY KEY,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    secret_hash  TEXT    NOT NULL,          -- SHA-256 of the secret
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER
) STRICT;

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    client     TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    outcome    TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    detail     TEXT    NOT NULL DEFAULT ''
) STRICT;
