-- Questions the thread must answer: tool permissions, AskUserQuestion, plans, and
-- messages from people outside the session. They outlive workers: a session resumed
-- elsewhere re-binds the CLI's re-asked request to its row (and post) here.
CREATE TABLE approvals (
    -- What the buttons carry.
    approval_id      text PRIMARY KEY,
    thread_id        text NOT NULL REFERENCES sessions (thread_id),
    session_id       text NOT NULL,
    -- The prompt whose turn asked (a retried turn keeps it).
    event_id         text NOT NULL,
    -- The CLI's request id and the CLI process (incarnation) it belongs to; both change
    -- when a resumed session asks again.
    request_id       text NOT NULL,
    incarnation      text NOT NULL,
    -- tool | question | plan | guest
    kind             text NOT NULL,
    tool_name        text NOT NULL,
    -- The tool input (or, for guests, the held message) as JSON.
    input            text NOT NULL,
    -- Identifies the same request when re-asked: tool name and input.
    fingerprint      text NOT NULL,
    -- Local reference (reply seq) of the prompt post.
    post_ref         integer NOT NULL,
    -- pending | allowed | allowed_always | denied | answered | timed_out | cancelled | interrupted
    status           text NOT NULL DEFAULT 'pending',
    -- Answers so far of a multi-question AskUserQuestion, as JSON.
    progress         text,
    -- The decision as JSON, for delivery to a CLI that re-asks after a restart.
    answer           text,
    decided_by       text,
    decided_by_name  text,
    decided_via      text,
    decided_at       timestamptz,
    -- Set once the CLI (or, for guests, the session) received the decision.
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL
);
CREATE INDEX approvals_open ON approvals (thread_id, event_id) WHERE delivered_at IS NULL;

-- Audit: every attempt to answer, accepted or not.
CREATE TABLE approval_answers (
    id           bigserial PRIMARY KEY,
    approval_id  text NOT NULL,
    thread_id    text NOT NULL,
    user_id      text NOT NULL,
    username     text NOT NULL,
    -- What was chosen: allow, allow_always, deny, answer:<label>, approve, changes, …
    action       text NOT NULL,
    -- button | reaction | timeout | stop
    via          text NOT NULL,
    -- accepted | refused (not allowed to answer) | late (already decided)
    outcome      text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX approval_answers_approval ON approval_answers (approval_id);
