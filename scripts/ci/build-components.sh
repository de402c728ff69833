#!/usr/bin/env bash
# Build the five service components for wasm32-wasip2 into dist/components/.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p dist/components
for c in catalog cart inventory payment order; do
  cargo build --locked --target wasm32-wasip2 --profile component -p "mercato-$c"
  cp "target/wasm32-wasip2/component/mercato_$c.wasm" "dist/components/$c.wasm"
done
ls -l dist/components
