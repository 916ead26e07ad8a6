#!/usr/bin/env bash
# Builds lb-core into a #![no_std] staticlib (this crate), proves that no `std` code is in the
# archive, links it into main.c with plain gcc and runs the C checks (also under ASan/UBSan).
# Called by scripts/test.sh; runs alone too: nostd-check/check.sh
set -euo pipefail

# Build under the repository's ignored target/ (this crate is its own workspace), or under
# $CARGO_TARGET_DIR/nostd-check when a target directory is set.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    CARGO_TARGET_DIR="$(realpath -m "$CARGO_TARGET_DIR")/nostd-check"
fi
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/cpu.sh
. ../scripts/cpu.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-../target/nostd-check}"
OUT="$CARGO_TARGET_DIR"
LIB="$OUT/release/libnostd_check.a"

echo "nostd-check: cargo build --release (lb-core with default-features = false, panic = abort)"
cargo build --release
echo "nostd-check: cargo clippy"
cargo clippy --release -- -D warnings

# 1. No `std` in the archive: no std object member, and no std symbol under either mangling
#    (legacy `_ZN3std...`, v0 `...Cs<hash>_3std...`) nor demangled (`std::`).
members="$OUT/nostd-members.txt"
symbols="$OUT/nostd-symbols.txt"
demangled="$OUT/nostd-symbols-demangled.txt"
ar t "$LIB" >"$members"
nm "$LIB" 2>/dev/null >"$symbols" || true
nm -C "$LIB" 2>/dev/null >"$demangled" || true
[ -s "$symbols" ] || { echo "nostd-check: nm printed no symbols for $LIB" >&2; exit 1; }
found=0
if grep -E '^std-' "$members"; then found=1; fi
if grep -E '_ZN3std|Cs[0-9A-Za-z_]+_3std[0-9]' "$symbols" | head -20; then found=1; fi
if grep -E '(^|[^A-Za-z0-9_])std::' "$demangled" | head -20; then found=1; fi
if [ "$found" -ne 0 ]; then
    echo "nostd-check: FAILED: std code is linked into $LIB (lb-core must build without std)" >&2
    exit 1
fi
for sym in nostd_flow_key nostd_vxlan_encap nostd_vxlan_decap; do
    grep -qE " T $sym\$" "$symbols" || { echo "nostd-check: $sym not exported by $LIB" >&2; exit 1; }
done
echo "nostd-check: no std in $(basename "$LIB"): members $(sed 's/-.*//' "$members" | sort -u | tr '\n' ' ')"

# 2. Link with plain gcc and run. The precompiled `core` is built for panic=unwind, so its objects
#    carry a DW.ref to `rust_eh_personality`, which nothing here defines or needs: --gc-sections
#    drops that unreferenced data (the usual way to link a no_std staticlib on stable Rust).
CFLAGS=(-std=c11 -Wall -Wextra -Werror -O1 -g)
gcc "${CFLAGS[@]}" -o "$OUT/main" main.c "$LIB" -Wl,--gc-sections
timeout 30 "$OUT/main"
gcc "${CFLAGS[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
    -o "$OUT/main-asan" main.c "$LIB" -Wl,--gc-sections
# No leak check: nothing here allocates, and LeakSanitizer needs ptrace, which some sandboxes forbid.
ASAN_OPTIONS=detect_leaks=0 timeout 60 "$OUT/main-asan"
