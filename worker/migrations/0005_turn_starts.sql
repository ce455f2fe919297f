-- How often a turn was started for a prompt: a turn cut off again and again (its worker
-- stopped mid-turn each time) is given up after a bound, visibly, instead of being
-- redelivered for ever.
ALTER TABLE inbound_messages ADD COLUMN turn_starts integer NOT NULL DEFAULT 0;
