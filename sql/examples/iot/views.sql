-- IoT telemetry over sensor readings `readings` (source_datagen.sql):
-- sliding-window statistics per device and threshold alerts.

-- Per device, over 5 minutes sliding every minute: averages and maxima.
CREATE MATERIALIZED VIEW device_stats AS
SELECT device_id, window_start, window_end, count(*) AS readings,
       avg(temperature) AS avg_temperature, max(temperature) AS max_temperature,
       avg(pressure) AS avg_pressure, max(pressure) AS max_pressure
FROM HOP(readings, ts, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)
GROUP BY device_id, window_start, window_end
EMIT ON WINDOW CLOSE;

-- A reading over a threshold, at once.
CREATE MATERIALIZED VIEW threshold_alerts AS
SELECT device_id, ts, temperature, pressure
FROM readings
WHERE temperature > 95 OR pressure > 1100;

-- Devices running hot on average over a whole window.
CREATE MATERIALIZED VIEW hot_devices AS
SELECT device_id, window_start, window_end, avg_temperature
FROM device_stats
WHERE avg_temperature > 70;
