-- Kafka topic `transactions` (JSON) → a source → a per-account view → an upsert sink.
CREATE SOURCE txns (id BIGINT, account VARCHAR, amount DOUBLE PRECISION)
INCLUDE partition AS kafka_partition INCLUDE offset AS kafka_offset
WITH (connector = 'kafka', topic = 'transactions',
      properties.bootstrap.server = '127.0.0.1:9092', scan.startup.mode = 'earliest')
FORMAT PLAIN ENCODE JSON;
CREATE MATERIALIZED VIEW spend AS
SELECT account, count(*) AS n, sum(amount) AS total FROM txns GROUP BY account;
CREATE SINK spend_out FROM spend
WITH (connector = 'kafka', topic = 'spend',
      properties.bootstrap.server = '127.0.0.1:9092', primary_key = 'account')
FORMAT UPSERT ENCODE JSON;
SELECT * FROM spend ORDER BY account;
SELECT source, partition, "offset", end_offset, lag, rows_read, rows_rejected
FROM eddy_catalog.kafka_source_partitions ORDER BY partition;
