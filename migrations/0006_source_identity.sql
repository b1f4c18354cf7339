-- spoolup journal, schema version 6: what tells a spool file from another file on
-- the same inode, and a file truncated in place from one that only grew
-- (spoolup/identity.py, docs/DESIGN.md "Spool file identity").
-- tail:  digest of the consumed bytes just before `offset` (up to 4 KiB); every read
--        from the offset re-reads and compares them.  NULL at offset 0.
-- btime: the file's birth time (ns, statx) where the filesystem records one.
ALTER TABLE sources ADD COLUMN tail BLOB;
ALTER TABLE sources ADD COLUMN btime INTEGER;
