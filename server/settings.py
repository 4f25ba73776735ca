"""Settings, read once from FRAUD_* environment variables and passed down."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from server.alerts import AlertConfig
from server.allowlist import parse_networks
from server.errors import SettingsError
from server.keys import KeyTable, parse_entries, read_key_file

PREFIX = "FRAUD_"
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}
INFERENCE_MODES = ("loop", "thread", "inline")
LOG_FORMATS = ("json", "text")
BOOLEANS = (
    "INSECURE_DISABLE_AUTH",
    "METRICS",
    "ACCESS_LOG",
    "ALERT_ON_REVIEW",
    "ALERT_SLACK",
    "GRPC_REUSE_PORT",
)
GRPC_PORT = 8001  # FRAUD_GRPC_PORT when unset


@dataclass(frozen=True)
class Settings:
    # The model repository: <model_repository>/<model>/<version>/ holds model.onnx and
    # manifest.json. Every model folder is served unless FRAUD_MODELS lists some
    # (comma-separated); FRAUD_MODEL_NAME, the older setting, serves that one alone.
    model_repository: Path = Path("models")
    model_name: str | None = None
    models: tuple[str, ...] = ()
    # The model that answers the routes naming none (/v1/score, /v1/model ...): the only
    # one served, else it must be set.
    default_model: str | None = None
    # Serve at most this many of the newest versions (0: every version on disk), and the
    # versions the model's policy names.
    max_versions: int = 0
    # Seconds between looks at the repository for new, changed or removed versions
    # (0: only at start-up and on POST /v2/repository/models/{name}/load).
    poll_interval_s: float = 10.0
    # Accepted X-API-Key values: FRAUD_API_KEYS (comma-separated) plus, if set,
    # FRAUD_API_KEY_FILE (one key per line, '#' starts a comment). Each entry is a plain key,
    # sha256:<hex digest> or name:sha256:<hex digest> (server/keys.py).
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: Path | None = None
    # Keys for the repository routes (/v2/repository/...), in the same forms; none: those
    # routes are off.
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_key_file: Path | None = None
    # Seconds between looks at the key files for added and removed keys (0: read once).
    key_poll_s: float = 5.0
    # Client addresses (CIDRs) allowed to connect; empty: every one. The client is the
    # connection's peer, or, when the peer is one of the trusted proxies, the right-most
    # X-Forwarded-For address that is not itself a trusted proxy.
    allowed_clients: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    # Serve without any key. Off by default: without keys the server will not start.
    insecure_disable_auth: bool = False
    # Override the model's own thresholds (from its metadata). REVIEW <= DECLINE.
    review_threshold: float | None = None
    decline_threshold: float | None = None
    # Larger request bodies get 413 before they are parsed.
    max_body_bytes: int = 64 * 1024
    # onnxruntime threads per session; one suits a tiny model on a busy server.
    intra_op_threads: int = 1
    # Micro-batching: the inference thread takes up to this many waiting rows per
    # session.run (1 = one request per run).
    max_batch: int = 64
    # How long the inference thread may wait for more rows once one arrived, in
    # microseconds. 0: never make a request wait for company.
    max_queue_delay_us: int = 0
    # Requests waiting for the model beyond this many get 503 at once, before their body
    # is read.
    max_queue: int = 1024
    # A request that has waited this long since its head arrived, when it reaches the model
    # queue or when its batch is about to run, is answered 503 deadline_exceeded unscored.
    # A caller may ask for less with X-Request-Deadline-Ms. 0: no server deadline.
    request_deadline_ms: float = 100.0
    # Per worker, in the HTTP protocol class (server/protocol.py): a request that arrives
    # while this many are already in hand, or on a connection beyond the connection cap,
    # is answered 503 and its connection closed before the app sees it. 0: no cap. 256 in
    # hand is about what one worker answers within the default deadline.
    max_requests_in_hand: int = 256
    max_connections: int = 0
    # Per new connection, while fewer than half the requests-in-hand cap are in hand, accept
    # up to this many more that wait in the kernel's queue (server/accepting.py); 0: only
    # uvloop's one accept per turn of the loop.
    accept_batch: int = 16
    # The Open Inference Protocol over gRPC (server/grpcapi/), beside HTTP in each worker:
    # FRAUD_GRPC_PORT, 8001 by default (as Triton), 0 for none. A server composed in code
    # (create_app(Settings(...))) serves gRPC only when given a port. With several workers
    # set grpc_reuse_port: each binds the port and the kernel spreads connections over them.
    grpc_port: int = 0
    grpc_host: str = "127.0.0.1"
    grpc_reuse_port: bool = False
    # Where micro-batches run: "loop" (on the event loop, at its next turn),
    # "thread" (on a dedicated inference thread), or "inline" (each request alone,
    # at once, no queue: for comparison).
    inference_mode: str = "loop"
    # POST /v1/score/batch: most transactions, and largest body, per request.
    max_batch_items: int = 1000
    max_batch_body_bytes: int = 1024 * 1024
    # A feature further than this many training standard deviations from its training
    # mean flags the transaction out of distribution.
    ood_z: float = 6.0
    # Reason codes: at most this many features, those that raised the probability most, on
    # every answer but APPROVE (and APPROVE with "explain": true); 0: none (server/reasons.py).
    reasons: int = 3
    # GET /metrics; off saves the tallies' cost (a few percent of throughput).
    metrics: bool = True
    # With several uvicorn workers: a folder, emptied before start, where each worker
    # writes its tallies so that any worker's /metrics covers them all.
    metrics_dir: Path | None = None
    # Fraud probabilities in the score-drift window.
    drift_window: int = 10_000
    # Webhooks posted for each DECLINE (and REVIEW if alert_on_review), comma-separated;
    # as Slack-style {"text": ...} if alert_slack. A bounded queue per URL; retries with
    # backoff; alerts beyond the queue are dropped and counted, never waited for.
    alert_urls: tuple[str, ...] = field(default=(), repr=False)  # may carry tokens
    alert_on_review: bool = AlertConfig.on_review
    alert_slack: bool = AlertConfig.slack
    alert_queue: int = AlertConfig.queue_size
    alert_timeout_s: float = AlertConfig.timeout_s
    alert_retries: int = AlertConfig.retries
    # Per-API-key token bucket on the scoring routes: requests/s (0: no limit) and burst
    # (0: one second's worth). Per process.
    rate_limit_rps: float = 0.0
    rate_limit_burst: int = 0
    # Log lines as JSON objects ("json") or uvicorn's plain text ("text"); one line per
    # request when access_log is on.
    log_format: str = "json"
    access_log: bool = False
    # On SIGTERM: answer readiness with 503 and keep serving for drain_s (so load
    # balancers stop sending), then stop taking connections, finish what is in flight,
    # and exit; exit anyway once timeout_s has passed since the signal.
    shutdown_drain_s: float = 0.0
    shutdown_timeout_s: float = 30.0
    # Per-account state for the raw-event routes. Unset: in this worker's memory (one
    # worker only), snapshotted to state_snapshot (if set) every snapshot_interval_s and
    # at shutdown, and read back at start. redis://host:port/db: shared by every worker
    # and replica; an account idle for state_ttl_days is forgotten.
    state_url: str | None = field(default=None, repr=False)  # may carry a password
    state_snapshot: Path | None = None
    state_snapshot_interval_s: float = 60.0
    state_ttl_days: float = 90.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise SettingsError("FRAUD_MAX_BODY_BYTES must be positive")
        for name in (
            "intra_op_threads",
            "max_batch",
            "max_queue",
            "max_batch_items",
            "max_batch_body_bytes",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1")
        if self.inference_mode not in INFERENCE_MODES:
            raise SettingsError(
                f"{PREFIX}INFERENCE_MODE must be one of {', '.join(INFERENCE_MODES)}"
            )
        if not 0 <= self.max_queue_delay_us <= 1_000_000:
            raise SettingsError(f"{PREFIX}MAX_QUEUE_DELAY_US must be within [0, 1000000]")
        if not (math.isfinite(self.request_deadline_ms) and 0 <= self.request_deadline_ms <= 3.6e6):
            raise SettingsError(f"{PREFIX}REQUEST_DEADLINE_MS must be 0 (off) or up to 3600000")
        if 0 < self.request_deadline_ms <= self.max_queue_delay_us / 1000:
            # Every request that waited for company would expire waiting.
            raise SettingsError(
                f"{PREFIX}MAX_QUEUE_DELAY_US must be shorter than {PREFIX}REQUEST_DEADLINE_MS"
            )
        for name in ("max_requests_in_hand", "max_connections", "accept_batch", "reasons"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be 0 (no cap) or more")
        if not 0 <= self.grpc_port <= 65535:
            raise SettingsError(f"{PREFIX}GRPC_PORT must be a port number, or 0 for no gRPC")
        if self.max_versions < 0:
            raise SettingsError(f"{PREFIX}MAX_VERSIONS must be 0 (all) or more")
        if not (self.poll_interval_s == 0 or 0.1 <= self.poll_interval_s <= 86_400):
            raise SettingsError(f"{PREFIX}POLL_INTERVAL_S must be 0 (off) or within [0.1, 86400]")
        if not 0 < self.ood_z <= 1e6:
            raise SettingsError(f"{PREFIX}OOD_Z must be positive")
        if self.drift_window < 100:
            raise SettingsError(f"{PREFIX}DRIFT_WINDOW must be at least 100")
        if not (math.isfinite(self.rate_limit_rps) and self.rate_limit_rps >= 0):
            raise SettingsError(f"{PREFIX}RATE_LIMIT_RPS must be a finite number, 0 or more")
        if self.rate_limit_burst < 0:
            raise SettingsError(f"{PREFIX}RATE_LIMIT_BURST must not be negative")
        if self.alert_queue < 1:
            raise SettingsError(f"{PREFIX}ALERT_QUEUE must be at least 1")
        if not (math.isfinite(self.alert_timeout_s) and self.alert_timeout_s > 0):
            raise SettingsError(f"{PREFIX}ALERT_TIMEOUT_S must be a positive number")
        if self.alert_retries < 0:
            raise SettingsError(f"{PREFIX}ALERT_RETRIES must not be negative")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"{PREFIX}LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
        if not 0 <= self.shutdown_drain_s < self.shutdown_timeout_s <= 3600:
            raise SettingsError(
                f"{PREFIX}SHUTDOWN_DRAIN_S must be at least 0 and below"
                f" {PREFIX}SHUTDOWN_TIMEOUT_S, at most 3600"
            )
        if not (self.key_poll_s == 0 or 0.1 <= self.key_poll_s <= 86_400):
            raise SettingsError(f"{PREFIX}KEY_POLL_S must be 0 (off) or within [0.1, 86400]")
        parse_networks(self.allowed_clients, f"{PREFIX}ALLOWED_CLIENTS")
        parse_networks(self.trusted_proxies, f"{PREFIX}TRUSTED_PROXIES")
        if self.trusted_proxies and not self.allowed_clients:
            raise SettingsError(
                f"{PREFIX}TRUSTED_PROXIES only says whom to believe for {PREFIX}ALLOWED_CLIENTS:"
                " set that too, or unset it"
            )
        if self.model_name is not None and not is_folder_name(self.model_name):
            raise SettingsError(f"{PREFIX}MODEL_NAME must be a plain folder name")
        for name in self.models:
            if not is_folder_name(name):
                raise SettingsError(f"{PREFIX}MODELS must list plain folder names, not {name!r}")
        if self.default_model is not None and not is_folder_name(self.default_model):
            raise SettingsError(f"{PREFIX}DEFAULT_MODEL must be a plain folder name")
        if self.model_name is not None and self.models:
            raise SettingsError(f"set {PREFIX}MODELS or {PREFIX}MODEL_NAME, not both")
        if self.state_url is not None and not self.state_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise SettingsError(f"{PREFIX}STATE_URL must be a redis://, rediss:// or unix:// URL")
        if self.state_url is not None and self.state_snapshot is not None:
            raise SettingsError(
                f"{PREFIX}STATE_SNAPSHOT is for the in-process store; Redis keeps its own"
                f" (unset it, or unset {PREFIX}STATE_URL)"
            )
        if not (self.state_snapshot_interval_s == 0 or self.state_snapshot_interval_s >= 1):
            raise SettingsError(f"{PREFIX}STATE_SNAPSHOT_INTERVAL_S must be 0 (off) or 1 or more")
        if not (math.isfinite(self.state_ttl_days) and self.state_ttl_days >= 1):
            raise SettingsError(f"{PREFIX}STATE_TTL_DAYS must be at least 1")
        for name in ("review_threshold", "decline_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise SettingsError(f"FRAUD_{name.upper()} must be within [0, 1]")

    @property
    def listed_models(self) -> tuple[str, ...]:
        """The models asked for by name; empty: every model folder in the repository."""
        return (self.model_name,) if self.model_name is not None else self.models

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(PREFIX + name)
            return value.strip() if value is not None else None

        if get("MODEL_DIR") is not None:
            raise SettingsError(
                f"{PREFIX}MODEL_DIR is no longer read: set {PREFIX}MODEL_REPOSITORY to the folder"
                " holding <name>/<version>/ (and FRAUD_MODEL_NAME if it holds several models)"
            )
        values: dict[str, object] = {}
        if repository := get("MODEL_REPOSITORY"):
            values["model_repository"] = Path(repository)
        if model_name := get("MODEL_NAME"):
            values["model_name"] = model_name
        if models := get("MODELS"):
            values["models"] = tuple(m.strip() for m in models.split(",") if m.strip())
        if default_model := get("DEFAULT_MODEL"):
            values["default_model"] = default_model
        for name in ("API_KEYS", "ADMIN_KEYS"):
            if keys := get(name):
                values[name.lower()] = tuple(k.strip() for k in keys.split(",") if k.strip())
        for name in ("API_KEY_FILE", "ADMIN_KEY_FILE"):
            if key_file := get(name):
                values[name.lower()] = Path(key_file)
        for name in ("ALLOWED_CLIENTS", "TRUSTED_PROXIES"):
            if networks := get(name):
                values[name.lower()] = tuple(n.strip() for n in networks.split(",") if n.strip())
        if urls := get("ALERT_URLS"):
            values["alert_urls"] = tuple(u.strip() for u in urls.split(",") if u.strip())
        for name in BOOLEANS:
            if (raw := get(name)) is not None:
                values[name.lower()] = parse_bool(name, raw)
        if state_url := get("STATE_URL"):
            values["state_url"] = state_url
        if snapshot := get("STATE_SNAPSHOT"):
            values["state_snapshot"] = Path(snapshot)
        if metrics_dir := get("METRICS_DIR"):
            values["metrics_dir"] = Path(metrics_dir)
        if grpc_host := get("GRPC_HOST"):
            values["grpc_host"] = grpc_host
        raw_port = get("GRPC_PORT")
        values["grpc_port"] = parse_number("GRPC_PORT", raw_port, int) if raw_port else GRPC_PORT
        if log_format := get("LOG_FORMAT"):
            values["log_format"] = log_format.lower()
        if mode := get("INFERENCE_MODE"):
            values["inference_mode"] = mode.lower()
        for name in ("REVIEW_THRESHOLD", "DECLINE_THRESHOLD"):
            if raw := get(name):
                values[name.lower()] = parse_number(name, raw, float)
        for name in (
            "MAX_BODY_BYTES",
            "INTRA_OP_THREADS",
            "MAX_BATCH",
            "MAX_QUEUE_DELAY_US",
            "MAX_QUEUE",
            "MAX_BATCH_ITEMS",
            "MAX_BATCH_BODY_BYTES",
            "MAX_VERSIONS",
            "DRIFT_WINDOW",
            "RATE_LIMIT_BURST",
            "ALERT_QUEUE",
            "ALERT_RETRIES",
            "MAX_REQUESTS_IN_HAND",
            "MAX_CONNECTIONS",
            "ACCEPT_BATCH",
            "REASONS",
        ):
            if raw := get(name):
                values[name.lower()] = parse_number(name, raw, int)
        for name in (
            "POLL_INTERVAL_S",
            "OOD_Z",
            "RATE_LIMIT_RPS",
            "ALERT_TIMEOUT_S",
            "SHUTDOWN_DRAIN_S",
            "SHUTDOWN_TIMEOUT_S",
            "STATE_SNAPSHOT_INTERVAL_S",
            "STATE_TTL_DAYS",
            "REQUEST_DEADLINE_MS",
            "KEY_POLL_S",
        ):
            if raw := get(name):
                values[name.lower()] = parse_number(name, raw, float)
        return cls(**values)  # type: ignore[arg-type]

    def resolved_api_keys(self) -> KeyTable:
        """All accepted keys, read now (the file too); refuses to run open unless auth is
        explicitly disabled."""
        keys = parse_entries(self.api_keys, f"{PREFIX}API_KEYS")
        if self.api_key_file is not None:
            keys += read_key_file(self.api_key_file, f"{PREFIX}API_KEY_FILE")
        table = KeyTable.of(keys)
        if not table and not self.insecure_disable_auth:
            raise SettingsError(
                "no API key configured: set FRAUD_API_KEYS or FRAUD_API_KEY_FILE"
                " (or FRAUD_INSECURE_DISABLE_AUTH=true to serve without keys)"
            )
        return table

    @property
    def admin_routes_on(self) -> bool:
        return bool(self.admin_keys) or self.admin_key_file is not None

    def alert_config(self) -> AlertConfig | None:
        if not self.alert_urls:
            return None
        try:
            return AlertConfig(
                self.alert_urls,
                on_review=self.alert_on_review,
                slack=self.alert_slack,
                queue_size=self.alert_queue,
                timeout_s=self.alert_timeout_s,
                retries=self.alert_retries,
            )
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}ALERT_*: {exc}") from None

    def resolved_admin_keys(self, scoring: KeyTable | None = None) -> KeyTable:
        """Keys for the repository routes, read now; they must differ from every scoring
        key (`scoring`, else read again). An admin key file may hold none."""
        keys = parse_entries(self.admin_keys, f"{PREFIX}ADMIN_KEYS")
        if self.admin_key_file is not None:
            keys += read_key_file(self.admin_key_file, f"{PREFIX}ADMIN_KEY_FILE")
        table = KeyTable.of(keys)
        if table.shares_a_key_with(scoring if scoring is not None else self.resolved_api_keys()):
            raise SettingsError("an admin key must not also be a scoring key")
        return table


def is_folder_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def parse_bool(name: str, raw: str) -> bool:
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise SettingsError(f"{PREFIX}{name} must be true or false, got {raw!r}")


def parse_number(name: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(
            f"{PREFIX}{name} must be a{'n integer' if kind is int else ' number'}, got {raw!r}"
        ) from None
