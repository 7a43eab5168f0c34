-- Fraud detection over a stream of card transactions `txns`
-- (source_datagen.sql or source_kafka.sql): per-account spend per minute,
-- a recent baseline per account, and three alert rules.

-- Spend per account and minute, each minute once it is complete.
CREATE MATERIALIZED VIEW spend_per_minute AS
SELECT account, window_start, count(*) AS n, sum(amount) AS total
FROM TUMBLE(txns, ts, INTERVAL '1' MINUTE)
GROUP BY account, window_start
EMIT ON WINDOW CLOSE;

-- Each account's recent baseline: average spend per minute over the ten
-- minutes before window_end.
CREATE MATERIALIZED VIEW baseline_10m AS
SELECT account, window_end, sum(amount) / 10 AS avg_per_minute
FROM HOP(txns, ts, INTERVAL '1' MINUTE, INTERVAL '10' MINUTE)
GROUP BY account, window_end
EMIT ON WINDOW CLOSE;

-- Alerts: a large transaction, more than 5 transactions in a minute, or a
-- minute's spend over 3 times the account's baseline. Append-only, so a
-- FORMAT PLAIN Kafka sink can carry it (sink_kafka.sql).
CREATE MATERIALIZED VIEW alerts AS
SELECT 'large_transaction' AS rule, account, ts AS at, amount AS value
FROM txns WHERE amount > 1000
UNION ALL
SELECT 'velocity' AS rule, account, window_start AS at, n AS value
FROM spend_per_minute WHERE n > 5
UNION ALL
SELECT 'spend_spike' AS rule, s.account, s.window_start AS at, s.total AS value
FROM spend_per_minute s JOIN baseline_10m b ON b.account = s.account AND b.window_end = s.window_start
WHERE s.total > 3 * b.avg_per_minute;
