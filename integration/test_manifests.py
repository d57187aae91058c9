"""The control plane's Kubernetes manifests (deploy/kubernetes/): every object validates against
Kubernetes' own schemas (the validators of the npm package kubernetes-models, pinned and
installed by `make`), and the container's arguments are options `keyward serve` really takes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

# Kubernetes manifests, no filter: not run again on the native pass (pytest.ini)
pytestmark = pytest.mark.one_host

REPO = Path(__file__).resolve().parent.parent
KEYWARD = Path(os.environ.get("KEYWARD_BIN", REPO / "target" / "debug" / "keyward"))
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))


def objects() -> list[dict]:
    found = []
    for path in MANIFESTS:
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def validate(documents: list[dict]) -> subprocess.CompletedProcess:
    models = os.environ.get("K8S_MODELS_DIR")
    if not models or not Path(models, "node_modules", "kubernetes-models").is_dir():
        pytest.fail("K8S_MODELS_DIR does not hold kubernetes-models: `make` installs it", pytrace=False)
    return subprocess.run(["node", str(REPO / "scripts" / "validate_k8s.mjs"), models],
                          input=json.dumps(documents), capture_output=True, text=True, timeout=120)


def test_manifests_validate_against_the_kubernetes_schemas():
    documents = objects()
    kinds = sorted(f"{d['apiVersion']}/{d['kind']}" for d in documents)
    assert kinds == ["apps/v1/Deployment", "policy/v1/PodDisruptionBudget", "v1/Service", "v1/ServiceAccount"]
    result = validate(documents)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == len(documents)


def test_the_validator_catches_what_kubernetes_would_refuse():
    deployment = next(d for d in objects() if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "three"
    result = validate([broken])
    assert result.returncode != 0 and "INVALID" in result.stdout, result.stdout


def test_the_deployment_runs_keyward_serve_with_options_it_has():
    deployment = next(d for d in objects() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[0] == "serve"
    help_text = subprocess.run([str(KEYWARD), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(^|\s){re.escape(flag)}[\s=<]", help_text), f"keyward serve has no {flag}"
    # Several replicas, never fewer than two serving through a voluntary disruption; probes on the
    # endpoints keyward serves; secrets by reference only.
    assert deployment["spec"]["replicas"] >= 2
    pdb = next(d for d in objects() if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] >= 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert not any(d["kind"] == "Secret" for d in objects()), "secrets are referenced, never shipped"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
