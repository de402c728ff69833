#!/usr/bin/env bash
# Build (and with PUSH=1 push) the host image from deploy/Dockerfile.
#   IMAGE=registry.example.com/mercato/host:1.4.0 scripts/ci/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${IMAGE:?set IMAGE, e.g. registry.example.com/mercato/host:1.4.0}"
hadolint deploy/Dockerfile
DOCKER_BUILDKIT=1 docker build -f deploy/Dockerfile -t "$IMAGE" .
if [ "${PUSH:-0}" = 1 ]; then docker push "$IMAGE"; fi
