# Sourced by the other scripts (and nostd-check/check.sh). The workspace builds x86-64 code for
# x86-64-v3 (.cargo/config.toml: AVX, AVX2, BMI1/2, F16C, FMA, MOVBE, LZCNT). On an x86-64 CPU
# without them (Atom-class chips such as the C3000, many Pentium/Celeron parts, QEMU's default
# qemu64 CPU), the scripts build for the x86-64 baseline instead: RUSTFLAGS, when set (even
# empty), overrides the configuration. Flags the caller set themselves are left alone.
if [ "$(uname -m)" = x86_64 ] && [ -r /proc/cpuinfo ] && [ -z "${RUSTFLAGS+set}" ] &&
    [ -z "${CARGO_ENCODED_RUSTFLAGS+set}" ] && [ -z "${CARGO_BUILD_RUSTFLAGS+set}" ] &&
    [ -z "${CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS+set}" ]; then
    cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    for cpu_flag in avx avx2 bmi1 bmi2 f16c fma movbe abm; do
        case "$cpu_flags" in
        *" $cpu_flag "*) ;;
        *)
            echo "${0##*/}: this CPU lacks $cpu_flag (x86-64-v3): building for the x86-64 baseline" >&2
            export RUSTFLAGS=""
            break
            ;;
        esac
    done
    unset cpu_flag cpu_flags
fi
