"""The Dockerfile and the Kubernetes/KServe manifests: linted, validated offline against the
Kubernetes schemas, and consistent with the server they deploy. (`make image-test` builds
and runs the image itself.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.settings import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.37.0"
MANIFESTS = ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml")


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_manifests_pass_yamllint() -> None:
    config = "{extends: default, rules: {line-length: {max: 100}}}"
    result = subprocess.run(
        [str(BIN / "yamllint"), "--strict", "-d", config, "deploy/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", MANIFESTS)
def test_each_manifest_is_valid_kubernetes(name: str) -> None:
    kubernetes_validate.validate(load(DEPLOY / "k8s" / name), K8S_VERSION, strict=True)


def test_kustomize_lists_every_manifest() -> None:
    assert sorted(load(DEPLOY / "k8s" / "kustomization.yaml")["resources"]) == sorted(MANIFESTS)


def test_the_inference_service_asks_the_runtime_for_v2() -> None:
    service = load(DEPLOY / "kserve" / "inferenceservice.yaml")
    runtime = load(DEPLOY / "kserve" / "servingruntime.yaml")
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert model["modelFormat"]["name"] in formats


def test_the_serving_runtime_runs_a_valid_pod_on_the_v2_routes() -> None:
    # No schema ships for KServe's resources; the runtime's containers are a pod spec.
    runtime = load(DEPLOY / "kserve" / "servingruntime.yaml")["spec"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime"},
        "spec": {"containers": runtime["containers"], "volumes": runtime["volumes"]},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    (container,) = runtime["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    port = container["args"][container["args"].index("--port") + 1]
    assert int(port) == container["ports"][0]["containerPort"] == 8080  # KServe's default
    settings = Settings.from_env({e["name"]: e["value"] for e in container["env"]})
    # KServe takes the port named h2c for gRPC: the server's gRPC port, on every interface.
    grpc_port = next(p["containerPort"] for p in container["ports"] if p.get("name") == "h2c")
    assert (settings.grpc_port, settings.grpc_host) == (grpc_port, "0.0.0.0")


def server_container() -> dict[str, Any]:
    spec = load(DEPLOY / "k8s" / "deployment.yaml")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert isinstance(container, dict)
    return container


def test_the_deployment_settings_are_ones_the_server_accepts() -> None:
    entries = server_container()["env"]
    assert all(e["name"].startswith("FRAUD_") for e in entries)
    env = {e["name"]: e["value"] for e in entries if "value" in e}
    # Values from secrets: the state URL, a Redis URL when the secret exists.
    secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in entries if "valueFrom" in e}
    assert secret == {"FRAUD_STATE_URL": {"name": "fraud-state", "key": "url", "optional": True}}
    settings = Settings.from_env(env | {"FRAUD_STATE_URL": "redis://redis:6379/0"})
    cpus = float(server_container()["resources"]["limits"]["cpu"])
    assert settings.intra_op_threads == cpus  # one onnxruntime thread per CPU of the limit


def test_shutdown_timings_fit_inside_the_grace_period() -> None:
    deployment = load(DEPLOY / "k8s" / "deployment.yaml")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    settings = Settings.from_env(
        {e["name"]: e["value"] for e in server_container()["env"] if "value" in e}
    )
    readiness = server_container()["readinessProbe"]
    # Load balancers notice the 503 within a probe period times its threshold: drain longer.
    noticed = readiness["periodSeconds"] * readiness["failureThreshold"]
    pause = server_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    # The grace period starts before preStop; SIGTERM, and the server's watchdog, after it.
    assert noticed <= settings.shutdown_drain_s < settings.shutdown_timeout_s
    assert pause + settings.shutdown_timeout_s < grace
    dockerfile = (ROOT / "Dockerfile").read_text()
    uvicorn_grace = re.search(r'"--timeout-graceful-shutdown", "(\d+)"', dockerfile)
    assert uvicorn_grace is not None
    assert settings.shutdown_drain_s + int(uvicorn_grace[1]) <= settings.shutdown_timeout_s


def test_probes_and_port_match_the_image() -> None:
    container = server_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'"--port", "8000"', dockerfile) and "EXPOSE 8000 8001" in dockerfile
    assert container["ports"][0]["containerPort"] == 8000
    # gRPC on the image's default port, probed by Kubernetes' own gRPC probe.
    assert "FRAUD_GRPC_HOST=0.0.0.0" in dockerfile
    grpc_port = Settings.from_env({}).grpc_port
    assert container["ports"][1] == {"name": "grpc", "containerPort": grpc_port}
    assert container["startupProbe"]["grpc"]["port"] == grpc_port
    service = load(DEPLOY / "k8s" / "service.yaml")["spec"]["ports"]
    assert {"name": "grpc", "targetPort": "grpc"}.items() <= service[1].items()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    uid = re.search(r"^USER (\d+)$", dockerfile, re.M)
    pod_security = load(DEPLOY / "k8s" / "deployment.yaml")["spec"]["template"]["spec"][
        "securityContext"
    ]
    assert uid is not None and int(uid[1]) == pod_security["runAsUser"] != 0


def test_the_serving_stage_copies_no_training_code() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    serve = dockerfile.split("AS serve", 1)[1].split("\nFROM ", 1)[0]
    copied = re.findall(r"^COPY (?:--from=\S+ )?(\S+)", serve, re.M)
    # features/ is the event feature definitions, free of TensorFlow (tests/test_isolation.py).
    assert copied == ["/opt/venv", "server/", "features/", "models/"]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    healthcheck = re.search(r"^HEALTHCHECK .*\n.*$", serve, re.M)
    assert healthcheck is not None and "urllib" in healthcheck[0] and "curl" not in healthcheck[0]


def test_the_build_context_admits_everything_the_dockerfile_copies() -> None:
    """.dockerignore excludes everything but what it names: a COPY of anything else fails
    only when the image is built."""
    admitted = {
        line[1:].strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    sources = {
        source.rstrip("/")
        for match in re.finditer(r"^COPY (?!--from=)(.+?) \S+$", dockerfile, re.M)
        for source in match[1].split()
    }
    assert sources and sources <= admitted, sources - admitted
