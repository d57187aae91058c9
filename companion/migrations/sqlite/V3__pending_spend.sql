-- Reported spend waits here until the next policy version folds it into spent_microusd.
ALTER TABLE projects ADD COLUMN pending_spend_microusd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN pending_spend_microusd INTEGER NOT NULL DEFAULT 0;
