-- pgbench: the service's single-row insert (same table, same unique index, same RETURNING),
-- with a unique email per transaction: the client id plus a 63-bit random number.
\set r random(1, 9000000000000000000)
INSERT INTO users (name, email, email_key) VALUES ('Bench User', 'pg' || :client_id || '.' || :r || '@bench.example.com', 'pg' || :client_id || '.' || :r || '@bench.example.com') RETURNING id, created_at;
