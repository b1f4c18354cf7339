-- spoolup journal, schema version 7: the version of each object's claim.
-- claim_gen: bumped by every claim, unclaim and reset of the object's upload.  A worker's
--            result carries the claim_gen it was computed for; the upload coordinator
--            journals it only if it still holds (compare-and-set), else drops it (issue 18).
ALTER TABLE objects ADD COLUMN claim_gen INTEGER NOT NULL DEFAULT 0;
