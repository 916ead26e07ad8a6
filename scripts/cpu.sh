# Sourced by the other scripts. The workspace builds x86-64 code for x86-64-v3 (.cargo/config.toml:
# AVX2, BMI1/2, FMA, MOVBE, LZCNT, every x86-64 server CPU since 2013-2015). On an x86-64 CPU
# without them, the scripts build for the x86-64 baseline instead: RUSTFLAGS, when set (even
# empty), overrides the configuration. A RUSTFLAGS of the caller's own is left alone.
if [ "$(uname -m)" = x86_64 ] && [ -z "${RUSTFLAGS+set}" ] && [ -r /proc/cpuinfo ]; then
    for cpu_flag in avx2 bmi1 bmi2 fma movbe f16c abm; do
        if ! grep -qw "$cpu_flag" /proc/cpuinfo; then
            echo "${0##*/}: this CPU lacks $cpu_flag (x86-64-v3): building for the x86-64 baseline" >&2
            export RUSTFLAGS=""
            break
        fi
    done
    unset cpu_flag
fi
