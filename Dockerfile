# syntax=docker/dockerfile:1
# The serving image: onnxruntime, Starlette and uvicorn on the shipped model. No TensorFlow,
# no compilers, no test tools. `--target train` builds the training environment instead.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# pip trusts this bundle when a build mounts the host's authorities over it.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY requirements-serve.txt /tmp/
# pip and setuptools leave with the build: the server never installs anything.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile -r /tmp/requirements-serve.txt \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && find /opt/venv \( -name __pycache__ -o -name tests \) -prune -exec rm -rf {} + \
    && python3 -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE} AS serve
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FRAUD_MODEL_REPOSITORY=/app/models \
    FRAUD_DEFAULT_MODEL=creditcard \
    FRAUD_GRPC_HOST=0.0.0.0
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fraud
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY server/ server/
# The event feature definitions, shared with training (no TensorFlow in them).
COPY features/ features/
COPY models/ models/
# Bytecode now: the root filesystem is read-only at run time, and compiling numpy and
# onnxruntime at every start would slow it on one CPU.
RUN python3 -m compileall -q server features
USER 10001
# HTTP, and the Open Inference Protocol over gRPC (FRAUD_GRPC_PORT, 8001; 0 turns it off).
EXPOSE 8000 8001
# The standard library only: the image has no curl. Over HTTPS when UVICORN_SSL_CERTFILE
# switches TLS on (below), with no check of the certificate: it asks its own process on
# loopback, a name the certificate need not hold. (On Kubernetes the probes in deploy/ take
# over; a runtime on another port, as under KServe, ignores this.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os,ssl,sys,urllib.request as r; s='s' if os.environ.get('UVICORN_SSL_CERTFILE') else ''; c=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname=False; c.verify_mode=ssl.CERT_NONE; sys.exit(r.urlopen(f'http{s}://127.0.0.1:8000/v1/health/ready', timeout=2, context=c).status != 200)"]
# Plain HTTP unless TLS is switched on: mount the certificate and key at /etc/fraud/tls (as
# tls.crt and tls.key, the names a Kubernetes TLS Secret mounts) and set
# UVICORN_SSL_CERTFILE=/etc/fraud/tls/tls.crt and UVICORN_SSL_KEYFILE=/etc/fraud/tls/tls.key.
# uvicorn reads each of its flags from a UVICORN_ variable (docs/deploy.md#tls).
CMD ["uvicorn", "--factory", "server.app:create_app", "--host", "0.0.0.0", "--port", "8000", \
     "--no-access-log", "--loop", "uvloop", "--http", "server.protocol:DeadlineHttpToolsProtocol", \
     "--backlog", "32", "--no-proxy-headers", "--timeout-graceful-shutdown", "15"]

FROM ${PYTHON_IMAGE} AS train
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY requirements-serve.txt requirements-train.txt ./
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -r requirements-train.txt
COPY training/ training/
COPY features/ features/
COPY export/ export/
ENTRYPOINT ["python3", "-m", "training"]
