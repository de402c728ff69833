#!/usr/bin/env bash
# Validate deploy/ offline: hadolint, kubernetes-validate, Istio fields, and the
# configuration keys of the ConfigMap and README against the binary's.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --locked -p mercato
python3 deploy/check.py --mercato target/debug/mercato
