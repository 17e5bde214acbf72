#!/usr/bin/env bash
# Runs a local replite cluster: three nodes on 127.0.0.1 with FUSE mounts under ./replite-dev,
# the lease on a local etcd (a static lease if etcd is missing). Prints where to point sqlite3
# and a live view of roles, positions and lag; Ctrl-C stops it. Extra arguments go to
# `replite dev` (e.g. --nodes 5, --static, --exit-after 60). FUSE needs root or CAP_SYS_ADMIN.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-packages.sh fuse3 etcd-server protobuf-compiler sqlite3
cargo build -q -p replite
exec target/debug/replite dev "$@"
