#!/usr/bin/env bash
# Runs replite on the shipped sample: verifies, lists and dumps its LTX snapshot, rebuilds the
# database from it and checks the copy is byte-identical. Installs protoc first if missing
# (the etcd lease client is generated from etcd's protobuf files at build time).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-packages.sh protobuf-compiler
cargo build -q -p replite
replite=target/debug/replite
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
$replite ltx verify samples/*.ltx
$replite ltx list samples/*.ltx
$replite ltx dump samples/0000000000000001-0000000000000001.ltx
$replite ltx apply -db "$out/app.db" samples/*.ltx
cmp "$out/app.db" samples/app.db
echo "rebuilt samples/app.db byte for byte from its LTX snapshot"
