-- Card transactions made up by eddy (no Kafka needed): 5 a second over
-- 200 accounts, arriving up to 2 seconds out of order.
CREATE SOURCE txns (
    id BIGINT,
    account INT,
    amount DOUBLE PRECISION,
    ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
    connector = 'datagen',
    fields.id.kind = 'sequence',
    fields.id.start = '1',
    fields.id.end = '1000000000',
    fields.account.min = '1',
    fields.account.max = '200',
    fields.amount.min = '1',
    fields.amount.max = '1050',
    fields.ts.max_past = '2 seconds',
    datagen.rows.per.second = '5'
);
