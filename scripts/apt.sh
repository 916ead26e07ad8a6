# Sourced by the scripts: installs Debian packages the build and the tests need when they
# are missing. rustup brings no C compiler, but the link step needs `cc`, crates with C parts (ring,
# under the HTTPS probes) need gcc, and libFuzzer (the fuzz step) needs a C++ compiler.

APT_UPDATED=0
# apt_install PACKAGE...: as root, or through sudo (which keeps no environment of ours: the
# variable goes on its command line).
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "${0##*/}: need root or sudo to apt-get install $*" >&2; return 1; }
        sudo=(sudo)
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        "${sudo[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# ensure_c_tools [--c++]: gcc, the C library's headers and binutils; g++ too with --c++.
ensure_c_tools() {
    local missing=()
    command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    if [ "${1:-}" = --c++ ]; then
        command -v c++ >/dev/null 2>&1 || missing+=(g++)
    fi
    { command -v nm >/dev/null 2>&1 && command -v ar >/dev/null 2>&1; } || missing+=(binutils)
    command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "${0##*/}: installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

# require_root: the live scripts build network namespaces and load XDP programs.
require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "${0##*/}: needs root (network namespaces, XDP, raw sockets)" >&2
        exit 1
    fi
}

# install_tools TOOL:PACKAGE...: installs the packages of the tools not on the PATH.
install_tools() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "${0##*/}: installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}
