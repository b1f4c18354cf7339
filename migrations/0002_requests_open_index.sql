-- spoolup journal, schema version 2.
-- `spoolup run` looks for open drain requests on every turn of its loop
-- (SELECT ... FROM requests WHERE kind = ? AND done_at IS NULL): a partial index
-- keeps that a lookup of the few open requests, however many drains were served.
CREATE INDEX requests_open ON requests (kind, id) WHERE done_at IS NULL;
