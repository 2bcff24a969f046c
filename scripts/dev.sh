#!/usr/bin/env bash
# The "try it" command: installs what is needed, builds, and runs `runnel dev` — a local
# network of nodes on loopback with a publisher, subscribers and live numbers.
#
#   scripts/dev.sh                       3 nodes until Ctrl-C
#   scripts/dev.sh --nodes 5 --duration 10 --json
#
# Arguments are passed to `runnel dev` (see `target/release/runnel dev --help`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
cargo build --release --bin runnel
exec target/release/runnel dev "$@"
