-- Where a thread's event consumer stopped when its session went idle and the consumer was
-- deleted (idle threads hold no consumer): the next owner reads on after this stream
-- sequence instead of from the thread's first event.
CREATE TABLE thread_cursors (
    thread_id   text PRIMARY KEY,
    after_seq   bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
