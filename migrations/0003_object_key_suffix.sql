-- spoolup journal, schema version 3.
-- object-key-suffix (syslog-ng 4.8.2+'s s3() option): each object keeps the suffix it was
-- opened with, appended to its final key after the index and before .gz/.zst.
ALTER TABLE objects ADD COLUMN key_suffix TEXT NOT NULL DEFAULT '';
