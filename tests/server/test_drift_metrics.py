"""fraud_score_psi on /metrics follows the served scores away from the reference and back."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.server.fakes import FakeScorer, fake_info

KEY = "drift-test-key-123456"
# The reference: half the scores below 0.1, a quarter in [0.1, 0.5), a quarter above.
REFERENCE = ((0.1, 0.5), (0.5, 0.25, 0.25))


def psi(client: TestClient) -> float | None:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {"model": "fake", "version": "7"}
            if sample.name == "fraud_score_psi" and sample.labels == labels:
                return sample.value
    return None


def send(client: TestClient, probabilities: list[float]) -> None:
    # FakeScorer answers the first feature as the probability: one batch of them.
    batch = {"transactions": [{"features": [p, 0, 0]} for p in probabilities]}
    answer = client.post("/v1/score/batch", json=batch, headers={"X-API-Key": KEY})
    assert answer.status_code == 200


def like_reference(n: int) -> list[float]:
    return [0.05] * (n // 2) + [0.3] * (n // 4) + [0.8] * (n // 4)


def test_psi_appears_with_enough_scores_and_moves_with_a_shift() -> None:
    scorer = FakeScorer()
    scorer.info = fake_info(score_reference=REFERENCE)
    settings = Settings(api_keys=(KEY,), drift_window=1000, max_batch_items=1000)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        send(client, like_reference(400))
        assert psi(client) is None  # fewer than 500 scores: no figure yet
        send(client, like_reference(600))
        steady = psi(client)
        assert steady is not None and steady < 0.01
        send(client, [0.95] * 600)  # a shift to high scores: 60 % of the window
        shifted = psi(client)
        assert shifted is not None and shifted > 0.2
        send(client, like_reference(1000))  # the window slides past the shift
        recovered = psi(client)
        assert recovered is not None and recovered < 0.01


def test_no_reference_no_psi() -> None:
    with TestClient(create_app(Settings(api_keys=(KEY,)), scorer=FakeScorer())) as client:
        send(client, like_reference(800))
        assert psi(client) is None
