-- Bridle ledger schema. Idempotent: applied at every start.
PRAGMA journal_mode = WAL;
-- Every commit is on disk before the ledger answers: a committed spend, token or
-- revocation survives kill -9 and power loss.
PRAGMA synchronous = FULL;
PRAGMA busy_timeout = 5000;
-- 64 MiB of page cache: the indexes of a store with millions of recorded calls stay in memory.
PRAGMA cache_size = -65536;

CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    policy      TEXT NOT NULL,
    vendor      TEXT NOT NULL,
    label       TEXT NOT NULL,
    iat         INTEGER NOT NULL,
    exp         INTEGER NOT NULL,
    narrowing   TEXT NOT NULL,      -- JSON: endpoints, merchants, caps
    issued      INTEGER NOT NULL,   -- 1: issued by this ledger; 0: minted offline, first seen at a reserve
    revoked_at  INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_exp ON tokens (exp);

-- Money is integer micro-dollars.
CREATE TABLE IF NOT EXISTS reservations (
    id              TEXT PRIMARY KEY,
    token_id        TEXT NOT NULL,
    policy          TEXT NOT NULL,
    at_ms           INTEGER NOT NULL,
    reserved        INTEGER NOT NULL,
    counted         INTEGER NOT NULL,
    state           TEXT NOT NULL,   -- reserved, held, committed, released, expired
    idempotency_key TEXT,
    method          TEXT NOT NULL,
    path            TEXT NOT NULL,
    detail          TEXT NOT NULL,
    settled_at_ms   INTEGER
);
CREATE INDEX IF NOT EXISTS reservations_at ON reservations (at_ms);

CREATE TABLE IF NOT EXISTS revocations (
    seq    INTEGER PRIMARY KEY,
    kind   TEXT NOT NULL,   -- token, label_prefix, policy
    value  TEXT NOT NULL,
    at     INTEGER NOT NULL,
    until  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS audit (
    id          TEXT PRIMARY KEY,
    at_ms       INTEGER NOT NULL,
    vendor      TEXT NOT NULL,
    token_id    TEXT,
    label       TEXT,
    policy      TEXT,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    cost        INTEGER,
    reservation TEXT,
    merchant    TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms, id);
CREATE INDEX IF NOT EXISTS audit_token ON audit (token_id, at_ms);
CREATE INDEX IF NOT EXISTS audit_policy ON audit (policy, at_ms);
CREATE INDEX IF NOT EXISTS audit_label ON audit (label, at_ms);

-- The outbox for alert webhooks: delivered at least once, retried with backoff.
CREATE TABLE IF NOT EXISTS alerts (
    id              TEXT PRIMARY KEY,
    at_ms           INTEGER NOT NULL,
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER,
    failed          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alerts_due ON alerts (delivered_at_ms, failed, next_attempt_ms);
