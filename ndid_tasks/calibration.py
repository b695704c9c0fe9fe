"""The decision model as data: two tiny logistic regressions, stored as versioned JSON.

Stage 1 sees cheap features (pHash distance, ResNet cosine). Pairs whose stage-1 probability lies
in the band -- from the lowest probability that is not confidently unrelated up to 1: stage 1
rejects alone but never accepts alone -- get geometric verification (log of 1 + distinct RANSAC
inliers) and, where it pays, CLIP similarity, and are decided by stage 2. Coefficients are kept in raw
feature units so that ``coefficient x value`` is each feature's contribution to the log-odds.
Nothing here is pickled: a calibration is a JSON document, validated on load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PermanentError
from .features import BASE_STAGE2, OPTIONAL, STAGE1, STAGE2
from .scoring import gated

SCHEMA = "ndid.calibration/1"
# the feature order of both stages and which stage-2 signals a calibration may drop: ndid_tasks.features
STAGE1_FEATURES, STAGE2_FEATURES, OPTIONAL_STAGE2 = STAGE1, STAGE2, OPTIONAL
SELECTION_TOLERANCE = 0.002  # held-out AP a signal must add to be worth computing
DEFAULT_BAND = (0.2, 0.8)


class CalibrationError(PermanentError, ValueError):
    """A calibration document is missing, malformed or does not fit this deployment."""


@dataclass
class Stage:
    features: list[str]
    coefficients: list[float]
    intercept: float

    def logit(self, values: dict[str, float]) -> float:
        return self.intercept + sum(c * values[f] for f, c in zip(self.features, self.coefficients, strict=True))

    def probability(self, values: dict[str, float]) -> float:
        z = self.logit(values)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def contributions(self, values: dict[str, float]) -> dict[str, float]:
        out = {f: c * values[f] for f, c in zip(self.features, self.coefficients, strict=True)}
        out["intercept"] = self.intercept
        return out


@dataclass
class Calibration:
    version: str
    weights_mode: str
    stage1: Stage
    stage2: Stage
    band: tuple[float, float]
    threshold: float
    whitening_version: str = ""  # the descriptor whitening its ResNet cosines were measured with
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    schema: str = SCHEMA

    @property
    def untrained(self) -> bool:
        return self.weights_mode == "random"

    def in_band(self, p: float) -> bool:
        return self.band[0] <= p <= self.band[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["band"] = list(self.band)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        try:
            if d.get("schema") != SCHEMA:
                raise CalibrationError(f"unknown calibration schema {d.get('schema')!r} (want {SCHEMA})")
            s1, s2 = Stage(**d["stage1"]), Stage(**d["stage2"])
            if tuple(s1.features) != STAGE1_FEATURES or not _valid_stage2(s2.features):
                raise CalibrationError(f"calibration features {s1.features}/{s2.features} do not match "
                                       f"this engine's {STAGE1_FEATURES}/{STAGE2_FEATURES}")
            for stage in (s1, s2):
                if len(stage.coefficients) != len(stage.features) or not all(
                        math.isfinite(float(c)) for c in [*stage.coefficients, stage.intercept]):
                    raise CalibrationError("coefficients must be finite, one per feature")
            band = (float(d["band"][0]), float(d["band"][1]))
            if not 0 <= band[0] <= band[1] <= 1:
                raise CalibrationError(f"band {band} is not within [0, 1]")
            return cls(version=str(d["version"]), weights_mode=str(d["weights_mode"]), stage1=s1, stage2=s2,
                       band=band, threshold=float(d["threshold"]),
                       whitening_version=str(d.get("whitening_version", "")), metrics=d.get("metrics", {}),
                       training=d.get("training", {}), created_at=d.get("created_at", ""), schema=SCHEMA)
        except (KeyError, TypeError, IndexError) as exc:
            raise CalibrationError(f"malformed calibration document: {exc!r}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Calibration:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"calibration is not JSON: {exc}") from exc




def _valid_stage2(names: Sequence[str]) -> bool:
    """The base stage-2 features plus any optional ones, in this engine's order."""
    return set(BASE_STAGE2) <= set(names) and list(names) == [f for f in STAGE2_FEATURES if f in names]


def default_calibration(weights_mode: str) -> Calibration:
    """The calibration shipped inside the package for this weights mode."""
    name = f"default_calibration_{weights_mode}.json"
    try:
        text = resources.files("ndid_tasks").joinpath("data", name).read_text()
    except FileNotFoundError as exc:
        raise CalibrationError(
            f"no shipped calibration for weights mode {weights_mode!r}; create one with "
            f"`ndid calibrate --bootstrap DIR` (it is stored and activated in S3 / --output)") from exc
    return Calibration.from_json(text)


def load_calibration_file(path: str | Path) -> Calibration:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration file {path}: {exc.strerror or exc}") from exc
    return Calibration.from_json(text)


# ---------------------------------------------------------------- fitting

def _fit_stage(x: np.ndarray, y: np.ndarray, features: Sequence[str]) -> Stage:
    """Standardise, fit, then fold the scaling back so coefficients are in raw units."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    model.fit((x - mean) / scale, y)
    coef = model.coef_[0] / scale
    intercept = float(model.intercept_[0] - np.sum(model.coef_[0] * mean / scale))
    return Stage(list(features), [float(c) for c in coef], intercept)


def _probabilities(stage: Stage, x: np.ndarray) -> np.ndarray:
    z = stage.intercept + x @ np.asarray(stage.coefficients)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))


def _binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    return {"average_precision": float(average_precision_score(y, p)) if 0 < y.sum() < len(y) else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / (tp + fn) if tp + fn else 1.0,
            "false_positives": fp, "n": len(y), "positives": int(y.sum())}


def choose_band(y: np.ndarray, p: np.ndarray, purity: float = 0.98, max_missed: float = 0.0) -> tuple[float, float]:
    """Smallest band outside which stage 1 is at least ``purity`` right on both sides; its lower
    edge is also kept low enough that at most ``max_missed`` of the held-out duplicates fall below
    it -- by default none: stage 1's rejection is final (measured: a 0.5 edge lost 9 % of the
    benchmark crops, whose attacks are harsher than the bootstrap's mix)."""
    order = np.sort(np.unique(p))

    def share(mask: np.ndarray, label: int) -> float:
        return float(np.mean(y[mask] == label)) if mask.any() else 0.0

    hi = next((float(t) for t in order if share(p >= t, 1) >= purity), 1.0)
    lo = next((float(t) for t in order[::-1] if share(p < t, 0) >= purity), 0.0)
    positives = np.sort(p[y == 1])
    if len(positives):
        lo = min(lo, float(positives[int(np.floor(max_missed * len(positives)))]))
    lo, hi = max(0.02, min(lo, 0.5)), min(0.98, max(hi, 0.5))
    return (lo, hi) if lo <= hi else DEFAULT_BAND


def choose_threshold(y: np.ndarray, p: np.ndarray, min_precision: float = 0.99) -> float:
    """Lowest probability threshold whose precision on held-out pairs is >= min_precision; 0.5
    if none reaches it. Strict on purpose: a decision takes the best of ~10-20 candidate pairs,
    so a pair-level false-positive rate is multiplied at the image level."""
    for t in np.sort(np.unique(p)):
        pred = p >= t
        if pred.any() and np.mean(y[pred] == 1) >= min_precision:
            return float(max(t, 0.05))
    return 0.5


def fit_calibration(features: dict[str, np.ndarray], labels: np.ndarray, weights_mode: str,
                    training: dict[str, Any], threshold: float | None = None, holdout: float = 0.3,
                    seed: int = 0, version: str | None = None, whitening_version: str = "",
                    stage2_features: Sequence[str] | None = None) -> Calibration:
    """Fit both stages on a random split, measure on the held-out part, then refit on all data.
    ``stage2_features`` skips the selection of optional signals and uses these."""
    y = np.asarray(labels, dtype=int)
    x1 = np.column_stack([features[f] for f in STAGE1_FEATURES]).astype(np.float64)
    if len(np.unique(y)) < 2:
        raise CalibrationError("need both duplicate and non-duplicate pairs to calibrate")
    rng = np.random.default_rng([seed, 0x5EED])  # own stream: independent of how pairs were drawn
    test = rng.random(len(y)) < holdout
    if len(np.unique(y[~test])) < 2 or len(np.unique(y[test])) < 2:
        test = np.zeros(len(y), dtype=bool)
    train = ~test
    eval_mask = test if test.any() else train
    if stage2_features is not None:
        if not _valid_stage2(stage2_features):
            raise CalibrationError(f"stage-2 features {list(stage2_features)} are not a choice of {STAGE2_FEATURES}")
        stage2_names, selection = tuple(stage2_features), {"features": list(stage2_features), "reason": "given"}
    else:
        stage2_names, selection = _select_stage2(features, y, train, eval_mask)
    x2 = np.column_stack([features[f] for f in stage2_names]).astype(np.float64)
    s1, s2 = _fit_stage(x1[train], y[train], STAGE1_FEATURES), _fit_stage(x2[train], y[train], stage2_names)
    metrics: dict[str, Any] = {"stage2_selection": selection}
    p1 = _probabilities(s1, x1[eval_mask])
    # stage 1 may reject on its own but never accept: every duplicate claim is verified, because
    # same-scene photos get stage-1 probabilities as high as true copies (measured: 0.9998)
    lo = choose_band(y[eval_mask], p1)[0]
    # and below every duplicate of the whole set (train + held out): a rejection is final
    lo = max(0.02, min(lo, float(_probabilities(s1, x1[y == 1]).min())))
    band = (lo, 1.0)
    p2 = _probabilities(s2, x2[eval_mask])
    in_band = (p1 >= band[0]) & (p1 <= band[1])
    combined = gated(p1, p2, band)
    if threshold is None:
        threshold = choose_threshold(y[eval_mask], combined)
    if test.any():
        metrics = {**metrics, "heldout_pairs": int(test.sum()), "stage1": _binary_metrics(y[test], p1, threshold),
                   "stage2": _binary_metrics(y[test], p2, threshold),
                   "gated": _binary_metrics(y[test], combined, threshold),
                   "stage2_share_of_pairs": float(in_band.mean())}
    # final model: all data
    s1, s2 = _fit_stage(x1, y, STAGE1_FEATURES), _fit_stage(x2, y, stage2_names)
    now = datetime.now(UTC)
    return Calibration(version=version or now.strftime("%Y%m%dT%H%M%SZ"), weights_mode=weights_mode,
                       stage1=s1, stage2=s2, band=band, threshold=threshold,
                       whitening_version=whitening_version, metrics=metrics,
                       training={**training, "pairs": len(y), "positives": int(y.sum())},
                       created_at=now.isoformat(timespec="seconds"))


def _select_stage2(features: dict[str, np.ndarray], y: np.ndarray, train: np.ndarray, held: np.ndarray
                   ) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Keep an optional stage-2 signal (CLIP, PDQ) only if adding it adds held-out average
    precision (forward selection, one signal at a time): with random weights CLIP does not, and
    leaving it out saves a second network pass per ambiguous image. Optional signals missing
    from ``features`` are not considered."""
    from sklearn.metrics import average_precision_score

    offered = [f for f in OPTIONAL_STAGE2 if f in features]
    if 0 in (y[held].sum(), (1 - y[held]).sum()):
        keep = tuple(f for f in STAGE2_FEATURES if f in BASE_STAGE2 or f in offered)
        return keep, {"features": list(keep), "reason": "held-out split lacks a class: kept all"}

    def heldout_ap(names: tuple[str, ...]) -> float:
        x = np.column_stack([features[f] for f in names]).astype(np.float64)
        return float(average_precision_score(y[held], _probabilities(_fit_stage(x[train], y[train], names), x[held])))

    keep = BASE_STAGE2
    base_ap = best_ap = heldout_ap(keep)
    adding = {}
    for signal in offered:
        names = tuple(f for f in STAGE2_FEATURES if f in keep or f == signal)
        adding[signal] = heldout_ap(names)
        if adding[signal] > best_ap + SELECTION_TOLERANCE:
            keep, best_ap = names, adding[signal]
    return keep, {"features": list(keep), "heldout_ap_base": round(base_ap, 4),
                  "heldout_ap_adding": {f: round(v, 4) for f, v in adding.items()},
                  "heldout_ap": round(best_ap, 4), "dropped": [f for f in offered if f not in keep]}


def evaluate(cal: Calibration, features: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """Gated (stage 1, then stage 2 inside the band) metrics of a calibration on labelled pairs."""
    y = np.asarray(labels, dtype=int)
    x1 = np.column_stack([features[f] for f in STAGE1_FEATURES]).astype(np.float64)
    x2 = np.column_stack([features[f] for f in cal.stage2.features]).astype(np.float64)
    p1, p2 = _probabilities(cal.stage1, x1), _probabilities(cal.stage2, x2)
    in_band = (p1 >= cal.band[0]) & (p1 <= cal.band[1])
    out = _binary_metrics(y, gated(p1, p2, cal.band), cal.threshold)
    out["stage2_share_of_pairs"] = float(in_band.mean()) if len(y) else 0.0
    return out
