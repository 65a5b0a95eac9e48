#!/usr/bin/env bash
# Builds every fuzz target the way cargo-fuzz does and runs each for SECONDS, then prints, per
# target: executions, final coverage (cov: edges, ft: features), corpus size, and crashes.
#
# Usage: ./run.sh [SECONDS] [TARGET...]        (default: 60 seconds, every fuzz_targets/*.rs)
# Environment:
#   FUZZ_SANITIZER=address   build with AddressSanitizer (nightly flag, via RUSTC_BOOTSTRAP=1)
#   FUZZ_JOBS=N              cargo build jobs (default: cargo's)
#   FUZZ_ARGS="..."          extra libFuzzer flags for every target (e.g. -max_len=8192)
#   FUZZ_BUILD_ONLY=1        build, do not run
#
# Layout (cargo-fuzz's): corpus/<target>/ grows across runs and starts from seeds/<target>/
# (regenerate with ./seed.sh); crashes go to artifacts/<target>/; logs to logs/<target>.log.
# Reproduce a crash: target/<triple>/release/<target> artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
[ $# -gt 0 ] && shift
case "$seconds" in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
# Sanitizer builds get their own directory so they do not invalidate the plain one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
[ "${FUZZ_SANITIZER:-none}" = none ] || CARGO_TARGET_DIR="$CARGO_TARGET_DIR/$FUZZ_SANITIZER"

# cargo-fuzz's flags (cargo fuzz build, release mode, default options; see its src/project.rs),
# plus debug assertions and overflow checks (its `-a`): an overflow in the library is a bug.
flags="-Cpasses=sancov-module"
flags+=" -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
flags+=" --cfg fuzzing -Clink-dead-code"
flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
flags+=" -Ccodegen-units=1"
flags+=" -Cdebug-assertions -Coverflow-checks"
case "${FUZZ_SANITIZER:-none}" in
  none) ;;
  address)
    flags+=" -Zsanitizer=address"
    export RUSTC_BOOTSTRAP=1
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
    ;;
  *) echo "FUZZ_SANITIZER: none or address" >&2; exit 2 ;;
esac

bins=()
for t in "${targets[@]}"; do
  [ -f "fuzz_targets/$t.rs" ] || { echo "no target $t" >&2; exit 2; }
  bins+=(--bin "$t")
done

echo "== building ${#targets[@]} targets ($triple, sanitizer: ${FUZZ_SANITIZER:-none})"
start=$(date +%s)
# --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
RUSTFLAGS="$flags ${RUSTFLAGS:-}" cargo build --release --config profile.release.debug=true \
  --target "$triple" ${FUZZ_JOBS:+--jobs "$FUZZ_JOBS"} "${bins[@]}"
echo "== built in $(( $(date +%s) - start ))s"
[ -n "${FUZZ_BUILD_ONLY:-}" ] && exit 0

if [ ! -d seeds ]; then
  echo "== no seeds/: generating them"
  ./seed.sh
fi

mkdir -p logs
results=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  echo "== $t: ${seconds}s"
  status=0
  # shellcheck disable=SC2086
  "$CARGO_TARGET_DIR/$triple/release/$t" \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=20 \
    -artifact_prefix="artifacts/$t/" ${FUZZ_ARGS:-} \
    "corpus/$t" "seeds/$t" > "logs/$t.log" 2>&1 || status=$?
  after=$(find "artifacts/$t" -type f | wc -l)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "logs/$t.log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<< "$last")
  crashes=$(( after - before ))
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    echo "!! $t: exit $status, $crashes new artifact(s) in artifacts/$t/ (log: logs/$t.log)"
    grep -m1 -E "panicked at|ERROR: libFuzzer|==ERROR" -A3 "logs/$t.log" || true
  fi
  results+=("$(printf '%-20s %10s %8s %7s %7s %6s %8s' "$t" "${execs:-?}" "${speed:-?}" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes")")
done

echo
printf '%-20s %10s %8s %7s %7s %6s %8s\n' target execs exec/s cov ft corpus crashes
for r in "${results[@]}"; do echo "$r"; done
exit "$failed"
