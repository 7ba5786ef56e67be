-- Bridle ledger on PostgreSQL, version 1. Money is integer micro-dollars (BIGINT); times
-- are unix milliseconds (`*_ms`) or seconds. Labels and ids compare bytewise (COLLATE "C")
-- so that prefix ranges mean what they say.

CREATE TABLE tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    policy      TEXT COLLATE "C" NOT NULL,
    vendor      TEXT NOT NULL,
    label       TEXT COLLATE "C" NOT NULL,
    iat         BIGINT NOT NULL,
    exp         BIGINT NOT NULL,
    narrowing   JSONB NOT NULL,      -- endpoints, merchants, caps
    issued      BOOLEAN NOT NULL,    -- false: minted offline, first seen at a reserve
    revoked_at  BIGINT
);
CREATE INDEX tokens_policy ON tokens (policy, iat);
CREATE INDEX tokens_label ON tokens (label);
CREATE INDEX tokens_iat ON tokens (iat, id);

CREATE TABLE reservations (
    id              TEXT COLLATE "C" PRIMARY KEY,
    token_id        TEXT COLLATE "C" NOT NULL,
    policy          TEXT COLLATE "C" NOT NULL,
    at_ms           BIGINT NOT NULL,
    reserved        BIGINT NOT NULL CHECK (reserved >= 0),
    counted         BIGINT NOT NULL CHECK (counted >= 0),
    state           TEXT NOT NULL CHECK (state IN ('reserved', 'held', 'committed', 'released', 'expired')),
    idempotency_key TEXT,
    digest          TEXT,
    method          TEXT NOT NULL,
    path            TEXT NOT NULL,
    detail          TEXT NOT NULL,
    settled_at_ms   BIGINT
);
-- Window sums: what leaves a token's or a policy's window as time passes.
CREATE INDEX reservations_token ON reservations (token_id, at_ms);
CREATE INDEX reservations_policy ON reservations (policy, at_ms);
-- Expiry looks only at reservations still open.
CREATE INDEX reservations_open ON reservations (at_ms) WHERE state = 'reserved';
-- An idempotency key is held by at most one reservation of a token that is not released
-- (a released one hands its key to the retry).
CREATE UNIQUE INDEX reservations_key_holder ON reservations (token_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state <> 'released';
CREATE INDEX reservations_key ON reservations (token_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- One running sum per scope (a token or a policy) and span (a window length in ms, 0 for
-- ever): the rows a reserve locks, in (scope, id, span_ms) order, before it checks caps.
-- Reservations made after floor_ms are inside; `sum` is what they count.
CREATE TABLE windows (
    scope    TEXT NOT NULL CHECK (scope IN ('policy', 'token')),
    id       TEXT COLLATE "C" NOT NULL,
    span_ms  BIGINT NOT NULL,
    sum      BIGINT NOT NULL,
    floor_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, id, span_ms)
);

-- Revocation sequence numbers come from this one row: a revoke takes its lock, so numbers
-- are handed out in commit order and a feed reader never sees 5 before 4. A batch of
-- reserves holds it shared, so no reserve commits after a revoke it did not see.
CREATE TABLE revocation_seq (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    seq BIGINT NOT NULL
);
INSERT INTO revocation_seq (one, seq) VALUES (TRUE, 0);

CREATE TABLE revocations (
    seq    BIGINT PRIMARY KEY,
    kind   TEXT NOT NULL CHECK (kind IN ('token', 'label_prefix', 'policy')),
    value  TEXT COLLATE "C" NOT NULL,
    at     BIGINT NOT NULL,
    until  BIGINT NOT NULL,
    at_ms  BIGINT NOT NULL     -- when it was committed, for propagation metrics
);
CREATE INDEX revocations_live ON revocations (until);

-- The audit log: the fields it is searched by, and the whole record as JSON beside them,
-- so that a field added later needs no migration.
CREATE TABLE audit (
    id       TEXT COLLATE "C" PRIMARY KEY,
    at_ms    BIGINT NOT NULL,
    token_id TEXT COLLATE "C",
    label    TEXT COLLATE "C",
    policy   TEXT COLLATE "C",
    record   JSONB NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms, id);
CREATE INDEX audit_token ON audit (token_id, at_ms, id);
CREATE INDEX audit_policy ON audit (policy, at_ms, id);
CREATE INDEX audit_label ON audit (label, at_ms);

-- The outbox for alert webhooks: delivered at least once, retried with backoff. A replica
-- claims a due alert by moving its next attempt past a lease, so each goes out once.
CREATE TABLE alerts (
    id              TEXT PRIMARY KEY,
    at_ms           BIGINT NOT NULL,
    body            JSONB NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT,
    failed          BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX alerts_due ON alerts (next_attempt_ms) WHERE delivered_at_ms IS NULL AND NOT failed;

-- When each alert key (policy, token, cap, threshold) last fired: written under the same
-- window locks as the spend that fired it, so replicas fire each crossing once.
CREATE TABLE alerts_fired (
    key      TEXT PRIMARY KEY,
    policy   TEXT COLLATE "C" NOT NULL,
    token_id TEXT COLLATE "C",
    at_ms    BIGINT NOT NULL
);
CREATE INDEX alerts_fired_token ON alerts_fired (token_id);
CREATE INDEX alerts_fired_policy ON alerts_fired (policy) WHERE token_id IS NULL;
