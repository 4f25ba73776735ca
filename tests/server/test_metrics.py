"""/metrics with a fake scorer: what known traffic adds up to, bounded labels, OOD flags,
the switch, the multi-worker merge, and the shed and rate-limited counters."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.testclient import TestClient

from server.app import create_app
from server.batching import LoopBatcher
from server.comparison import Comparison
from server.errors import NotReady, Overloaded
from server.metrics import Metrics
from server.metrics_export import MetricsExporter, merge
from server.settings import Settings
from tests.server.fakes import FakeScorer

KEY = "metrics-test-key-0123"
HEADERS = {"X-API-Key": KEY}
V2_INFER = "/v2/models/fake/infer"


def make_client(**settings: Any) -> TestClient:
    app = create_app(Settings(api_keys=(KEY,), **settings), scorer=FakeScorer())
    return TestClient(app, raise_server_exceptions=False)


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def find(all_samples: list[Sample], name: str, /, **labels: str) -> list[Sample]:
    """Samples called `name` whose labels include `labels`."""
    return [
        s
        for s in all_samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(all_samples: list[Sample], name: str, /, **labels: str) -> float:
    """The one sample called `name` with these labels (its other labels may be anything)."""
    found = find(all_samples, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0].value


def scrape(client: TestClient) -> list[Sample]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def buckets(all_samples: list[Sample], name: str, /, **labels: str) -> list[tuple[float, float]]:
    """(le, cumulative count) in exposition order."""
    return [(float(s.labels["le"]), s.value) for s in find(all_samples, f"{name}_bucket", **labels)]


def infer_body(probabilities: list[float]) -> dict[str, Any]:
    data = [[p, 0.0, 0.0] for p in probabilities]
    tensor = {"name": "features", "datatype": "FP32", "shape": [len(data), 3], "data": data}
    return {"inputs": [tensor]}


def f32(values: list[float]) -> list[float]:
    """What the fake model returns: the value as float32, back as a Python float."""
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


SINGLE = [0.1, 0.3, 0.5, 0.7, 0.95]  # APPROVE, APPROVE, REVIEW, REVIEW, DECLINE
BATCH = [0.2, 0.92, 0.99, 0.4]  # APPROVE, DECLINE, DECLINE, APPROVE
V2_ROWS = [0.55, 0.65, 0.97]  # v2 answers probabilities only: no decisions


def send_known_traffic(client: TestClient) -> None:
    for p in SINGLE:
        answer = client.post("/v1/score", json={"features": [p, 0, 0]}, headers=HEADERS)
        assert answer.status_code == 200
    for invalid in ({"features": [1, 2]}, {"features": "x"}, {"features": [0.1, "a", 0]}):
        assert client.post("/v1/score", json=invalid, headers=HEADERS).status_code == 422
    assert client.post("/v1/score", json={"features": [0.1, 0, 0]}).status_code == 401
    batch = {"transactions": [{"features": [p, 0, 0]} for p in BATCH]}
    answer = client.post("/v1/score/batch", json=batch, headers=HEADERS)
    assert answer.status_code == 200 and len(answer.json()["results"]) == len(BATCH)
    answer = client.post(V2_INFER, json=infer_body(V2_ROWS), headers=HEADERS)
    assert answer.status_code == 200


def test_known_traffic_adds_up() -> None:
    # Reasons off: the model runs counted below are the scoring's alone.
    with make_client(reasons=0) as client:
        send_known_traffic(client)
        metrics = scrape(client)

    assert value(metrics, "fraud_requests_total", route="/v1/score", status="200") == 5
    assert value(metrics, "fraud_requests_total", route="/v1/score", status="422") == 3
    assert value(metrics, "fraud_requests_total", route="/v1/score", status="401") == 1
    assert value(metrics, "fraud_requests_total", route="/v1/score/batch", status="200") == 1
    assert value(metrics, "fraud_requests_total", route="/v2/models/{name}/infer") == 1
    assert find(metrics, "fraud_requests_total", route=V2_INFER) == []  # the template, not the path

    # Decisions: the five single transactions and the four in the batch; v2 has none.
    decisions = {s.labels["decision"]: s.value for s in find(metrics, "fraud_decisions_total")}
    assert decisions == {"APPROVE": 4, "REVIEW": 2, "DECLINE": 3}

    # Every probability returned, whatever the route, in the bucket `le` says.
    returned = f32(SINGLE + BATCH + V2_ROWS)
    assert value(metrics, "fraud_probability_count") == len(returned) == 12
    assert value(metrics, "fraud_probability_sum") == pytest.approx(sum(returned))
    probability_buckets = buckets(metrics, "fraud_probability")
    assert [le for le, _ in probability_buckets][-1] == math.inf
    assert probability_buckets == [
        (le, sum(1 for p in returned if p <= le)) for le, _ in probability_buckets
    ]

    # Seven requests reached the model: five single, one batch, one v2 infer.
    for stage in ("parse", "queue", "inference", "encode"):
        assert value(metrics, "fraud_stage_duration_seconds_count", stage=stage) > 0, stage
    assert value(metrics, "fraud_stage_duration_seconds_count", stage="queue") == 7
    runs = value(metrics, "fraud_batch_rows_count")
    assert runs == value(metrics, "fraud_stage_duration_seconds_count", stage="inference")
    assert value(metrics, "fraud_batch_rows_sum") == len(SINGLE) + len(BATCH) + len(V2_ROWS)

    duration = buckets(metrics, "fraud_request_duration_seconds", route="/v1/score")
    finite = [le for le, _ in duration if le != math.inf]
    assert finite[0] == 1e-5 and finite[-1] == 1.0 and duration[-1][0] == math.inf
    labels = {s.labels["le"] for s in find(metrics, "fraud_request_duration_seconds_bucket")}
    assert {"1e-05", "1.0", "+Inf"} <= labels
    assert duration[-1][1] == 9  # every /v1/score answer, 200 or not
    counts = [count for _, count in duration]
    assert counts == sorted(counts)

    assert value(metrics, "fraud_model_info", name="fake", version="7", default="true") == 1
    assert value(metrics, "fraud_queue_depth") == 0


def test_histogram_buckets_are_cumulative_and_end_at_the_count() -> None:
    with make_client() as client:
        send_known_traffic(client)
        metrics = scrape(client)
    for name, labels in (
        ("fraud_request_duration_seconds", {"route": "/v1/score"}),
        ("fraud_stage_duration_seconds", {"stage": "parse"}),
        ("fraud_batch_rows", {}),
        ("fraud_probability", {}),
    ):
        counts = [count for _, count in buckets(metrics, name, **labels)]
        assert counts == sorted(counts), name
        assert counts[-1] == value(metrics, f"{name}_count", **labels), name


def test_the_scrape_counts_itself_on_the_next_scrape() -> None:
    with make_client() as client:
        first = scrape(client)
        second = scrape(client)
    assert find(first, "fraud_requests_total", route="/metrics") == []
    assert value(second, "fraud_requests_total", route="/metrics", status="200") == 1


def unknown_paths(count: int) -> list[str]:
    rng = random.Random(20260101)
    shapes: list[Callable[[str], str]] = [
        lambda s: f"/{s}",
        lambda s: f"/v1/{s}",
        lambda s: f"/v1/score/{s}",
        lambda s: f"/v2/{s}/infer",
        lambda s: f"/v2/models/fake/{s}",
        lambda s: f"/v2/models/fake/versions/7/infer/{s}",
        lambda s: f"/v2/repository/models/{s}/load/now",
        lambda s: f"/metrics/{s}",
    ]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789-_"
    return [
        rng.choice(shapes)("".join(rng.choices(letters, k=rng.randint(1, 20))))
        for _ in range(count)
    ]


def test_unknown_paths_share_one_label() -> None:
    with make_client() as client:
        before = scrape(client)
        for path in unknown_paths(50):
            client.get(path, headers=HEADERS)
        after = scrape(client)

    def routes(metrics: list[Sample], name: str) -> set[str]:
        return {s.labels["route"] for s in find(metrics, name)}

    for name in ("fraud_requests_total", "fraud_request_duration_seconds_count"):
        assert routes(after, name) - routes(before, name) == {"other", "/metrics"}
    assert sum(s.value for s in find(after, "fraud_requests_total", route="other")) == 50


def score(client: TestClient, features: list[float]) -> dict[str, Any]:
    answer = client.post("/v1/score", json={"features": features}, headers=HEADERS)
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


def test_a_row_far_outside_training_is_flagged_and_counted() -> None:
    with make_client() as client:
        normal = score(client, [0.2, 1.0, -2.0])
        before = value(scrape(client), "fraud_out_of_distribution_total")
        # Mean 0, std 1 and the default z of 6: an hour of 10 is far out.
        far = score(client, [0.2, 10.0, 0.0])
        after = value(scrape(client), "fraud_out_of_distribution_total")
    assert (normal["out_of_distribution"], normal["unusual_features"]) == (False, [])
    assert (far["out_of_distribution"], far["unusual_features"]) == (True, ["hour"])
    assert far["decision"] == normal["decision"] == "APPROVE"  # a flag, not a decision
    assert (before, after) == (0, 1)


def test_every_feature_out_of_range_is_named_in_order() -> None:
    with make_client() as client:
        result = score(client, [-7.0, 0.0, 6.5])
    assert result["unusual_features"] == ["amount", "distance"]


def test_only_the_unusual_row_of_a_batch_is_flagged() -> None:
    rows = [[0.1, 0.0, 0.0], [0.3, 1.0, -1.0], [0.6, 0.0, -50.0], [0.2, 5.9, 5.9]]
    batch = {
        "transactions": [{"transaction_id": f"t{i}", "features": r} for i, r in enumerate(rows)]
    }
    with make_client() as client:
        answer = client.post("/v1/score/batch", json=batch, headers=HEADERS)
        flagged = value(scrape(client), "fraud_out_of_distribution_total")
    results = answer.json()["results"]
    assert [r["out_of_distribution"] for r in results] == [False, False, True, False]
    assert [r["unusual_features"] for r in results] == [[], [], ["distance"], []]
    assert flagged == 1


@pytest.mark.parametrize(
    ("ood_z", "hour", "flagged"),
    [(20.0, 10.0, False), (2.0, 3.0, True), (2.0, 2.0, False), (6.0, 6.0, False)],
)
def test_the_ood_z_setting_moves_the_bound(ood_z: float, hour: float, flagged: bool) -> None:
    with make_client(ood_z=ood_z) as client:
        result = score(client, [0.2, hour, 0.0])
        counted = value(scrape(client), "fraud_out_of_distribution_total")
    assert result["out_of_distribution"] is flagged
    assert result["unusual_features"] == (["hour"] if flagged else [])
    assert counted == int(flagged)


def test_metrics_off_answers_404_and_scoring_goes_on() -> None:
    with make_client(metrics=False) as client:
        scrape_answer = client.get("/metrics")
        scored = client.post("/v1/score", json={"features": [0.95, 0, 0]}, headers=HEADERS)
    assert scrape_answer.status_code == 404
    assert scrape_answer.headers["content-type"] == "application/json"
    assert scrape_answer.json()["error"]["code"] == "not_found"
    assert scored.status_code == 200 and scored.json()["decision"] == "DECLINE"


# The multi-worker merge, without workers: Metrics objects and files in a folder.


def worker_metrics(requests: int, probabilities: list[float], depth: float) -> Metrics:
    metrics = Metrics()
    for _ in range(requests):
        metrics.count_request("/v1/score", 200, 0.0003)
    metrics.count_request("/v1/score", 422, 0.00001)
    metrics.decisions[("fake", "DECLINE")] = requests
    metrics.score_log("fake", "7").append(np.asarray(probabilities))
    metrics.stages["queue"].observe(0.002)
    metrics.shed = requests
    metrics.gauge_sources.append(
        lambda: {"fraud_queue_depth": ("Requests waiting.", (), {(): depth})}
    )
    return metrics


def test_merge_sums_counters_and_histograms_and_live_gauges_only() -> None:
    first = worker_metrics(3, [0.1, 0.6], depth=2).state()
    second = worker_metrics(4, [0.6, 1.0, 1.0], depth=5).state()
    merged = merge([first, second], [True, True])
    requests = merged["counters"]["fraud_requests"]["values"]
    assert requests[("/v1/score", "", "200", "http")] == 7
    assert requests[("/v1/score", "", "422", "http")] == 2
    assert merged["counters"]["fraud_shed"]["values"][()] == 7
    bounds, counts, total = merged["histograms"]["fraud_probability"]["values"][("fake",)]
    assert sum(counts) == 5 and total == pytest.approx(3.3)
    assert counts[bounds.index(0.6)] == 2 and counts[-2] == 2  # le=1.0 holds both ones
    assert merged["gauges"]["fraud_queue_depth"]["values"][()] == 7
    without_dead = merge([first, second], [True, False])
    assert without_dead["gauges"]["fraud_queue_depth"]["values"][()] == 2
    assert (
        without_dead["counters"]["fraud_requests"]["values"][("/v1/score", "", "200", "http")] == 7
    )


def test_merging_leaves_the_live_tallies_alone() -> None:
    metrics = worker_metrics(3, [0.5], depth=0)
    state = metrics.state()
    merge([state, metrics.state()], [True, True])
    assert metrics.requests[("/v1/score", "", 200)] == 3
    assert sum(metrics.probability["fake"].counts) == 1


def exporters(tmp_path: Path) -> tuple[MetricsExporter, MetricsExporter]:
    here = MetricsExporter(worker_metrics(3, [0.1, 0.6], depth=2), tmp_path)
    other = MetricsExporter(worker_metrics(4, [0.6, 1.0, 1.0], depth=5), tmp_path)
    assert here.file != other.file
    other.dump()
    return here, other


def test_a_scrape_adds_up_every_worker_file(tmp_path: Path) -> None:
    here, other = exporters(tmp_path)
    here.dump()  # a scrape rewrites this worker's own file first, with its live tallies
    here.metrics.count_request("/v1/score", 200, 0.0003)
    metrics = samples(here.render().decode())
    assert value(metrics, "fraud_requests_total", route="/v1/score", status="200") == 3 + 1 + 4
    assert value(metrics, "fraud_decisions_total", decision="DECLINE") == 7
    assert value(metrics, "fraud_shed_total") == 7
    assert value(metrics, "fraud_probability_count") == 5
    assert buckets(metrics, "fraud_probability")[11] == (0.6, 3)  # 0.1, 0.6 and 0.6
    assert value(metrics, "fraud_stage_duration_seconds_count", stage="queue") == 2
    queue = dict(buckets(metrics, "fraud_stage_duration_seconds", stage="queue"))
    assert (queue[0.001], queue[0.002], queue[math.inf]) == (0, 2, 2)
    duration = dict(buckets(metrics, "fraud_request_duration_seconds", route="/v1/score"))
    assert (duration[1e-05], duration[0.0005], duration[math.inf]) == (2, 10, 10)
    assert value(metrics, "fraud_queue_depth") == 2 + 5
    assert here.file is not None and other.file is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([here.file.name, other.file.name])


def test_comparisons_add_up_across_workers_before_their_figures_are_taken(
    tmp_path: Path,
) -> None:
    """Two workers comparing the same canary on different requests: /metrics gives the
    figures of all their requests pooled, not the sum of two agreements or two PSIs; and a
    latency quantile is the slowest worker's."""
    rng = np.random.default_rng(3)
    champion = rng.uniform(0.0, 1.0, 300)
    challenger = np.clip(champion + rng.normal(0.0, 0.1, 300), 0.0, 1.0)
    thresholds = (0.3, 0.8)
    pooled = Comparison("canary", "4", "5", window=250)
    pooled.add(champion, challenger, thresholds, thresholds)
    workers = []
    for part, p99 in ((slice(0, 100), 0.001), (slice(100, 300), 0.003)):
        comparison = Comparison("canary", "4", "5", window=250)
        comparison.add(champion[part], challenger[part], thresholds, thresholds)
        metrics = Metrics()
        row = {"model": "m", "version": "5", "role": "canary", **comparison.tallies()}
        metrics.comparison_sources.append(lambda row=row: [row])
        latency = {("m", "5", "0.99"): p99}
        family = ("p99", ("model", "version", "quantile"), latency)
        metrics.gauge_sources.append(lambda f=family: {"fraud_version_latency_seconds": f})
        workers.append(MetricsExporter(metrics, tmp_path))
    workers[1].dump()
    found = samples(workers[0].render().decode())
    expected = pooled.figures()
    labels = {"model": "m", "version": "5", "role": "canary"}
    assert value(found, "fraud_comparison_compared", **labels) == 300
    for name, figure in (
        ("agreement", expected["agreement"]),
        ("score_correlation", expected["score_correlation"]),
        ("psi", expected["psi"]),
    ):
        assert value(found, f"fraud_comparison_{name}", **labels) == pytest.approx(figure)
    assert 0.5 < expected["agreement"] < 1.0 and expected["psi"] > 0.0
    # The window holds the newest 250 of each worker's, 100 + 200 here (the pooled one's
    # window would hold 250 of 300): its figures are from those 300.
    window = value(found, "fraud_comparison_window_agreement", **labels)
    assert window == pytest.approx(expected["agreement"])
    approve_review = value(
        found,
        "fraud_comparison_decisions",
        **labels,
        champion_decision="APPROVE",
        challenger_decision="REVIEW",
    )
    assert approve_review == expected["decisions"]["champion APPROVE"]["REVIEW"] > 0
    assert value(found, "fraud_version_latency_seconds", quantile="0.99") == 0.003
    # A live worker of an older version beside them: its comparison gauges are not a second
    # family of the same name, and a row of other bins does not cost the file its counters.
    few = Comparison("canary", "4", "5", window=250)
    few.add(champion[:7], challenger[:7], thresholds, thresholds)
    older = {"model": "m", "version": "5", "role": "canary", **few.tallies()}
    older["champion_bins"] = older["challenger_bins"] = [1, 2, 3]
    requests = {"help": "Requests answered.", "labels": ["route", "model", "status", "protocol"]}
    (tmp_path / "4242-1.json").write_text(
        json.dumps(
            {
                "counters": {
                    "fraud_requests": requests | {"values": [[["/x", "", "200", "http"], 5]]}
                },
                "gauges": {
                    "fraud_comparison_agreement": {
                        "help": "Share of compared requests with the same decision.",
                        "labels": ["model", "version", "role"],
                        "values": [[["m", "5", "canary"], 0.5]],
                    }
                },
                "histograms": {},
                "drift": [],
                "comparisons": [older],
            }
        )
    )
    text = workers[0].render().decode()
    assert text.count("# TYPE fraud_comparison_agreement gauge") == 1
    found = samples(text)
    assert value(found, "fraud_requests_total", route="/x") == 5
    assert value(found, "fraud_comparison_compared", **labels) == 300  # the older row left out
    assert value(found, "fraud_comparison_agreement", **labels) == pytest.approx(
        expected["agreement"]
    )


def test_a_stale_file_counts_for_counters_but_not_gauges(tmp_path: Path) -> None:
    here, other = exporters(tmp_path)
    assert other.file is not None
    minute_ago = time.time() - 60
    os.utime(other.file, (minute_ago, minute_ago))
    metrics = samples(here.render().decode())
    assert value(metrics, "fraud_requests_total", route="/v1/score", status="200") == 7
    assert value(metrics, "fraud_probability_count") == 5
    assert value(metrics, "fraud_queue_depth") == 2


# Files of the format before metrics carried the model: drift keyed by version alone, and
# requests labelled by route and status only. Added up, they would break or mislabel a scrape.
OLD_DRIFT = {"counts": [1, 1], "proportions": [0.5, 0.5], "min_count": 1}
OLD_FORMATS = [
    json.dumps({"counters": {}, "gauges": {}, "histograms": {}, "drift": {"2": OLD_DRIFT}}),
    json.dumps(
        {
            "counters": {
                "fraud_requests": {
                    "help": "Requests answered.",
                    "labels": ["route", "status"],
                    "values": [[["/v1/score", "200"], 5]],
                }
            },
            "gauges": {},
            "histograms": {},
            "drift": [],
        }
    ),
]


@pytest.mark.parametrize(
    "content",
    [b'{"counters": {"fraud_requests": {"he', b"", b"\xff\xfe", *map(str.encode, OLD_FORMATS)],
)
def test_a_corrupt_file_is_skipped(tmp_path: Path, content: bytes) -> None:
    here, _ = exporters(tmp_path)
    (tmp_path / "4242-1.json").write_bytes(content)
    metrics = samples(here.render().decode())
    assert value(metrics, "fraud_requests_total", route="/v1/score", status="200") == 7
    assert value(metrics, "fraud_queue_depth") == 7


def test_without_a_folder_nothing_is_written(tmp_path: Path) -> None:
    exporter = MetricsExporter(worker_metrics(1, [0.5], depth=0))
    exporter.dump()
    exporter.close()
    assert exporter.file is None
    assert value(samples(exporter.render().decode()), "fraud_shed_total") == 1


def test_the_app_writes_its_file_at_shutdown(tmp_path: Path) -> None:
    with make_client(metrics_dir=tmp_path) as client:
        client.post("/v1/score", json={"features": [0.95, 0, 0]}, headers=HEADERS)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    state = json.loads(files[0].read_bytes())
    decisions = state["counters"]["fraud_decisions"]["values"]
    assert decisions == [[["fake", "DECLINE"], 1]]


# Shed and rate-limited requests.


def test_a_full_queue_sheds_and_counts() -> None:
    metrics = Metrics()

    async def run() -> None:
        # A long delay keeps the first request waiting, so the queue of one stays full.
        batcher = LoopBatcher(
            lambda rows: rows[:, 0], max_batch=64, max_queue=1, max_delay_s=60, metrics=metrics
        )
        waiting = asyncio.ensure_future(batcher.predict(np.zeros((1, 3), np.float32)))
        await asyncio.sleep(0)
        assert batcher.queue_depth() == 1
        for _ in range(2):
            with pytest.raises(Overloaded) as shed:
                await batcher.predict(np.zeros((1, 3), np.float32))
            assert (shed.value.status_code, shed.value.headers) == (503, {"Retry-After": "1"})
        batcher.close()
        with pytest.raises(NotReady):
            await waiting

    asyncio.run(run())
    assert metrics.shed == 2
    assert value(samples(MetricsExporter(metrics).render().decode()), "fraud_shed_total") == 2


def test_rate_limited_requests_are_counted() -> None:
    with make_client(rate_limit_rps=0.001, rate_limit_burst=1) as client:
        assert value(scrape(client), "fraud_rate_limited_total") == 0
        body = {"features": [0.1, 0, 0]}
        statuses = [
            client.post("/v1/score", json=body, headers=HEADERS).status_code for _ in range(3)
        ]
        v2 = client.post(V2_INFER, json=infer_body([0.1]), headers=HEADERS)
        metrics = scrape(client)
    assert statuses == [200, 429, 429] and v2.status_code == 429
    assert value(metrics, "fraud_rate_limited_total") == 3
    assert value(metrics, "fraud_requests_total", route="/v1/score", status="429") == 2
    assert value(metrics, "fraud_requests_total", route="/v2/models/{name}/infer") == 1
    assert value(metrics, "fraud_shed_total") == 0


def test_totals_never_go_down_between_scrapes_of_different_workers(tmp_path: Path) -> None:
    here, other = exporters(tmp_path)
    here.dump()
    other.metrics.count_request("/v1/score", 200, 0.0003)  # not yet in its file
    totals = []
    for exporter in (other, here, other, here):  # scrapes answered by alternating workers
        text = exporter.render().decode()
        totals.append(value(samples(text), "fraud_requests_total", route="/v1/score", status="200"))
        exporter.metrics.count_request("/v1/score", 200, 0.0003)
    assert totals == sorted(totals) and totals[0] == 3 + 4 + 1


def test_a_failing_flush_does_not_stop_the_flushing(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import server.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "FLUSH_INTERVAL_S", 0.001)
    metrics = Metrics()
    calls: list[int] = []

    def flush() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    metrics.flush = flush  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(metrics.keep_flushing())
        while len(calls) < 3:
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert len(calls) >= 3


def test_stats_give_the_last_minutes_rate_and_latency() -> None:
    from starlette.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings
    from tests.server.fakes import FakeScorer

    key = {"X-API-Key": "stats-key-123456"}
    with TestClient(create_app(Settings(api_keys=(key["X-API-Key"],)), scorer=FakeScorer())) as c:
        for _ in range(20):
            assert c.post("/v1/score", json={"features": [0.2, 0, 0]}, headers=key).is_success
        assert c.get("/v1/stats").status_code == 401
        recent = c.get("/v1/stats", headers=key).json()["recent"]
    assert recent, "one point per flush, and reading flushes"
    last = recent[-1]
    assert last["rps"] > 0 and 0 < last["p50_ms"] <= last["p99_ms"]
    assert [p["time"] for p in recent] == sorted(p["time"] for p in recent)
