#!/usr/bin/env bash
# What a commit costs under a halt lock: a static primary and replica (loopback, data and
# mounts under $COST_DIR, default /dev/shm), COMMITS autocommit INSERTs with the sqlite3 CLI
# on the primary directly, then the same through `run -with-halt-lock-on` on the replica
# (lock taken and let go included). BINARY is replite's, or a LiteFS binary (its `mount` and
# `run` take the same config and flags), so both are measured the same way. Run from the
# repository root after a release build:
#   bash scripts/halt-lock-cost.sh [BINARY] [JOURNAL_MODE] [COMMITS]
set -euo pipefail
bin=$(readlink -f "${1:-target/release/replite}")
mode=${2:-DELETE}
count=${3:-1000}
work=$(mktemp -d "${COST_DIR:-/dev/shm}/halt-lock-cost.XXXXXX")
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
primary_port=$(port)
replica_port=$(port)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
    for node in primary replica; do fusermount3 -uz "$work/$node/mnt" 2>/dev/null || true; done
    rm -rf "$work"
}
trap stop EXIT
for node in primary replica; do
    if [ $node = primary ]; then p=$primary_port; candidate=true; else p=$replica_port; candidate=false; fi
    mkdir -p "$work/$node/mnt"
    cat > "$work/$node/config.yml" <<YAML
data:
  dir: $work/$node/data
fuse:
  dir: $work/$node/mnt
http:
  addr: 127.0.0.1:$p
lease:
  type: static
  candidate: $candidate
  hostname: primary
  advertise-url: http://127.0.0.1:$primary_port
YAML
    "$bin" mount -config "$work/$node/config.yml" > "$work/$node.log" 2>&1 &
    pids+=($!)
    sleep 1
done
sleep 1
sqlite3 "$work/primary/mnt/app.db" "PRAGMA journal_mode=$mode; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);" > /dev/null
sleep 1
sql="$work/insert.sql"
{ echo ".timeout 5000"; for i in $(seq 1 "$count"); do echo "INSERT INTO t (v) VALUES ('row $i');"; done; } > "$sql"
t0=$(date +%s.%N)
sqlite3 "$work/primary/mnt/app.db" < "$sql"
t1=$(date +%s.%N)
"$bin" run -url "http://127.0.0.1:$replica_port" -with-halt-lock-on "$work/replica/mnt/app.db" -v \
    -- sh -c "sqlite3 '$work/replica/mnt/app.db' < '$sql'" 2> "$work/run.err"
t2=$(date +%s.%N)
sleep 1
per() { echo "scale=3; ($2 - $1) * 1000 / $count" | bc; }
echo "$(basename "$bin") $mode: $(per "$t0" "$t1") ms per commit on the primary, $(per "$t1" "$t2") ms per commit on the replica under a halt lock ($count commits)"
grep -i "acquired in" "$work/run.err" || true
primary_pos=$(cat "$work/primary/mnt/app.db-pos")
replica_pos=$(cat "$work/replica/mnt/app.db-pos")
echo "positions: primary $primary_pos, replica $replica_pos"
[ "$primary_pos" = "$replica_pos" ]
