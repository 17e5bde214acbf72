"""Autocommit one-row inserts into a SQLite database; prints transactions per second.

Usage: python3 scripts/commit-load.py DB JOURNAL_MODE SYNCHRONOUS COUNT
Used by scripts/commit-cost.sh to load a mounted database (docs/BENCHMARKS.md, session 6).
"""

import sqlite3
import sys
import time

path, mode, sync, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = sqlite3.connect(path, isolation_level=None)
conn.execute(f"pragma journal_mode={mode}")
conn.execute(f"pragma synchronous={sync}")
conn.execute("create table if not exists t(id integer primary key, v blob)")
start = time.time()
for _ in range(count):
    conn.execute("insert into t(v) values(randomblob(100))")
print(f"{count / (time.time() - start):.0f} tx/s")
