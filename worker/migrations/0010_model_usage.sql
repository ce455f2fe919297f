-- One row per model request the egress gateway forwarded and saw usage for (issue #14,
-- metering): tokens and cost as the model reported them, attributed to the session, its
-- user (sessions.started_by) and channel, the UTC day, the pool credential (its label,
-- never the secret) and the model.
CREATE TABLE model_usage (
    -- Made by the gateway, so a retried insert does not count twice.
    id                     text PRIMARY KEY,
    at                     timestamptz NOT NULL,
    day                    date NOT NULL,
    session_id             text NOT NULL,
    -- '' when the session has no record (a warm container's, a test's).
    user_id                text NOT NULL,
    channel_id             text NOT NULL,
    credential             text NOT NULL,
    model                  text NOT NULL,
    input_tokens           bigint NOT NULL,
    output_tokens          bigint NOT NULL,
    cache_read_tokens      bigint NOT NULL,
    cache_creation_tokens  bigint NOT NULL,
    cost_usd               double precision NOT NULL,
    -- The model API's request-id header, for support.
    request_id             text
);
CREATE INDEX model_usage_user_day ON model_usage (user_id, day);
CREATE INDEX model_usage_channel_day ON model_usage (channel_id, day);
CREATE INDEX model_usage_session ON model_usage (session_id);
CREATE INDEX model_usage_credential_day ON model_usage (credential, day);
