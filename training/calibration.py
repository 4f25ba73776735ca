"""Calibration: turn the ensemble's score into a probability, fitted on the validation period.

Class weights make the network over-predict fraud in the middle of its range (it is trained as
if frauds were several times commoner than they are). A monotone map fitted on validation
rows undoes that without touching the order of the scores. Two are measured:

- Platt: q = sigmoid(a * logit(p) + b), two numbers; it keeps the ranking exactly.
- isotonic: the best non-decreasing step function, drawn as straight lines between its knots;
  it can fit any shape but flattens runs of scores into ties, which costs average precision
  when the validation period holds few frauds.

Each is scored by k-fold cross-validation inside the validation period (fitted on k-1 folds,
measured on the held-out one) and the better is refitted on the whole period. "Better" is the
lower held-out log loss among the methods whose held-out average precision stays within
RANKING_TOLERANCE of the uncalibrated scores': log loss rather than Brier score because it is
the proper score that punishes a probability of (nearly) 0 given to a fraud, which is how an
isotonic step fails on a period with few frauds, and Brier barely notices; the ranking guard
because a calibration must not cost the ranking the thresholds are cut from. The result
is a small JSON-able spec that export/ folds into the ONNX graph and `apply` reproduces.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from training.datasets import DataError

METHODS = ("platt", "isotonic")
# What a run may ask for (TrainConfig.calibration): the better of the two, one of them, or
# none (the network's own scores, as before calibration existed).
CHOICES = ("auto", *METHODS, "none")
FOLDS = 5
# How far a method's held-out average precision may fall below the uncalibrated scores' and
# the method still be chosen: about the spread between members trained from nearby seeds.
RANKING_TOLERANCE = 0.005
# Scores are clipped away from 0 and 1 before the logit: a float32 sigmoid can give exactly
# either, and the graph clips with the same bound (representable in float32).
EPSILON = 1e-7
# Equal-mass bins for the expected calibration error (as it is usually defined).
ECE_BINS = 10
# The reliability table and diagram bin by probability instead, on a log scale: with frauds
# this rare, equal-mass bins put nearly every row below 0.001 and the one bin above it holds
# the whole range where decisions are made. [0, 1e-4), then three bins per decade up to 1.
RELIABILITY_EDGES = (0.0, *np.logspace(-4, 0, 13).tolist())


def logit(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp of a negative number only: no overflow for large |z|.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Logistic regression of the label on logit(score), unpenalised, by Newton's method
    (two parameters: a handful of steps; sklearn's solvers regularise by default)."""
    z = logit(scores)
    y = np.asarray(labels, np.float64)
    a, b = 1.0, 0.0
    for _ in range(100):
        q = sigmoid(a * z + b)
        w = q * (1.0 - q) + 1e-12
        gradient = np.array([np.dot(q - y, z), np.sum(q - y)])
        hessian = np.array([[np.dot(w * z, z), np.dot(w, z)], [np.dot(w, z), np.sum(w)]])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    return {"method": "platt", "a": float(a), "b": float(b)}


def fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Knots (x, y) of the isotonic fit: y interpolated linearly between them, flat outside."""
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    fit.fit(np.asarray(scores, np.float64), np.asarray(labels, np.float64))
    x = np.asarray(fit.X_thresholds_, np.float64)
    y = np.asarray(fit.y_thresholds_, np.float64)
    return {"method": "isotonic", "x": x.tolist(), "y": y.tolist()}


FITS = {"platt": fit_platt, "isotonic": fit_isotonic}


def apply(spec: dict[str, object], scores: np.ndarray) -> np.ndarray:
    """The calibrated probabilities of raw scores, as the exported graph computes them."""
    method = spec["method"]
    if method == "platt":
        a, b = float(spec["a"]), float(spec["b"])  # type: ignore[arg-type]
        return sigmoid(a * logit(scores) + b)
    if method == "isotonic":
        x = np.asarray(spec["x"], np.float64)
        y = np.asarray(spec["y"], np.float64)
        return np.interp(np.asarray(scores, np.float64), x, y)
    raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")


def brier(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(np.mean((np.asarray(probabilities, np.float64) - labels) ** 2))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(np.asarray(probabilities, np.float64), EPSILON, 1.0 - EPSILON)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def equal_mass_bins(probabilities: np.ndarray, bins: int) -> list[np.ndarray]:
    """Row indices in `bins` groups of (nearly) equal size, by increasing probability."""
    order = np.argsort(np.asarray(probabilities), kind="stable")
    return [part for part in np.array_split(order, min(bins, len(order))) if len(part)]


def binned(
    labels: np.ndarray, probabilities: np.ndarray, parts: list[np.ndarray]
) -> list[dict[str, float]]:
    """Per group of rows: how many, mean predicted probability and observed fraud rate."""
    p = np.asarray(probabilities, np.float64)
    return [
        {
            "rows": len(part),
            "predicted": float(p[part].mean()),
            "observed": float(np.mean(labels[part])),
        }
        for part in parts
    ]


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> list[dict[str, float]]:
    """binned() over `bins` equal-mass bins."""
    return binned(labels, probabilities, equal_mass_bins(probabilities, bins))


def reliability_by_probability(
    labels: np.ndarray, probabilities: np.ndarray, edges: tuple[float, ...] = RELIABILITY_EDGES
) -> list[dict[str, float]]:
    """binned() over the probability ranges [edges[i], edges[i+1]) (the last one closed),
    empty ranges left out; each entry also names its range."""
    p = np.asarray(probabilities, np.float64)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    table = []
    for i in range(len(edges) - 1):
        rows = np.flatnonzero(index == i)
        if len(rows):
            (entry,) = binned(labels, p, [rows])
            table.append({"from": edges[i], "to": edges[i + 1], **entry})
    return table


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Sum over equal-mass bins of (bin share) x |mean predicted - observed rate|."""
    table = reliability(labels, probabilities, bins)
    total = sum(b["rows"] for b in table)
    return float(sum(b["rows"] / total * abs(b["predicted"] - b["observed"]) for b in table))


def calibration_figures(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, object]:
    """What metrics.json records of a period's probabilities."""
    labels = np.asarray(labels, np.float64)
    return {
        "brier": brier(labels, probabilities),
        "log_loss": log_loss(labels, probabilities),
        "ece": expected_calibration_error(labels, probabilities),
        "ece_bins": ECE_BINS,
        "predicted_frauds": float(np.sum(probabilities, dtype=np.float64)),
        "observed_frauds": int(labels.sum()),
        "reliability": reliability_by_probability(labels, probabilities),
    }


def cross_validated(
    method: str, scores: np.ndarray, labels: np.ndarray, folds: int, seed: int
) -> dict[str, float]:
    """Held-out Brier score, log loss and average precision of `method`, fitted fold by fold."""
    held_out = np.empty(len(scores), np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, test_rows in splitter.split(scores.reshape(-1, 1), labels):
        spec = FITS[method](scores[fit_rows], labels[fit_rows])
        held_out[test_rows] = apply(spec, scores[test_rows])
    return {
        "brier": brier(labels, held_out),
        "log_loss": log_loss(labels, held_out),
        "average_precision": float(average_precision_score(labels, held_out)),
    }


class CalibrationError(DataError):
    pass


def choose(
    scores: np.ndarray,
    labels: np.ndarray,
    method: str = "auto",
    folds: int = FOLDS,
    seed: int = 0,
) -> tuple[dict[str, object], dict[str, dict[str, float]]]:
    """The method asked for, or under "auto" the better (see the module's doc), refitted on
    every validation row; and each method's cross-validated figures."""
    if method not in CHOICES or method == "none":
        raise ValueError(f"calibration method {method!r}; choose from {', '.join(METHODS)}")
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    frauds = int(labels.sum())
    if frauds < folds or len(labels) - frauds < folds:
        raise CalibrationError(
            f"calibration needs at least {folds} frauds and {folds} legitimate rows in the "
            f"validation period; it has {frauds} and {len(labels) - frauds} "
            "(--calibration none keeps the network's own scores)"
        )
    measured = {m: cross_validated(m, scores, labels, folds, seed) for m in METHODS}
    floor = float(average_precision_score(labels, scores)) - RANKING_TOLERANCE
    eligible = [m for m in METHODS if measured[m]["average_precision"] >= floor]
    # Platt when none keeps the ranking (it does, up to its folds' differences) and on ties.
    best = (
        min(eligible or ["platt"], key=lambda m: (measured[m]["log_loss"], METHODS.index(m)))
        if method == "auto"
        else method
    )
    spec = FITS[best](scores, labels)
    values = [float(v) for value in params(spec).values() for v in np.ravel(value)]
    if not all(math.isfinite(v) for v in values):
        raise CalibrationError(f"the {best} calibration did not converge: {spec}")
    return spec, measured


def params(spec: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in spec.items() if k != "method"}


def describe(
    spec: dict[str, object],
    measured: dict[str, dict[str, float]],
    asked: str,
    periods: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, object]:
    """metrics.json's "calibration": the map, how it was chosen, every method's held-out
    figures, and each period's figures before calibration (`periods`: name -> (labels, raw
    scores)), so that the card shows what the map changed."""
    return {
        **spec,
        "fitted_on": "validation",
        "chosen_by": (
            f"{FOLDS}-fold cross-validated log loss on validation, among the methods whose "
            f"held-out average precision is within {RANKING_TOLERANCE} of the uncalibrated "
            "scores'"
            if asked == "auto"
            else "asked for"
        ),
        "cross_validated": measured,
        "uncalibrated": {
            name: {
                "roc_auc": float(roc_auc_score(labels, raw)),
                "average_precision": float(average_precision_score(labels, raw)),
                **calibration_figures(labels, raw),
            }
            for name, (labels, raw) in periods.items()
        },
    }
