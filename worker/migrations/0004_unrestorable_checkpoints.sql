-- A checkpoint that could not be restored (unreadable, or an entry refused) says why; a
-- session starting skips it for an earlier one. A new checkpoint of the same turn clears it.
ALTER TABLE checkpoints ADD COLUMN unrestorable text;
