"""Autocommit primary-key reads from a SQLite database; prints reads per second.

Usage: python3 scripts/read-load.py DB COUNT
Fills table r with 10 000 rows first if it is empty. Used with scripts/commit-load.py to
compare a LiteFS mount, a replite mount and a native directory by hand (docs/BENCHMARKS.md,
session 10).
"""

import random
import sqlite3
import sys
import time

path, count = sys.argv[1], int(sys.argv[2])
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("create table if not exists r(id integer primary key, v blob)")
if conn.execute("select count(*) from r").fetchone()[0] == 0:
    conn.execute("begin")
    for _ in range(10000):
        conn.execute("insert into r(v) values (randomblob(100))")
    conn.execute("commit")
rng = random.Random(1)
start = time.time()
for _ in range(count):
    conn.execute("select v from r where id = ?", (rng.randint(1, 10000),)).fetchone()
print(f"{count / (time.time() - start):.0f} reads/s")
