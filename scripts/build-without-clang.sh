#!/usr/bin/env bash
# Builds runnel-proto, runnel-core and runnel-client where clang cannot run, and checks that
# none of them depends on the XDP crate (aya, runnel-ebpf): a client library user or a
# simulation must not need the BPF toolchain (DESIGN.md §5).
#
#   scripts/build-without-clang.sh
#
# "Without clang": a `clang` that fails, first on PATH, and a target directory of its own
# (target/no-clang) so every build script really runs instead of reusing artifacts built
# with clang around.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
crates=(-p runnel-proto -p runnel-core -p runnel-client)

if cargo tree "${crates[@]}" -e normal,build --prefix none | grep -E '^(aya|runnel-ebpf|runnel-node) '; then
    echo "build-without-clang: the crates above must not be in the tree of proto/core/client" >&2
    exit 1
fi

fake="$repo/target/no-clang/bin"
mkdir -p "$fake"
printf '#!/bin/sh\necho "clang was invoked: $*" >&2\nexit 1\n' >"$fake/clang"
chmod +x "$fake/clang"
PATH="$fake:$PATH" CARGO_TARGET_DIR="$repo/target/no-clang" cargo build "${crates[@]}" --lib
echo "build-without-clang: runnel-proto, runnel-core and runnel-client built with clang hidden"
