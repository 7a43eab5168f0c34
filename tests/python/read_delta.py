"""Reads a Delta table with the `deltalake` Python package (delta-rs's
reader, not eddy's write path) and prints what the tests check, as JSON:
rows (sorted), schema, partition folders, and the txn versions per appId
found in the commit log."""
import json
import os
import sys

from deltalake import DeltaTable

path = sys.argv[1]
t = DeltaTable(path)
rows = t.to_pyarrow_table().to_pylist()
for r in rows:
    for k, v in list(r.items()):
        if v is not None and not isinstance(v, (int, float, str, bool)):
            r[k] = str(v)
rows.sort(key=lambda r: json.dumps(r, sort_keys=True))
txns = []
log = os.path.join(path, "_delta_log")
for name in sorted(os.listdir(log)):
    if name.endswith(".json"):
        with open(os.path.join(log, name)) as f:
            for line in f:
                action = json.loads(line)
                if "txn" in action:
                    txns.append([action["txn"]["appId"], action["txn"]["version"]])
partitions = sorted(d for d in os.listdir(path) if "=" in d)
print(json.dumps({
    "rows": rows,
    "schema": [[f.name, str(f.type)] for f in t.schema().fields],
    "partitions": partitions,
    "txns": txns,
    "version": t.version(),
}))
