#!/usr/bin/env bash
# Push dist/components/*.wasm to $REGISTRY/mercato/<name>:$TAG with `mercato push`
# (CNCF Wasm layout), signed when $MERCATO_SIGNING_KEY names a key file, and
# move the `stable` tag that the hosts watch (deploy.watch).
#   REGISTRY=registry.example.com TAG=1.4.0 scripts/ci/push-components.sh
# Credentials: MERCATO_REGISTRY__USERNAME / MERCATO_REGISTRY__PASSWORD.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${REGISTRY:?set REGISTRY, e.g. registry.example.com}"
: "${TAG:?set TAG, e.g. the git commit}"
cargo build --locked --release -p mercato
sign=()
if [ -n "${MERCATO_SIGNING_KEY:-}" ]; then sign=(--sign "$MERCATO_SIGNING_KEY"); fi
for c in catalog cart inventory payment order; do
  for t in "$TAG" stable; do
    target/release/mercato push "${sign[@]}" "dist/components/$c.wasm" "$REGISTRY/mercato/$c:$t"
  done
done
