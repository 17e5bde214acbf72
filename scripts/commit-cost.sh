#!/usr/bin/env bash
# What one commit costs the daemon: context switches and CPU per commit of a single node
# (static lease) under scripts/commit-load.py, read from /proc. Counts, unlike timings, barely
# move with the machine's load. Run as root from the repository root after a release build:
#   bash scripts/commit-cost.sh [BINARY] [JOURNAL_MODE] [SYNCHRONOUS] [COMMITS]
set -euo pipefail
bin=${1:-target/release/replite}
mode=${2:-WAL}
sync=${3:-NORMAL}
count=${4:-10000}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d ${COST_DIR:-/tmp}/replite-commit-cost.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/mnt" "$work/data"
cat > "$work/replite.yml" <<YAML
data:
  dir: $work/data
fuse:
  dir: $work/mnt
http:
  addr: 127.0.0.1:$port
lease:
  type: static
  candidate: true
  hostname: commit-cost
  advertise-url: http://127.0.0.1:$port
YAML
"$bin" mount -config "$work/replite.yml" > "$work/log.txt" 2>&1 < /dev/null &
daemon=$!
cleanup() {
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { echo "the mount did not come up; see $work/log.txt" >&2; exit 1; }

switches() { cat /proc/"$daemon"/task/*/status | awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n }'; }
ticks() { awk '{ print $14 + $15 }' /proc/"$daemon"/stat; }

python3 "$here/commit-load.py" "$work/mnt/db" "$mode" "$sync" "$((count / 5 + 1))" > /dev/null # warm-up
s0=$(switches); t0=$(ticks)
rate=$(python3 "$here/commit-load.py" "$work/mnt/db" "$mode" "$sync" "$count")
s1=$(switches); t1=$(ticks)
hz=$(getconf CLK_TCK)
echo "$mode/$sync: $rate, $(python3 -c "print(f'{($s1 - $s0) / $count:.1f} context switches and {($t1 - $t0) * 1e6 / $hz / $count:.0f} us of daemon CPU per commit')")"
