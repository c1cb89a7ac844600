-- The address each owner held last, so that an owner that comes back (a rollback, a delete and re-create)
-- gets the same VIP again when it is still free.
CREATE TABLE released_allocations (
    owner       TEXT    PRIMARY KEY,
    address     TEXT    NOT NULL,
    pool        TEXT    NOT NULL,
    released_at INTEGER NOT NULL
) STRICT;
