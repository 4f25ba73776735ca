"""The policy file (server/policy.py) and the comparison's figures (server/comparison.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from server.comparison import (
    Comparison,
    Latencies,
    Window,
    decisions,
    guard_finding,
    psi,
    score_bins,
)
from server.policy import (
    Guard,
    Policy,
    PolicyConflict,
    PolicyError,
    bucket,
    parse,
    parse_bytes,
    read,
    write,
)
from server.traffic import TrafficManager


def test_a_full_policy_round_trips_through_its_file(tmp_path: Path) -> None:
    given = {
        "champion": "4",
        "shadow": "5",
        "canary": "5",
        "share": 0.1,
        "guard": {"window": 500, "min_compared": 50, "min_agreement": 0.9},
        "previous": "3",
    }
    policy = parse(given)
    assert policy.guard == Guard(window=500, min_compared=50, min_agreement=0.9)
    signature = write(tmp_path, policy)
    again, seen = read(tmp_path)
    assert again == policy and seen == signature
    assert json.loads((tmp_path / "policy.json").read_text())["share"] == 0.1
    assert write(tmp_path, None) is None and read(tmp_path) == (None, None)


def test_only_the_champion_is_needed() -> None:
    policy = parse({"champion": "7"})
    assert (policy.shadow, policy.canary, policy.share, policy.previous) == (None, None, 0.0, None)
    assert policy.to_dict() == {"champion": "7", "guard": Guard().__dict__}
    assert parse({"champion": "7", "canary": "8", "share": 1}).share == 1.0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "a policy is a JSON object"),
        ({}, "a policy names its champion"),
        ({"champion": 4}, "champion must be a version"),
        ({"champion": "04"}, "champion must be a version"),
        ({"champion": "4", "canary": "5", "share": 1.5}, "share must be a number from 0 to 1"),
        ({"champion": "4", "canary": "5", "share": True}, "share must be a number"),
        ({"champion": "4", "share": 0.2}, "share needs a canary"),
        ({"champion": "4", "weights": {}}, "unknown policy field 'weights'"),
        ({"champion": "4", "guard": []}, "guard must be an object"),
        ({"champion": "4", "guard": {"window": 5}}, "guard.window"),
        ({"champion": "4", "guard": {"min_compared": 0}}, "min_compared"),
        ({"champion": "4", "guard": {"min_agreement": 2}}, "min_agreement"),
        ({"champion": "4", "guard": {"max_psi": -1}}, "guard.max_psi"),
        ({"champion": "4", "guard": {"p99": 2}}, "unknown guard field 'p99'"),
    ],
)
def test_a_bad_policy_says_what_is_wrong(payload: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as refused:
        parse(payload)
    assert refused.value.status_code == 400


@pytest.mark.parametrize("payload", [{"shadow": "4"}, {"canary": "4", "share": 0.1}])
def test_a_version_compared_with_itself_is_a_conflict(payload: dict[str, object]) -> None:
    with pytest.raises(PolicyConflict, match="other versions than the champion") as refused:
        parse({"champion": "4", **payload})
    assert refused.value.status_code == 409


def test_a_file_that_is_no_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text("{champion")
    with pytest.raises(PolicyError, match="not valid JSON"):
        read(tmp_path)
    with pytest.raises(PolicyError, match="at most"):
        parse_bytes(b" " * 70_000)


def test_promotion_and_the_canary_s_removal() -> None:
    policy = Policy("4", shadow="6", canary="5", share=0.5)
    assert policy.promoted() == Policy("5", previous="4")
    assert Policy("4", shadow="6").promoted() == Policy("6", previous="4")
    assert policy.without_canary() == Policy("4", shadow="6")
    with pytest.raises(PolicyConflict, match="nothing to promote"):
        Policy("4").promoted()


def test_a_policy_names_its_versions_and_the_one_a_rollback_returns_to(tmp_path: Path) -> None:
    manager = TrafficManager(tmp_path, "m", lambda snapshot: None)
    assert manager.named_versions() == frozenset()  # no policy: max_versions alone decides
    write(tmp_path, Policy("4", shadow="6", canary="5", share=0.1))
    manager.load_file()
    assert manager.named_versions() == {"4", "5", "6"}
    # After a promotion the old champion is what a rollback returns to: kept too.
    write(tmp_path, Policy("4", canary="5", share=0.1).promoted())
    manager.load_file()
    assert manager.named_versions() == {"5", "4"}


def test_the_share_is_sticky_and_holds() -> None:
    keys = [f"txn-{i}" for i in range(20_000)]
    places = [bucket(k) for k in keys]
    assert places == [bucket(k) for k in keys]  # the same every time
    assert all(0.0 <= p < 1.0 for p in places)
    for share in (0.1, 0.5):
        assert abs(sum(p < share for p in places) / len(places) - share) < 0.01
    assert bucket("\udcff") != bucket("")  # any string, lone surrogates too


def test_decisions_and_bins_of_many_rows_at_once() -> None:
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    assert decisions(p, 0.1, 0.9).tolist() == [0, 1, 1, 2, 2]
    assert score_bins(np.array([0.0, 5e-5, 1e-4, 0.5, 1.0])).tolist() == [0, 0, 1, 12, 12]


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    same = np.array([10, 20, 30])
    assert psi(same, same) == 0.0
    assert psi(same, np.array([30, 20, 10])) > psi(same, np.array([12, 20, 28])) > 0.0
    assert psi(np.zeros(3), same) is None


def test_a_comparison_counts_confusion_correlation_and_its_window() -> None:
    comparison = Comparison("canary", "4", "5", window=10)
    champion = np.array([0.01, 0.02, 0.5, 0.95])
    comparison.add(champion, champion, (0.1, 0.9), (0.1, 0.9))
    comparison.add(champion, 1.0 - champion, (0.1, 0.9), (0.1, 0.9))
    figures = comparison.figures()
    assert figures["compared"] == 8
    assert figures["decisions"]["champion APPROVE"] == {"APPROVE": 2, "REVIEW": 0, "DECLINE": 2}
    assert figures["decisions"]["champion REVIEW"]["REVIEW"] == 2
    assert figures["decisions"]["champion DECLINE"] == {"APPROVE": 1, "REVIEW": 0, "DECLINE": 1}
    assert figures["agreement"] == pytest.approx(5 / 8)
    x = np.concatenate([champion, champion])
    y = np.concatenate([champion, 1.0 - champion])
    assert figures["score_correlation"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert figures["window"]["compared"] == 8
    # Ten more that agree push the disagreements out of the window.
    agreeing = np.full(10, 0.01)
    comparison.add(agreeing, agreeing, (0.1, 0.9), (0.1, 0.9))
    assert comparison.figures()["window"] == {"compared": 10, "agreement": 1.0, "psi": 0.0}
    assert comparison.figures()["agreement"] == pytest.approx(15 / 18)


def test_a_window_keeps_the_newest_of_a_batch_larger_than_itself() -> None:
    window = Window(4)
    window.add(np.array([False] * 3 + [True] * 4), np.zeros(7, int), np.zeros(7, int))
    assert window.figures()["agreement"] == 1.0 and window.filled == 4


def test_the_guard_finds_errors_disagreement_a_shift_and_a_slow_canary() -> None:
    guard = Guard(window=100, min_compared=20, min_agreement=0.9, max_psi=0.25, max_p99_ratio=3.0)
    policy = Policy("4", canary="5", share=0.1, guard=guard)
    thresholds = (0.1, 0.9)
    rng = np.random.default_rng(7)
    scores = rng.uniform(0.0, 0.05, 200)

    def compared(challenger: np.ndarray) -> Comparison:
        comparison = Comparison("canary", "4", "5", window=guard.window)
        comparison.add(scores[: len(challenger)], challenger, thresholds, thresholds)
        return comparison

    same, latencies = compared(scores), Latencies()
    assert guard_finding(policy, same, latencies) is None
    assert guard_finding(Policy("4", guard=guard), same, latencies) is None  # no canary
    same.errors = 2
    assert guard_finding(policy, same, latencies) == "2 model errors"
    # Judged only once min_compared are in: 19 that all disagree are not enough.
    assert guard_finding(policy, compared(np.full(19, 0.5)), latencies) is None
    found = guard_finding(policy, compared(np.full(20, 0.5)), latencies)
    assert found == "decision agreement 0.0000 < 0.9 over the last 20 requests"
    # Same decisions, scores shifted within APPROVE: the PSI catches it.
    shifted = guard_finding(policy, compared(scores * 1e-3), latencies)
    assert shifted is not None and shifted.startswith("PSI ") and "> 0.25" in shifted
    # Three times the champion's p99, over enough requests of each.
    for _ in range(20):
        latencies.ring("4").append(0.001)
        latencies.ring("5").append(0.0029)
    assert guard_finding(policy, compared(scores), latencies) is None
    latencies.ring("5").append(0.01)
    slow = guard_finding(policy, compared(scores), latencies)
    assert slow is not None and slow.startswith("p99 ") and "> 3.0 x the champion's" in slow
