#!/usr/bin/env bash
# Build the serving image, run it, and check it from outside: healthy, scores a
# transaction and a history of raw events, has no TensorFlow, and adds at most
# IMAGE_BUDGET_MB to its base.
#
# Uses docker where a docker engine answers, on python:3.11-slim; otherwise podman
# (installed with apt when missing, run as root with runc and host networking). When the
# base cannot be pulled, it is built locally from Debian bookworm with debootstrap (its
# python3 is 3.11) and kept between runs.
set -euo pipefail

IMAGE=${IMAGE:-localhost/fraud-scoring:test}
LOCAL_BASE=localhost/python-base:3.11
PORT=${PORT:-18080}
IMAGE_BUDGET_MB=${IMAGE_BUDGET_MB:-200}
KEY=image-test-key-$RANDOM$RANDOM
NAME=fraud-image-test-$$
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)

cleanup() {
    if [ -n "${STARTED:-}" ] && [ -z "${PASSED:-}" ]; then
        echo "--- container log ---"
        engine logs "$NAME" 2>&1 | tail -40 || true
    fi
    engine rm -f "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

engine_args=()
if timeout 10 docker info >/dev/null 2>&1; then
    ENGINE=docker
    BASE=${BASE_IMAGE:-python:3.11-slim}
else
    ENGINE=podman
    BASE=${BASE_IMAGE:-$LOCAL_BASE}
    if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
        apt_install podman runc
    fi
    # No ulimits to copy from this sandboxed host, runc rather than crun, host networking.
    printf '[containers]\ndefault_ulimits = []\n' >"$WORK/containers.conf"
    export CONTAINERS_CONF=$WORK/containers.conf
    engine_args=(--runtime runc)
fi
engine() { "$ENGINE" "${engine_args[@]}" "$@"; }

mb() { echo $(( $1 / 1000000 )); }
size_of() { engine image inspect --format '{{.Size}}' "$1"; }

has_image() { engine image inspect "$1" >/dev/null 2>&1; }
if ! has_image "$BASE" && [ "$BASE" != "$LOCAL_BASE" ]; then
    # A registry may answer (docker hosts usually have one); if not, build the base here.
    timeout 300 engine pull "$BASE" >/dev/null 2>&1 || BASE=$LOCAL_BASE
fi
if ! has_image "$BASE"; then
    echo "building $BASE with debootstrap (once; kept for later runs)"
    command -v debootstrap >/dev/null || apt_install debootstrap
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    rm -rf "$WORK/rootfs/var/cache/apt/archives"/*.deb "$WORK/rootfs/var/lib/apt/lists"/*
    tar -C "$WORK/rootfs" -c . | engine import - "$BASE" >/dev/null
fi

build_args=(--build-arg "PYTHON_IMAGE=$BASE" --target serve -t "$IMAGE")
if [ "$ENGINE" = podman ]; then
    build_args+=(--format docker --network host)  # docker format: keeps the HEALTHCHECK
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        # pip inside the build trusts what this host trusts (a proxy's authority, say).
        build_args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    fi
fi
echo "building $IMAGE with $ENGINE"
engine build "${build_args[@]}" "$HERE" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }

run_args=(-d --name "$NAME" -e "FRAUD_API_KEYS=$KEY")
if [ "$ENGINE" = podman ]; then
    # Host networking: the container listens on the host's port 8000 directly, which must
    # be free (a `make serve` there would answer in its place).
    python3 -c 'import socket; socket.create_server(("127.0.0.1", 8000)).close()' \
        || { echo "port 8000 is in use: stop what listens there"; exit 1; }
    run_args+=(--network host)
    URL=http://127.0.0.1:8000
else
    run_args+=(-p "127.0.0.1:$PORT:8000")
    URL=http://127.0.0.1:$PORT
fi
# Podman without systemd complains it cannot schedule the HEALTHCHECK: it is run by hand below.
engine run "${run_args[@]}" "$IMAGE" >/dev/null 2>"$WORK/run.log" || { cat "$WORK/run.log"; exit 1; }
STARTED=1

python3 - "$URL" "$KEY" "$HERE/examples/transaction.json" "$HERE/examples/mobile-money-history.json" <<'PY'
import json, sys, time, urllib.request
url, key, example, history = sys.argv[1:5]
deadline = time.monotonic() + 60
while True:
    try:
        if urllib.request.urlopen(url + "/v1/health/ready", timeout=2).status == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("the container did not become ready in 60 s")
    time.sleep(0.5)
body = json.load(open(example, encoding="utf-8"))
request = urllib.request.Request(
    url + "/v1/score", json.dumps(body).encode(),
    {"Content-Type": "application/json", "X-API-Key": key},
)
answer = json.load(urllib.request.urlopen(request, timeout=5))
print("scored:", answer)
assert answer["decision"] in ("APPROVE", "REVIEW", "DECLINE"), answer
assert 0.0 <= answer["fraud_probability"] <= 1.0, answer
# Raw events: the account state and the shared feature definitions are in the image too.
request = urllib.request.Request(
    url + "/v1/models/mobile-money/events/score/batch",
    open(history, "rb").read(),
    {"Content-Type": "application/json", "X-API-Key": key},
)
results = json.load(urllib.request.urlopen(request, timeout=5))["results"]
print("events:", [r["decision"] for r in results])
assert [r["decision"] for r in results] == ["APPROVE"] * 6 + ["DECLINE"], results
PY

if [ "$ENGINE" = docker ]; then
    health_deadline=$((SECONDS + 60))
    until [ "$(engine inspect --format '{{.State.Health.Status}}' "$NAME")" = healthy ]; do
        [ $SECONDS -lt $health_deadline ] || { echo "HEALTHCHECK never passed"; exit 1; }
        sleep 1
    done
else
    engine healthcheck run "$NAME" >/dev/null || { echo "HEALTHCHECK failed"; exit 1; }
fi
echo "healthcheck: healthy"
[ "$(engine inspect --format '{{.State.Running}}' "$NAME")" = true ] \
    || { echo "the container is not running"; exit 1; }

engine exec "$NAME" python3 -c '
import importlib.util, sys
found = [m for m in ("tensorflow", "keras", "tf2onnx", "onnx", "pytest") if importlib.util.find_spec(m)]
sys.exit(f"found in the image: {found}" if found else 0)'
echo "no tensorflow, keras, tf2onnx, onnx or pytest in the image"
# gRPC from inside the container (its port is not published): the health service and one
# ModelInfer of the example transaction, on the image's own settings.
engine exec -e "KEY=$KEY" "$NAME" python3 -c '
import json, os, sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server.grpcapi.messages import SERVICE, ModelInferRequest, ModelInferResponse
channel = grpc.insecure_channel("127.0.0.1:8001")
health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
assert health.status == health_pb2.HealthCheckResponse.SERVING, health
infer = channel.unary_unary(f"/{SERVICE}/ModelInfer", ModelInferRequest.SerializeToString,
                            ModelInferResponse.FromString)
request = ModelInferRequest(model_name="creditcard")
request.inputs.add(name="features", datatype="FP32", shape=[1, 29]).contents.fp32_contents.extend([0.0] * 29)
answer = infer(request, metadata=(("x-api-key", os.environ["KEY"]),), timeout=5)
probability = answer.outputs[0].contents.fp32_contents[0]
assert 0.0 <= probability <= 1.0, answer
print("gRPC: SERVING; ModelInfer", round(probability, 6))'

[ "$(engine exec "$NAME" id -u)" != 0 ] || { echo "the container runs as root"; exit 1; }
echo "runs as uid $(engine exec "$NAME" id -u)"

image=$(size_of "$IMAGE")
base=$(size_of "$BASE")
added=$((image - base))
echo "image $(mb "$image") MB; base $(mb "$base") MB; added by the project $(mb "$added") MB (budget ${IMAGE_BUDGET_MB} MB)"
[ "$(mb "$added")" -le "$IMAGE_BUDGET_MB" ] || { echo "over budget"; exit 1; }
PASSED=1
echo "image-test: PASS"
