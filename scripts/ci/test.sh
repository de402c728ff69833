#!/usr/bin/env bash
# The test command (README): every test, including the OCI registry tests and
# the deployment file checks. Installs what is missing first (setup.sh);
# needs PostgreSQL on 127.0.0.1:5432 (trust auth) and Node.js + npm.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/ci/setup.sh
export RUST_BACKTRACE=0
cargo test --workspace --locked
