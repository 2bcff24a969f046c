#!/usr/bin/env bash
# Installs what Runnel's build and tests need on a fresh Debian 12 machine, and nothing else.
#
# Idempotent: each step first checks whether its result is already there, so a second run
# does no work and makes no network requests. Quiet on success; on failure it prints which
# step failed, the command to run by hand, and the end of that step's log.
#
#   scripts/setup.sh            install / check
#   source scripts/setup.sh     the same, and also raises `ulimit -l` in the calling shell
#                               (scripts/test.sh does this: a child process cannot raise
#                               its parent's limits)
#
# What it ensures:
#   - apt: clang + libbpf-dev (the XDP program), nats-server (baseline benchmarks),
#     iproute2 (network namespaces in tests), ethtool (tuning/check.sh), build-essential
#     and pkg-config (C parts of crates: libsecp256k1, libFuzzer); linux-perf if the
#     archive has it (optional, for profiling).
#   - Rust 1.95 with clippy and rustfmt (rustup); installed with rustup if cargo is missing.
#   - the chain tools (control/chain/npm: anvil, the StreamRegistry and DATA artifacts, solc),
#     pinned by its package-lock.json and installed with `npm ci --ignore-scripts`; Node.js
#     and npm from apt when there is no npm on PATH. Re-run when the lock file changes.
#   - cargo-fuzz, pinned (RUNNEL_CARGO_FUZZ_VERSION) to a release that builds on Rust 1.95.
#   - RLIMIT_MEMLOCK: glommio and io_uring need ≥ 512 KiB locked memory; raised to the hard
#     limit (unlimited as root) in a sourcing shell, reported otherwise.

runnel_setup() {
    local cargo_fuzz_version="${RUNNEL_CARGO_FUZZ_VERSION:-0.13.2}"
    local rust_version="1.95.0"
    local log
    log="$(mktemp -t runnel-setup.XXXXXX.log)"

    # Runs one step quietly; on failure says what failed and shows the log.
    _runnel_step() {
        local what="$1"
        shift
        if ! "$@" >>"$log" 2>&1; then
            echo "setup.sh: FAILED: $what" >&2
            echo "setup.sh: command: $*" >&2
            echo "setup.sh: last lines of $log:" >&2
            tail -n 25 "$log" >&2
            return 1
        fi
    }

    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        fi
    fi

    # --- apt packages ---------------------------------------------------------------------
    if command -v apt-get >/dev/null 2>&1; then
        local wanted=(clang libbpf-dev nats-server iproute2 ethtool build-essential pkg-config)
        local missing=()
        local package
        for package in "${wanted[@]}"; do
            if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
                missing+=("$package")
            fi
        done
        local apt_install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends)
        local perf_installed=1
        dpkg-query -W -f='${Status}' linux-perf 2>/dev/null | grep -q "install ok installed" || perf_installed=0
        if [ "${#missing[@]}" -gt 0 ]; then
            if [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; then
                echo "setup.sh: FAILED: packages ${missing[*]} are missing and this is not root (no sudo)" >&2
                echo "setup.sh: run as root: apt-get install -y ${missing[*]}" >&2
                return 1
            fi
            _runnel_step "apt-get update" $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
            _runnel_step "apt-get install ${missing[*]}" $sudo "${apt_install[@]}" "${missing[@]}" || return 1
            if [ "$perf_installed" -eq 0 ]; then
                $sudo "${apt_install[@]}" linux-perf >>"$log" 2>&1 || true # optional
            fi
        elif [ "$perf_installed" -eq 0 ] && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; } \
            && apt-cache show linux-perf >/dev/null 2>&1; then
            # Optional, and only from the local package lists: an archive without linux-perf
            # must not cost an apt-get update on every run.
            $sudo "${apt_install[@]}" linux-perf >>"$log" 2>&1 || true
        fi
    else
        echo "setup.sh: note: no apt-get (not Debian?); install clang, libbpf-dev, nats-server, iproute2, ethtool yourself" >&2
    fi

    # --- Rust -----------------------------------------------------------------------------
    if [ -d "$HOME/.cargo/bin" ]; then
        case ":$PATH:" in
            *":$HOME/.cargo/bin:"*) ;;
            *) export PATH="$HOME/.cargo/bin:$PATH" ;;
        esac
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        if ! command -v curl >/dev/null 2>&1; then
            _runnel_step "install curl (for rustup)" $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl ca-certificates || return 1
        fi
        _runnel_step "install Rust $rust_version with rustup" \
            sh -c "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain $rust_version -c clippy -c rustfmt" || return 1
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    local rustc_version
    rustc_version="$(rustc --version | awk '{print $2}')"
    if [ "$(printf '%s\n%s\n' "$rust_version" "$rustc_version" | sort -V | head -n 1)" != "$rust_version" ]; then
        echo "setup.sh: FAILED: rustc $rustc_version is older than $rust_version (workspace rust-version)" >&2
        echo "setup.sh: run: rustup toolchain install $rust_version && rustup default $rust_version" >&2
        return 1
    fi
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        _runnel_step "rustup component add clippy rustfmt" rustup component add clippy rustfmt || return 1
    fi

    # --- cargo-fuzz -----------------------------------------------------------------------
    if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
        _runnel_step "cargo install cargo-fuzz $cargo_fuzz_version (about a minute)" \
            cargo install cargo-fuzz --locked --version "$cargo_fuzz_version" || return 1
    fi

    # --- chain tools (npm) ------------------------------------------------------------------
    local npm_dir
    npm_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/control/chain/npm"
    if ! command -v npm >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; then
            echo "setup.sh: FAILED: npm is missing and this is not root (no sudo)" >&2
            echo "setup.sh: run as root: apt-get install -y nodejs npm" >&2
            return 1
        fi
        _runnel_step "apt-get update" $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
        _runnel_step "apt-get install nodejs npm" $sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends nodejs npm || return 1
    fi
    # npm ci writes node_modules/.package-lock.json; it matches the lock file when installed.
    if [ ! -f "$npm_dir/node_modules/.package-lock.json" ] \
        || [ "$npm_dir/package-lock.json" -nt "$npm_dir/node_modules/.package-lock.json" ]; then
        _runnel_step "npm ci in $npm_dir (anvil, contract artifacts, solc)" \
            npm ci --ignore-scripts --no-audit --no-fund --prefix "$npm_dir" || return 1
    fi

    # --- locked memory --------------------------------------------------------------------
    local memlock_min_kib=512
    local soft
    soft="$(ulimit -l)"
    if [ "$soft" != "unlimited" ] && [ "$soft" -lt "$memlock_min_kib" ]; then
        # Raise the soft limit to the hard limit (root may raise the hard limit too).
        ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
        soft="$(ulimit -l)"
        if [ "$soft" != "unlimited" ] && [ "$soft" -lt "$memlock_min_kib" ]; then
            echo "setup.sh: WARNING: locked-memory limit is $soft KiB; the dataplane needs >= $memlock_min_kib KiB." >&2
            echo "setup.sh: raise it: 'ulimit -l unlimited' as root, or a memlock line in /etc/security/limits.conf" >&2
        fi
    fi

    rm -f "$log"
    unset -f _runnel_step
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    runnel_setup
else
    runnel_setup || return 1
fi
