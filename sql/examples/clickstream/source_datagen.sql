-- Page views made up by eddy: 20 a second by 2000 users (a click every 100 s per user on average) over 20 pages
-- (page 1 is the landing page, page 20 the checkout).
CREATE SOURCE clicks (
    user_id INT,
    page_id INT,
    ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
) WITH (
    connector = 'datagen',
    fields.user_id.min = '1',
    fields.user_id.max = '2000',
    fields.page_id.min = '1',
    fields.page_id.max = '20',
    fields.ts.max_past = '1 second',
    datagen.rows.per.second = '20'
);
