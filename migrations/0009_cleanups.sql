-- spoolup journal, schema version 9: the cleanups the bucket is owed (issue 22's leftovers).
--
-- cleanups: an upload or object of this journal's own that no claim holds any more, journaled
--   in the very transaction that let it go (an unclaim after KeyTaken, the bring-forward's
--   unclaims and discards, a start or a write harvested for a claim given up meanwhile) and
--   deleted once S3 confirms it is gone (NoSuchUpload counts).  A crash between the two
--   leaves the row: the next upload process carries it out, where before nothing knew the
--   upload was ours and it stayed pending for good (its index skipped as someone else's).
--   kind = 'upload':  abort upload_id at key (an upload this journal created);
--          'orphans': abort the uploads at key that are provably this journal's -- holding no
--                     part (the orphan of a Create sent for object_id's claim at key, whose id
--                     was never journaled) or holding a part of object_id's own chunk files
--                     (by content); any other upload there is someone else's, left alone;
--          'discard': delete the object at key if it is object_id's as our write left it
--                     (spoolup's metadata id and the ETag `etag`).
CREATE TABLE cleanups (
    id        INTEGER PRIMARY KEY,
    kind      TEXT NOT NULL,
    key       TEXT NOT NULL,
    upload_id TEXT,
    object_id INTEGER,
    etag      TEXT,
    created   REAL NOT NULL
);
