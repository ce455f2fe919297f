-- The repository a session works on: checked out by the worker (never in the session's
-- container) when the session started; its branch, the branch reviews target, and the
-- commit the branch started from (what a push is compared with until the branch exists on
-- the remote, whichever worker pushes).
CREATE TABLE session_repositories (
    thread_id     text PRIMARY KEY REFERENCES sessions (thread_id),
    repo          text NOT NULL,
    branch        text NOT NULL,
    base          text NOT NULL,
    start_commit  text NOT NULL,
    -- The last push: its commit and its merge/pull request.
    pushed_commit text,
    review_url    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
