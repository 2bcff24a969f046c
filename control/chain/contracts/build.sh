#!/usr/bin/env bash
# Regenerates out/RunnelSettlement.json from RunnelSettlement.sol with the pinned solcjs
# (control/chain/npm: `npm ci --ignore-scripts` there, or scripts/setup.sh). The artifact is
# committed: cargo build reads it with include_str! and never needs Node.
#
#   control/chain/contracts/build.sh           rewrite the artifact
#   control/chain/contracts/build.sh --check   fail if the committed artifact is stale
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
npm_dir="$here/../npm"
source="$here/RunnelSettlement.sol"
artifact="$here/out/RunnelSettlement.json"

case "${1:-}" in
    "") mode=write ;;
    --check) mode=check ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

command -v node >/dev/null || { echo "build.sh: node is not installed (it is only needed to regenerate the artifact)" >&2; exit 1; }
if [ ! -d "$npm_dir/node_modules/solc" ]; then
    echo "build.sh: no solc in $npm_dir/node_modules: run (cd control/chain/npm && npm ci --ignore-scripts)" >&2
    exit 1
fi

if [ "$mode" = write ]; then
    mkdir -p "$(dirname "$artifact")"
    node "$here/compile.cjs" "$source" "$artifact" "$npm_dir"
    echo "wrote $artifact"
else
    fresh="$(mktemp)"
    trap 'rm -f "$fresh"' EXIT
    node "$here/compile.cjs" "$source" "$fresh" "$npm_dir"
    if ! cmp -s "$fresh" "$artifact"; then
        echo "build.sh --check: $artifact is stale: run control/chain/contracts/build.sh and commit the result" >&2
        exit 1
    fi
    echo "$artifact is up to date"
fi
