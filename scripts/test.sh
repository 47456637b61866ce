#!/usr/bin/env bash
# The whole test suite: installs the pinned nats-server, chromium and promtool if needed, then
# unit and integration tests (each integration test starts its own nats-server on a free port),
# clippy and rustfmt.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-nats-server.sh
# chromium and chromedriver (status and review page browser tests) and promtool (/metrics lint
# test): skipped when present.
./scripts/install-test-tools.sh
export NATS_SERVER_BIN="$PWD/.tools/nats-server/bin/nats-server"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# Integration tests each run a nats-server and a runtime: keep parallelism bounded on 2 cores.
cargo test --all-targets -- --test-threads "${HMS_TEST_THREADS:-3}"
