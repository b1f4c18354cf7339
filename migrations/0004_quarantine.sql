-- spoolup journal, schema version 4.
-- Quarantined spool entries (spoolup/quarantine.py): one row per spool entry (by path)
-- that spoolup does not read (or, reason cannot-delete, does not delete) for now: why,
-- since when, when it tries again and how often it tried.  `spoolup status` and the
-- metrics read these rows; nothing else says that an entry needs attention.
CREATE TABLE quarantine (
    path       TEXT    PRIMARY KEY,            -- relative to spool-dir (a BLOB when the name is not UTF-8)
    source_id  INTEGER,                        -- the journaled source, when the entry is one
    key        TEXT,                           -- the object key, when the fault is the key's
    reason     TEXT    NOT NULL,               -- see spoolup/quarantine.py REASONS
    message    TEXT    NOT NULL,               -- what happened
    since      REAL    NOT NULL,
    next_retry REAL,                           -- NULL: not before the next start
    attempts   INTEGER NOT NULL DEFAULT 1
);

-- sources not read before this schema (state error/refused) become quarantined entries
INSERT OR IGNORE INTO quarantine (path, source_id, reason, message, since, next_retry, attempts)
    SELECT path, id,
           CASE WHEN state = 'refused' THEN 'invalid-key'
                WHEN error LIKE '%longer than%' THEN 'record-too-long'
                ELSE 'truncated' END,
           coalesce(error, ''), updated, NULL, 1
    FROM sources WHERE state IN ('error', 'refused');
UPDATE sources SET state = 'active' WHERE state IN ('error', 'refused');
