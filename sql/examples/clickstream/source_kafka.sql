-- The same page views from a Kafka topic of JSON messages such as
-- {"user_id": 1, "page_id": 5, "ts": "2026-11-27T10:01:00"}.
CREATE SOURCE clicks (
    user_id INT,
    page_id INT,
    ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
    connector = 'kafka',
    topic = 'clicks',
    properties.bootstrap.server = '127.0.0.1:9092',
    scan.startup.mode = 'earliest'
) FORMAT PLAIN ENCODE JSON;
