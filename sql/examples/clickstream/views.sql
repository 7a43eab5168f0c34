-- Clickstream analytics over page views `clicks` (source_datagen.sql):
-- each user's visits (sessions), conversion, and the top pages of every
-- minute.

-- A user's visit: a session of clicks less than two minutes apart (how
-- long, how many pages, whether it reached the checkout, page 20), emitted
-- once when the watermark passes its end.
CREATE MATERIALIZED VIEW user_visits AS
SELECT user_id, window_start, window_end, count(*) AS clicks, count(DISTINCT page_id) AS pages,
       min(ts) AS first_click, max(ts) AS last_click, bool_or(page_id = 20) AS converted
FROM SESSION(clicks, ts, INTERVAL '2' MINUTE, user_id)
GROUP BY user_id, window_start, window_end
EMIT ON WINDOW CLOSE;

-- Visits and conversions per hour the visits started in.
CREATE MATERIALIZED VIEW conversion AS
SELECT date_trunc('hour', window_start) AS hour, count(*) AS visits,
       sum(CASE WHEN converted THEN 1 ELSE 0 END) AS conversions
FROM user_visits
GROUP BY date_trunc('hour', window_start);

-- Views per page and minute, and the three most viewed pages of each minute.
CREATE MATERIALIZED VIEW page_views AS
SELECT page_id, window_start, count(*) AS views
FROM TUMBLE(clicks, ts, INTERVAL '1' MINUTE)
GROUP BY page_id, window_start
EMIT ON WINDOW CLOSE;

CREATE MATERIALIZED VIEW top_pages AS
SELECT window_start, page_id, views
FROM (SELECT window_start, page_id, views,
             ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY views DESC, page_id) AS rank
      FROM page_views) ranked
WHERE rank <= 3;
