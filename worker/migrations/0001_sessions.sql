-- Sessions: one per Mattermost thread, stable across worker migrations.
CREATE TABLE sessions (
    thread_id        text PRIMARY KEY,
    session_id       text NOT NULL UNIQUE,
    channel_id       text NOT NULL,
    started_by       text NOT NULL,
    started_by_name  text NOT NULL,
    permission_mode  text NOT NULL DEFAULT 'default',
    -- The worker holding the thread; NULL once it released the thread cleanly.
    owner            text,
    -- The CLI's own session id, for --resume.
    cli_session_id   text,
    status           text NOT NULL,
    turns            integer NOT NULL DEFAULT 0,
    -- Local reference (reply seq) of the header post.
    header_ref       integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_owner ON sessions (owner) WHERE owner IS NOT NULL;

CREATE TABLE participants (
    thread_id  text NOT NULL REFERENCES sessions (thread_id),
    user_id    text NOT NULL,
    username   text NOT NULL,
    role       text NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, user_id)
);

-- Every accepted Mattermost event, keyed by its Mattermost-derived id (dedupe).
CREATE TABLE inbound_messages (
    event_id     text PRIMARY KEY,
    thread_id    text NOT NULL,
    user_id      text NOT NULL,
    username     text NOT NULL,
    kind         text NOT NULL,
    body         text NOT NULL,
    received_at  timestamptz NOT NULL,
    -- Set once the event's outcome is complete (a turn finished, a command answered).
    handled_at   timestamptz,
    turn         integer
);
CREATE INDEX inbound_messages_thread ON inbound_messages (thread_id, received_at);

CREATE TABLE turns (
    thread_id              text NOT NULL,
    turn                   integer NOT NULL,
    event_id               text NOT NULL,
    worker                 text NOT NULL,
    started_at             timestamptz NOT NULL,
    finished_at            timestamptz,
    duration_ms            bigint,
    input_tokens           bigint,
    output_tokens          bigint,
    cache_read_tokens      bigint,
    cache_creation_tokens  bigint,
    cost_usd               double precision,
    is_error               boolean,
    PRIMARY KEY (thread_id, turn)
);

-- Audit of what was sent back to the thread.
CREATE TABLE outbound_replies (
    session_id  text NOT NULL,
    seq         bigint NOT NULL,
    thread_id   text NOT NULL,
    kind        text NOT NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE checkpoints (
    thread_id   text NOT NULL,
    turn        integer NOT NULL,
    object_key  text NOT NULL,
    size_bytes  bigint NOT NULL,
    worker      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, turn)
);

CREATE TABLE artifacts (
    thread_id     text NOT NULL,
    turn          integer NOT NULL,
    path          text NOT NULL,
    object_key    text NOT NULL,
    size_bytes    bigint NOT NULL,
    content_type  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, turn, path)
);
