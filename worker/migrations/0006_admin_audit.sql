-- Audit of operators' actions through the gateway's admin API: who (the admin token's
-- name), what, on which target, when, and how it ended. The gateway writes a row before
-- it acts (outcome `requested`) and sets the outcome after, so no action goes unrecorded.
CREATE TABLE admin_audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    -- The admin token's configured name.
    actor     text NOT NULL,
    -- stop | stop_all | drain
    action    text NOT NULL,
    -- A thread id, a worker id, or `*` for every session.
    target    text NOT NULL,
    -- requested | accepted | not_running | not_found | forbidden | failed
    outcome   text NOT NULL,
    detail    text
);
CREATE INDEX admin_audit_target ON admin_audit (target, at);
