#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30), one after the other.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# - Stable toolchain only: `-s none` (no sanitizer; lb-core forbids unsafe code, so ASan would add
#   little) needs no nightly flags. `-a` keeps debug assertions and overflow checks on, which cargo-fuzz
#   turns off in its default release build. FUZZ_TOOLCHAIN overrides the toolchain (default stable).
# - Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) if `cargo fuzz` is missing.
# - Each target starts from fuzz/corpus/TARGET; libFuzzer adds the inputs it finds there under hash
#   names, which .gitignore keeps out of git (only seed-* files are tracked). The script checks that no
#   file git would track appeared.
# - Prints one summary line per target and exits non-zero if any target crashed (the crashing input is
#   in fuzz/artifacts/TARGET/; reproduce with `cargo +stable fuzz run -s none -a TARGET FILE`).
#   Full libFuzzer logs: fuzz/target/fuzz-logs/TARGET.log.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# cargo-fuzz passes its own RUSTFLAGS, so the workspace's target-cpu (.cargo/config.toml) would not
# reach the fuzz build; it appends a RUSTFLAGS of ours, so name the CPU there: the targets then run
# the code the other builds ship (the baseline's where scripts/cpu.sh chose it).
# shellcheck source=scripts/cpu.sh
. scripts/cpu.sh
if [ "$(uname -m)" = x86_64 ] && [ -z "${RUSTFLAGS+set}" ]; then
    export RUSTFLAGS="-C target-cpu=x86-64-v3"
fi

seconds="${1:-30}"
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
shift $(( $# > 0 ? 1 : 0 ))

cargo_cmd=(cargo)
if command -v rustup >/dev/null 2>&1; then
    cargo_cmd=(cargo "+${FUZZ_TOOLCHAIN:-stable}")
fi

if ! "${cargo_cmd[@]}" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    "${cargo_cmd[@]}" install cargo-fuzz --locked
fi

fuzz_flags=(-s none -a)
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <("${cargo_cmd[@]}" fuzz list)
fi

echo "fuzz: building ${targets[*]} with $("${cargo_cmd[@]}" --version)"
"${cargo_cmd[@]}" fuzz build "${fuzz_flags[@]}"

# Files under fuzz/ that git would show as untracked before the runs (e.g. seeds not committed yet).
git_untracked() {
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files --others --exclude-standard -- fuzz | sort
    fi
}
untracked_before="$(git_untracked)"

# CI fixes libFuzzer's seed (as scripts/test.sh fixes proptest's), so that a clean clone's run
# explores the same inputs in the same order every time, up to where its time runs out.
seed_flag=()
if [ "${CI:-}" = "true" ]; then
    seed_flag=(-seed="${FUZZ_SEED:-20261203}")
fi

log_dir=fuzz/target/fuzz-logs
mkdir -p "$log_dir"
failed=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    log="$log_dir/$target.log"
    status=0
    "${cargo_cmd[@]}" fuzz run "${fuzz_flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 "${seed_flag[@]}" >"$log" 2>&1 || status=$?

    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    [ -n "$runs" ] || runs="$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$log" | tail -n1)"
    secs="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n1)"
    cov="$(grep -aE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' || true)"
    rate=""
    if [ -n "$runs" ] && [ -n "$secs" ] && [ "$secs" -gt 0 ]; then
        rate=" ($(( runs / secs ))/s)"
    fi
    if [ "$status" -eq 0 ]; then
        echo "fuzz: $target: ok, ${runs:-?} runs in ${secs:-?} s${rate}, ${cov:-no stats}"
    else
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)"
        echo "fuzz: $target: FAILED (exit $status) after ${runs:-?} runs; input: ${artifact:-none}; log: $log"
        grep -aE -A4 "panicked at|ERROR: libFuzzer|^SUMMARY" "$log" | head -n 30 | sed 's/^/    /' || true
        failed+=("$target")
    fi
done

new_files="$(comm -13 <(printf '%s\n' "$untracked_before") <(git_untracked) | sed '/^$/d')"
if [ -n "$new_files" ]; then
    echo "fuzz: these new files would be tracked by git (check .gitignore):" >&2
    printf '    %s\n' $new_files >&2
    failed+=("(untracked files)")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash"
