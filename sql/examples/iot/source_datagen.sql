-- Sensor readings made up by eddy: 10 a second from 50 devices.
CREATE SOURCE readings (
    device_id INT,
    temperature DOUBLE PRECISION,
    pressure DOUBLE PRECISION,
    ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '10' SECOND
) WITH (
    connector = 'datagen',
    fields.device_id.min = '1',
    fields.device_id.max = '50',
    fields.temperature.min = '15',
    fields.temperature.max = '100',
    fields.pressure.min = '950',
    fields.pressure.max = '1110',
    fields.ts.max_past = '3 seconds',
    datagen.rows.per.second = '10'
);
