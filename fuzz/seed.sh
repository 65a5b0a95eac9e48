#!/usr/bin/env bash
# Regenerates seeds/<target>/ from ../test-vectors/*.json and the fuzz fixtures, then runs every
# target (uninstrumented) over its seeds and a scripted interaction (gen_seeds --check).
# Usage: ./seed.sh [gen_seeds arguments...]
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# A plain build: no sanitizer-coverage flags (this binary is not a fuzz target).
env -u RUSTFLAGS cargo build --release --bin gen_seeds
"$CARGO_TARGET_DIR/release/gen_seeds" --check "$@"
