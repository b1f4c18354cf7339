-- spoolup journal, schema version 5.
-- Each object keeps the form it was started in (spoolup/form.py: compression,
-- compresslevel, chunk-size, max-object-size as JSON), so that a configuration
-- changed between two runs never changes an object already open or waiting for S3.
-- NULL: journaled before this migration; the first start after it stamps the
-- objects not yet done with the configuration it runs under.
ALTER TABLE objects ADD COLUMN form TEXT;
