#!/usr/bin/env bash
# Builds app.py into a component for the mercato:pricing/plugin world with
# componentize-py (pip install componentize-py==0.25.1).
# Usage: ./build.sh [OUT.wasm]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/plugin.wasm}"
cd "$here"
componentize-py -d ../../../wit/pricing -w plugin componentize app -o "$out"
echo "wrote $out ($(stat -c %s "$out") bytes)"
