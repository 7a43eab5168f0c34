-- The same readings from a Kafka topic of JSON messages such as
-- {"device_id": 1, "temperature": 50.5, "pressure": 1000, "ts": "2026-11-27T10:00:10"}.
CREATE SOURCE readings (
    device_id INT,
    temperature DOUBLE PRECISION,
    pressure DOUBLE PRECISION,
    ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) WITH (
    connector = 'kafka',
    topic = 'readings',
    properties.bootstrap.server = '127.0.0.1:9092',
    scan.startup.mode = 'earliest'
) FORMAT PLAIN ENCODE JSON;
