-- Top-ups given in a thread when a budget was used up ("continue"): each raises that budget
-- by its amount — for the session, or for the user's or channel's UTC day it was given on.
CREATE TABLE budget_top_ups (
    id          bigserial PRIMARY KEY,
    -- session | user_day | channel_day
    budget      text NOT NULL,
    session_id  text NOT NULL,
    user_id     text NOT NULL,
    channel_id  text NOT NULL,
    day         date NOT NULL DEFAULT ((now() AT TIME ZONE 'utc')::date),
    amount_usd  double precision NOT NULL CHECK (amount_usd > 0),
    given_by    text NOT NULL,
    given_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX budget_top_ups_session ON budget_top_ups (session_id);
CREATE INDEX budget_top_ups_user_day ON budget_top_ups (user_id, day);
CREATE INDEX budget_top_ups_channel_day ON budget_top_ups (channel_id, day);
