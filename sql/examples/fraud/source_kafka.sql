-- The same transactions from a Kafka topic of JSON messages such as
-- {"id": 1, "account": 7, "amount": 12.5, "ts": "2026-11-27T10:00:05"}.
CREATE SOURCE txns (
    id BIGINT,
    account INT,
    amount DOUBLE PRECISION,
    ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
    connector = 'kafka',
    topic = 'transactions',
    properties.bootstrap.server = '127.0.0.1:9092',
    scan.startup.mode = 'earliest'
) FORMAT PLAIN ENCODE JSON;
