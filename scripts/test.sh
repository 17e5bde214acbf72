#!/usr/bin/env bash
# Runs every check and test replite has, on a fresh Debian machine with Rust installed:
# installs the system packages the tests need, then formatting, lints and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: FUSE for real mounts, etcd for lease tests, protoc for the
# etcd client build, sqlite3 (the application in a log test, and hand checks), iproute2 (ip netns) and util-linux (nsenter) for
# daemons on hosts of their own. Installed only when missing.
bash scripts/install-packages.sh fuse3 etcd-server protobuf-compiler sqlite3 iproute2 util-linux

# In CI the LiteFS fixtures in ../shared must be there; locally a missing shared/ is a skip.
if [ "${CI:-}" = "true" ]; then export REPLITE_REQUIRE_FIXTURES=1; fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
