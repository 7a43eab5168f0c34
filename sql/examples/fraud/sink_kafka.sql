-- Every alert to the Kafka topic fraud_alerts, exactly once.
CREATE SINK fraud_alerts FROM alerts
WITH (connector = 'kafka', topic = 'fraud_alerts', properties.bootstrap.server = '127.0.0.1:9092')
FORMAT PLAIN ENCODE JSON;
