-- A first session with eddy: paste into psql (psql -h 127.0.0.1 -p 5433 -d eddy).
CREATE TABLE IF NOT EXISTS products (id INT PRIMARY KEY, name TEXT NOT NULL, price NUMERIC(8,2));
CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, product_id INT, qty INT, placed TIMESTAMP);

INSERT INTO products VALUES (1, 'widget', 2.50), (2, 'gadget', 10.00), (3, 'gizmo', 7.25)
  ON CONFLICT (id) DO UPDATE SET price = EXCLUDED.price;
INSERT INTO orders VALUES
  (1, 1, 4, '2024-05-01 09:00:00'), (2, 2, 1, '2024-05-01 09:30:00'),
  (3, 1, 2, '2024-05-02 11:15:00'), (4, 3, 5, '2024-05-02 12:00:00')
  ON CONFLICT DO NOTHING;

-- Revenue per product.
SELECT p.name, sum(o.qty) AS units, sum(o.qty * p.price) AS revenue
FROM orders o JOIN products p ON p.id = o.product_id
GROUP BY p.name
ORDER BY revenue DESC;

-- Running total per day.
SELECT date_trunc('day', placed) AS day, count(*) AS orders,
       sum(count(*)) OVER (ORDER BY date_trunc('day', placed)) AS running
FROM orders GROUP BY 1 ORDER BY 1;

UPDATE products SET price = price * 1.1 WHERE name = 'gizmo';
SELECT name, price FROM products ORDER BY id;

-- A materialized view: kept up to date as orders change, read at once.
CREATE MATERIALIZED VIEW IF NOT EXISTS product_revenue AS
SELECT p.name, count(*) AS orders, sum(o.qty) AS units, sum(o.qty * p.price) AS revenue
FROM orders o JOIN products p ON p.id = o.product_id
GROUP BY p.name;
INSERT INTO orders VALUES (5, 2, 3, '2024-05-03 08:00:00') ON CONFLICT DO NOTHING;
DELETE FROM orders WHERE id = 1;
-- FLUSH waits until the views show every change made so far.
FLUSH;
SELECT * FROM product_revenue ORDER BY revenue DESC;
