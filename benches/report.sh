#!/usr/bin/env bash
# Runs every benchmark (unless --no-run) and prints one table: each operation, its primitive
# floor measured in the same run, and the ratio. The vodozemac columns are not filled yet
# (issue 8). Usage: benches/report.sh [--no-run]
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
if [ "${1:-}" != "--no-run" ]; then
  cargo bench --bench primitives --bench ratchet --bench handshake --bench group \
    --bench fanout --bench sealed >&2
fi
python3 - "$target/criterion" <<'PY'
import json, os, sys
root = sys.argv[1]

def est(path):
    """Mean point estimate in nanoseconds of a criterion benchmark directory, or None."""
    f = os.path.join(root, path, "new", "estimates.json")
    if not os.path.exists(f):
        return None
    return json.load(open(f))["mean"]["point_estimate"]

def fmt(ns):
    if ns is None:
        return "—"
    for unit, scale in (("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.0f} ns"

# (operation, our benchmark, its floor or None)
rows = [
    ("same-sender encrypt+decrypt, 100 B", "session_encrypt+decrypt_100B", None),
    ("decrypt 100 B, 0 skipped keys", "session_decrypt_100B_skipped=0", None),
    ("decrypt 100 B, 2000 skipped keys", "session_decrypt_100B_skipped=2000", "session_decrypt_100B_skipped=0"),
    ("group encrypt, 100 B", "group_encrypt_100B", "floor_group-encrypt_100B"),
    ("group decrypt, 100 B", "group_decrypt_100B_skipped=0", "floor_group-decrypt_100B"),
    ("group decrypt, 2000 skipped keys", "group_decrypt_100B_skipped=2000", "group_decrypt_100B_skipped=0"),
    ("group snapshot+restore", "group_snapshot+restore", None),
] + [
    (f"fan-out 1 KiB to {n}", f"fanout/1KiB_{n}-devices", f"fanout/floor_1KiB_{n}-devices")
    for n in (1, 10, 100, 1000)
] + [
    ("sealed group message to 1000 devices", "sealed/seal_group-message_1000-devices", None),
    ("server split of that upload", "sealed/server_split_1000-devices", None),
    ("open a sealed envelope", "sealed/open", None),
    ("attachment encrypt, 64 MiB", "attachment/encrypt_64MiB", None),
    ("attachment decrypt, 64 MiB", "attachment/decrypt_64MiB", None),
]
print(f"| {'operation':<40} | {'ours':>10} | {'floor':>10} | {'ours/floor':>10} | vodozemac | ours/vodozemac |")
print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 12}|-----------|----------------|")
for name, ours, floor in rows:
    o = est(ours)
    fl = est(floor) if floor else None
    ratio = f"{o / fl:.2f}×" if o and fl else "—"
    print(f"| {name:<40} | {fmt(o):>10} | {fmt(fl):>10} | {ratio:>10} | — | — |")
PY
