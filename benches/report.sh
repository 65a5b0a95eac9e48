#!/usr/bin/env bash
# Runs every benchmark (unless --no-run) and prints one markdown table: each operation, its
# primitive floor measured in the same run (benches/floor/), ours/floor, vodozemac's nearest
# equivalent (benches/vodozemac.rs) and ours/vodozemac; then the primitives themselves.
#
# Usage: benches/report.sh [--no-run] [criterion arguments...]
#   e.g. benches/report.sh -- --measurement-time 10
# Reads $CARGO_TARGET_DIR/criterion (default target/criterion). Means of criterion's estimates.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
if [ "${1:-}" = "--no-run" ]; then
  shift
else
  cargo bench --bench primitives --bench ratchet --bench handshake --bench group \
    --bench fanout --bench sealed --bench vodozemac "$@" >&2
fi
python3 - "$target/criterion" <<'PY'
import json, os, sys
root = sys.argv[1]

def est(path):
    """Mean point estimate in nanoseconds of a criterion benchmark directory, or None."""
    if path is None:
        return None
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

def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "—"

V = "vodozemac_"
# (operation, ours, floor, vodozemac)
rows = [
    ("session setup, initiator: X3DH + first 100 B", "handshake_x3dh_initiate", "handshake_x3dh_floor_initiate", V + "olm_outbound+encrypt_100B"),
    ("session setup, responder: X3DH + first 100 B", "handshake_x3dh_accept", "handshake_x3dh_floor_accept", V + "olm_inbound_100B"),
    ("session setup, initiator: PQXDH + first 100 B", "handshake_pqxdh_initiate", "handshake_pqxdh_floor_initiate", None),
    ("session setup, responder: PQXDH (last-resort KEM key) + first 100 B", "handshake_pqxdh_accept", "handshake_pqxdh_floor_accept", None),
    ("session setup, responder: PQXDH (one-time KEM key, expanded on use) + first 100 B", "handshake_pqxdh-one-time-kem_accept", "handshake_pqxdh_floor_accept", None),
    ("same-sender encrypt+decrypt, 100 B", "session_encrypt+decrypt_100B", "session_floor_encrypt+decrypt_100B", V + "olm_encrypt+decrypt_100B"),
    ("ping-pong round (2 DH ratchet steps), 100 B", "session_ping-pong_100B", "session_floor_ping-pong_100B", V + "olm_ping-pong_100B"),
    ("decrypt 100 B, 0 skipped keys stored", "session_decrypt_100B_skipped=0", None, None),
    ("decrypt 100 B, 2000 skipped keys stored (floor: 0 stored)", "session_decrypt_100B_skipped=2000", "session_decrypt_100B_skipped=0", None),
    ("snapshot + restore, fresh session", "session_snapshot+restore", None, V + "olm_pickle+unpickle"),
    ("group encrypt, 100 B", "group_encrypt_100B", "floor_group-encrypt_100B", V + "megolm_encrypt_100B"),
    ("group decrypt, 100 B", "group_decrypt_100B_skipped=0", "floor_group-decrypt_100B", V + "megolm_decrypt_100B"),
    ("group decrypt, 2000 skipped keys stored (floor: 0 stored)", "group_decrypt_100B_skipped=2000", "group_decrypt_100B_skipped=0", None),
    ("group snapshot + restore (one sender)", "group_snapshot+restore", None, None),
] + [
    (f"fan-out of 1 KiB to {n} device{'s' if n > 1 else ''}", f"fanout/1KiB_{n}-devices", f"fanout/floor_1KiB_{n}-devices", None)
    for n in (1, 10, 100, 1000)
] + [
    ("sealed group message to 1000 devices", "sealed/seal_group-message_1000-devices", "sealed/floor_seal_group-message_1000-devices", None),
    ("server split of that upload", "sealed/server_split_1000-devices", None, None),
    ("open one sealed envelope", "sealed/open", None, None),
]
print("| operation | ours | floor | ours/floor | vodozemac | ours/vodozemac |")
print("|---|---:|---:|---:|---:|---:|")
for name, ours, floor, vodo in rows:
    o, fl, v = est(ours), est(floor), est(vodo)
    print(f"| {name} | {fmt(o)} | {fmt(fl)} | {ratio(o, fl)} | {fmt(v)} | {ratio(o, v)} |")
for name, path, floor in (("attachment encrypt, 64 MiB", "attachment/encrypt_64MiB", "attachment/floor_encrypt_64MiB"),
                          ("attachment decrypt, 64 MiB", "attachment/decrypt_64MiB", None)):
    o, fl = est(path), est(floor)
    rate = f"{64 * 2**20 / o:.2f} GB/s ({64 / (o / 1e9) / 1024:.2f} GiB/s)" if o else "—"
    print(f"| {name} | {fmt(o)} = {rate} | {fmt(fl)} | {ratio(o, fl)} | — | — |")

print()
print("| primitive | time |")
print("|---|---:|")
for name, path in (
    ("X25519 key generation", "primitive_x25519_keygen"),
    ("X25519 DH", "primitive_x25519_dh"),
    ("Ed25519 sign, 32 B", "primitive_ed25519_sign_32B"),
    ("Ed25519 sign, 306 B", "primitive_ed25519_sign_306B"),
    ("Ed25519 verify (strict), 32 B", "primitive_ed25519_verify-strict_32B"),
    ("Ed25519 verify (strict), 306 B", "primitive_ed25519_verify-strict_306B"),
    ("Ed25519 key validation (decompress + torsion check)", "primitive_ed25519_decompress+torsion"),
    ("AES-256-GCM key setup + seal, 100 B", "primitive_aes256gcm_seal_100B"),
    ("AES-256-GCM key setup + seal, 1 KiB", "primitive_aes256gcm_seal_1KiB"),
    ("AES-256-GCM key setup + seal, 64 KiB", "primitive_aes256gcm_seal_64KiB"),
    ("KDF_CK: 2 × HMAC-SHA-256", "primitive_kdf-ck_2x-hmac-sha256"),
    ("HKDF-SHA-256, 44 B out", "primitive_hkdf-sha256_44B"),
    ("SHA-256, 306 B", "primitive_sha256_306B"),
    ("ML-KEM-1024 key generation (from seed)", "primitive_mlkem1024_keygen"),
    ("ML-KEM-1024 encapsulation", "primitive_mlkem1024_encaps"),
    ("ML-KEM-1024 decapsulation (from seed)", "primitive_mlkem1024_decaps"),
):
    print(f"| {name} | {fmt(est(path))} |")
PY
