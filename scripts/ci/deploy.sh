#!/usr/bin/env bash
# Roll the host out to a cluster: migrations (Job), then the Deployment, Istio
# and the rest (kustomize overlay), then wait for the rollout.
#   ENV=prod IMAGE=registry.example.com/mercato/host:1.4.0 scripts/ci/deploy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${ENV:?set ENV to dev or prod}"
: "${IMAGE:?set IMAGE}"
overlay="deploy/k8s/overlays/$ENV"
ns=$(awk '/^namespace:/ {print $2}' "$overlay/kustomization.yaml")
kubectl kustomize "$overlay" | sed "s#registry.example.com/mercato/host:[^\"' ]*#$IMAGE#g" > /tmp/mercato-rendered.yaml
kubectl -n "$ns" delete job mercato-migrate --ignore-not-found
kubectl apply -f /tmp/mercato-rendered.yaml
kubectl -n "$ns" wait --for=condition=complete job/mercato-migrate --timeout=300s
kubectl -n "$ns" rollout status deployment/mercato --timeout=600s
