#!/usr/bin/env bash
# The main job: `hms-sync up` on the default config. With nothing listening on
# nats://127.0.0.1:4222 it starts the pinned nats-server from nats-server.conf (embedded default).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-nats-server.sh >/dev/null
cargo build --release --quiet
exec ./target/release/hms-sync up --config config/hms-sync.yaml "$@"
