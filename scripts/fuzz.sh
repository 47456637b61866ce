#!/usr/bin/env bash
# The property tests (src/props/) with many more cases than CI runs: connector parsing,
# template rendering, CEL filters, webhook signatures, Retry-After and the decision table.
#   ./scripts/fuzz.sh                 # 20,000 cases per property (PROPTEST_CASES)
#   PROPTEST_CASES=200000 ./scripts/fuzz.sh filter   # one area, longer
# A failure is shrunk to a minimal input and saved in proptest-regressions/props/*.txt:
# commit that file with the fix, so every later run (CI's too) tries it first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-20000}"
# Release build: many more cases per minute; still with overflow checks, as in tests.
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
cargo test --release --lib "props::${1:-}" -- --test-threads 2
