-- spoolup journal, schema version 8: the ledger (docs/DESIGN.md, "The bucket is the ledger").
--
-- object_ranges: which bytes of which spool file each object holds -- spans of whole records
--   [start, end) in the source's own offsets, coalesced when adjacent.  A record
--   dead-lettered (a bad envelope line, a record over max-record-size) is in no object's
--   spans, so the object's spans hold exactly its records' bytes.  In format = "lines" an
--   object normally has one span per source; in format = "envelope" a source's records
--   interleave across keys and an object can hold many spans of it.
CREATE TABLE object_ranges (
    object_id INTEGER NOT NULL,
    source_id INTEGER NOT NULL,
    start     INTEGER NOT NULL,
    "end"     INTEGER NOT NULL,
    PRIMARY KEY (object_id, source_id, start)
) WITHOUT ROWID;
CREATE INDEX object_ranges_source ON object_ranges (source_id, start);

-- skip_ranges: bytes of a source beyond its offset that objects in the bucket already hold
--   (written by the ledger's bring-forward and `recover --from-bucket`): ingest reads past
--   them without shipping them again.  Deleted as the offset passes them.
--   ts (format = "lines" with object-key-timestamp): the object-key-timestamp of the records
--   read again before this span (after the previous one), instead of the ingest time: one
--   that sorts between the bucket's objects holding the bytes before and after them
--   (spoolup/catchup.py, gap_timestamps); NULL: the ingest time.
CREATE TABLE skip_ranges (
    source_id INTEGER NOT NULL,
    start     INTEGER NOT NULL,
    "end"     INTEGER NOT NULL,
    ts        TEXT,
    PRIMARY KEY (source_id, start)
) WITHOUT ROWID;

-- ledger_seq: the ledger segment (<static prefix>.spoolup/ledger/<agent>/<seq>.json) that
--   records this object at its current final key; NULL until one does (and again after
--   the claim moves).  The object's PutObject / CompleteMultipartUpload is sent only once
--   its record is in the bucket.
-- checksum: "<algorithm>:<value>" of the object's stored bytes, as the ledger records it.
-- origin: "<journal id>/<object id>" of a done object brought in from the ledger (another
--   journal's object, or this journal's object that a restored journal did not know).
ALTER TABLE objects ADD COLUMN ledger_seq INTEGER;
ALTER TABLE objects ADD COLUMN checksum TEXT;
ALTER TABLE objects ADD COLUMN origin TEXT;

-- S3 flexible checksums (checksum-algorithm, issue 22 item 6):
-- objects.upload_checksum: the algorithm its multipart upload was created with (NULL: none);
--   its parts carry checksums of it only then (S3 refuses a part checksum the upload was not
--   created for), and its checksum is the composite of theirs.
-- chunks.checksum: "<algorithm>:<base64>" of the part as sent, journaled with its ETag.
ALTER TABLE objects ADD COLUMN upload_checksum TEXT;
ALTER TABLE chunks ADD COLUMN checksum TEXT;
