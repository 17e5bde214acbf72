#!/usr/bin/env python3
"""What making 4 KiB durable costs on the file system holding DIR (decision 0016).

    python3 scripts/fsync-cost.py DIR [ROUNDS]

Prints microseconds per round for: overwriting allocated, written blocks + fdatasync (the
commit log's append); appending + fdatasync; writing a spare file, renaming it into place and
fsyncing it (a durable LTX file before decision 0016). Leaves its files in DIR/fsync-cost.
"""
import os
import sys
import time

def main() -> None:
    root = os.path.join(sys.argv[1], "fsync-cost")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    os.makedirs(os.path.join(root, "spares"), exist_ok=True)
    page = os.urandom(4096)

    log = os.open(os.path.join(root, "log"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(log, b"\0" * (4096 * rounds))
    os.fsync(log)
    start = time.perf_counter()
    for i in range(rounds):
        os.pwrite(log, page, i * 4096)
        os.fdatasync(log)
    report("overwrite + fdatasync", start, rounds)

    grow = os.open(os.path.join(root, "grow"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    start = time.perf_counter()
    for _ in range(rounds):
        os.write(grow, page)
        os.fdatasync(grow)
    report("append + fdatasync", start, rounds)

    spares = os.path.join(root, "spares")
    for i in range(rounds):
        open(os.path.join(spares, f"{i}.tmp"), "w").close()
    os.sync()
    start = time.perf_counter()
    for i in range(rounds):
        fd = os.open(os.path.join(spares, f"{i}.tmp"), os.O_RDWR)
        os.write(fd, page)
        os.rename(os.path.join(spares, f"{i}.tmp"), os.path.join(spares, f"{i}.ltx"))
        os.fsync(fd)
        os.close(fd)
    report("spare write + rename + fsync", start, rounds)

def report(what: str, start: float, rounds: int) -> None:
    print(f"{what}: {(time.perf_counter() - start) / rounds * 1e6:.0f} us")

if __name__ == "__main__":
    main()
