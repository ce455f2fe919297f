-- The trace of each turn (32 hex digits, W3C): the turn's span and the user message that
-- started it share it, so `/claude status` and the admin API can link a turn to its trace.
ALTER TABLE turns ADD COLUMN trace_id text;
