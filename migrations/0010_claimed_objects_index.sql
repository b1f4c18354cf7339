-- spoolup journal, schema version 10.
-- The upload process asks at every turn of its loop for the claimed objects that are not done
-- (to record, to intend, to start, to complete, their parts to upload).  Through objects_state
-- each such query read every object not done -- the unclaimed ones too, which a drain of many
-- new keys has by the ten thousand: a turn cost O(objects in flight) and a drain O(N^2)
-- (bench/scale.py).  This partial index holds only the claimed objects not done: those queries
-- follow the objects actually being shipped.  (A query uses it only when its WHERE spells the
-- same terms: spoolup/journal/rows.py, CLAIMED_ROWS and CLAIMED.)
CREATE INDEX objects_claimed ON objects (id) WHERE state IN ('open', 'closed') AND idx IS NOT NULL;
