"""psycopg 3 against a running eddy: parameters (server-side binding),
typed results, errors with SQLSTATEs, COPY. Usage: check_psycopg.py PORT.
Exits non-zero on the first failed check."""

import datetime
import decimal
import sys

import psycopg

port = int(sys.argv[1])
conn = psycopg.connect(host="127.0.0.1", port=port, user="eddy", dbname="eddy", autocommit=True)
cur = conn.cursor()

cur.execute("CREATE TABLE py_orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, total NUMERIC(10,2), placed DATE)")
rows = [(i, f"c{i % 3}", decimal.Decimal(f"{i}.25"), datetime.date(2024, 1, 1 + i)) for i in range(1, 7)]
cur.executemany("INSERT INTO py_orders VALUES (%s, %s, %s, %s)", rows)

cur.execute("SELECT id, customer, total, placed FROM py_orders WHERE id = %s", (3,))
assert cur.fetchone() == (3, "c0", decimal.Decimal("3.25"), datetime.date(2024, 1, 4)), "typed row"

cur.execute(
    "SELECT customer, count(*), sum(total) FROM py_orders WHERE placed >= %s GROUP BY customer ORDER BY customer",
    (datetime.date(2024, 1, 3),),
)
assert cur.fetchall() == [
    ("c0", 2, decimal.Decimal("9.50")),
    ("c1", 1, decimal.Decimal("4.25")),
    ("c2", 2, decimal.Decimal("7.50")),
], "aggregate with a date parameter"

# Binary results too.
bcur = conn.cursor(binary=True)
bcur.execute("SELECT id, total FROM py_orders WHERE customer = %s ORDER BY id", ("c1",))
assert bcur.fetchall() == [(1, decimal.Decimal("1.25")), (4, decimal.Decimal("4.25"))], "binary"

try:
    cur.execute("INSERT INTO py_orders VALUES (%s, %s, %s, %s)", rows[0])
    raise AssertionError("duplicate key accepted")
except psycopg.errors.UniqueViolation as e:
    assert e.sqlstate == "23505"

try:
    cur.execute("SELECT * FROM no_such_table")
    raise AssertionError("missing table accepted")
except psycopg.errors.UndefinedTable as e:
    assert e.sqlstate == "42P01"

with cur.copy("COPY py_orders (id, customer) FROM STDIN") as copy:
    for i in range(100, 110):
        copy.write_row((i, f"copy{i}"))
cur.execute("SELECT count(*) FROM py_orders")
assert cur.fetchone() == (16,), "copy"

cur.execute("UPDATE py_orders SET total = total * 2 WHERE id <= %s", (2,))
assert cur.rowcount == 2, "update rowcount"
cur.execute("DELETE FROM py_orders WHERE id >= %s", (100,))
assert cur.rowcount == 10, "delete rowcount"

print("psycopg checks passed")
