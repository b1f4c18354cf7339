-- spoolup journal, schema version 1.
-- The journal is the only source of truth shared by the ingest process (sources,
-- objects, chunks) and the upload process (claims, upload ids, ETags, completion).

CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per spool file, identified by (dev, ino), never by path.
CREATE TABLE sources (
    id          INTEGER PRIMARY KEY,
    dev         INTEGER NOT NULL,
    ino         INTEGER NOT NULL,
    path        TEXT    NOT NULL,              -- current path relative to spool-dir
    key_path    TEXT    NOT NULL,              -- path the key was rendered from (a rename keeps the key)
    offset      INTEGER NOT NULL DEFAULT 0,    -- bytes consumed (journaled in the same txn as the chunk data)
    size        INTEGER NOT NULL DEFAULT 0,    -- size when last looked at
    mtime       REAL    NOT NULL DEFAULT 0,
    head        BLOB,                          -- first bytes of the file: tells a reused inode from ours
    state       TEXT    NOT NULL DEFAULT 'active'
                CHECK (state IN ('active', 'error', 'refused', 'reaped', 'gone')),
    error       TEXT,
    first_seen  REAL    NOT NULL,
    updated     REAL    NOT NULL
);
CREATE UNIQUE INDEX sources_live ON sources (dev, ino) WHERE state IN ('active', 'error', 'refused');

-- One row per S3 object spoolup writes.
CREATE TABLE objects (
    id           INTEGER PRIMARY KEY,          -- allocated by ingest; ordering within (key, ts)
    key          TEXT    NOT NULL,             -- rendered object-key (no timestamp, index or suffix)
    ts           TEXT    NOT NULL DEFAULT '',  -- rendered object-key-timestamp, '' for none
    state        TEXT    NOT NULL CHECK (state IN ('open', 'closed', 'done')),
    idx          INTEGER,                      -- final index, NULL until the upload process claims it
    final_key    TEXT,                         -- key + -ts + -idx + suffix once claimed
    mode         TEXT    CHECK (mode IN ('multipart', 'single')),
    upload_id    TEXT,                         -- journaled before any part is sent
    size         INTEGER NOT NULL DEFAULT 0,   -- record bytes (before compression)
    records      INTEGER NOT NULL DEFAULT 0,
    created      REAL    NOT NULL,
    last_write   REAL    NOT NULL,
    closed_at    REAL,
    close_reason TEXT,
    done_at      REAL,
    etag         TEXT
);
CREATE INDEX objects_key ON objects (key, ts, id);
CREATE INDEX objects_state ON objects (state, id);

-- Chunks of an object; a sealed chunk is one part of the multipart upload.
CREATE TABLE chunks (
    object_id INTEGER NOT NULL REFERENCES objects (id),
    part      INTEGER NOT NULL,               -- part number, 1..10000
    length    INTEGER NOT NULL,               -- bytes journaled in the chunk file (before compression)
    state     TEXT    NOT NULL CHECK (state IN ('open', 'sealed', 'uploaded')),
    part_size INTEGER,                        -- bytes of the part as uploaded, set when sealed
    md5       TEXT,                           -- hex MD5 of the part, set when uploaded
    etag      TEXT,                           -- journaled after UploadPart succeeded
    PRIMARY KEY (object_id, part)
) WITHOUT ROWID;
CREATE INDEX chunks_state ON chunks (state, object_id);

-- Which objects hold bytes of which spool file (a spool file is deleted only
-- once all of them are done).
CREATE TABLE source_objects (
    source_id INTEGER NOT NULL,
    object_id INTEGER NOT NULL,
    PRIMARY KEY (source_id, object_id)
) WITHOUT ROWID;
CREATE INDEX source_objects_object ON source_objects (object_id);

-- Bad records written to dead-letter files, per spool file.
CREATE TABLE dead_letters (
    source_id INTEGER PRIMARY KEY,
    path      TEXT    NOT NULL,
    records   INTEGER NOT NULL DEFAULT 0,
    bytes     INTEGER NOT NULL DEFAULT 0,
    last_at   REAL    NOT NULL,
    last_reason TEXT
);

-- Recent errors, newest last; pruned to the last few hundred.
CREATE TABLE errors (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    process TEXT NOT NULL,
    op      TEXT NOT NULL,
    code    TEXT,
    message TEXT NOT NULL,
    key     TEXT
);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- Liveness of the running processes (heartbeats).
CREATE TABLE processes (
    name    TEXT PRIMARY KEY,
    pid     INTEGER NOT NULL,
    started REAL NOT NULL,
    seen    REAL NOT NULL,
    info    TEXT
);

-- Requests to a running service (spoolup drain while spoolup run holds the state dir).
CREATE TABLE requests (
    id      INTEGER PRIMARY KEY,
    kind    TEXT NOT NULL,
    at      REAL NOT NULL,
    done_at REAL,
    result  TEXT
);
