-- Services with the same sharing key may hold one address: an allocation is an (address, owner) pair.
CREATE TABLE allocations_new (
    address      TEXT    NOT NULL,
    pool         TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    allocated_at INTEGER NOT NULL,
    PRIMARY KEY (address, owner)
) STRICT;
INSERT INTO allocations_new (address, pool, owner, allocated_at) SELECT address, pool, owner, allocated_at FROM allocations;
DROP TABLE allocations;
ALTER TABLE allocations_new RENAME TO allocations;
CREATE INDEX allocations_owner ON allocations (owner);
