"""The audit loop's engine: which decisions a person reviews, and what the audit says about live
precision and recall. Plain Python over S3 records and labels; the Airflow plugin only renders it.

Audit policy (README "Review and monitoring"):

* **Reviewable** decisions are those with a pair to look at: a duplicate (not an exact sha256
  copy, which is certain) or a unique whose best candidate had a probability above zero.
* **Most informative first**: by how close the probability is to the decision threshold (distance
  in log-odds); a stage-2 disagreement (geometric verification overturned what the stage-1
  descriptors said, across the threshold) counts as twice as close, since two of the model's own
  stages disagree about it.
* **An unbiased random sample**: a decision belongs to the audit sample when a hash of its id falls
  below ``rate`` -- decided by the id alone, never by its probability, so the sampled duplicates
  and uniques estimate live precision and recall without bias (:func:`audit_estimate`). Every
  ``sample_every``-th card of the queue comes from the sample.
* A pair anyone has labelled already is not shown again; Skip writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from .calibration import Calibration
from .config import Settings
from .labels import pair_id
from .storage import S3Store, parse_s3_uri

READERS = 8  # parallel GETs when reading records back
SAMPLE_SALT = "ndid-audit-sample"


# ---------------------------------------------------------------- reading decisions back

def record_keys(settings: Settings, days: int, now: datetime | None = None) -> list[str]:
    """Keys of the records of objects that appeared in the last ``days`` days, newest hour first
    (the partition layout is ingest_run's: its listing of a window is reused)."""
    from .ingest_run import recorded_keys

    now = now or datetime.now(UTC)
    return sorted(recorded_keys(settings, now - timedelta(days=days), now + timedelta(hours=1)), reverse=True)


def read_records(store: S3Store, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The records at ``keys`` (read in parallel), each with its own ``_key``."""
    def get(key: str) -> dict[str, Any] | None:
        try:
            return {**store.get_json(key), "_key": key}
        except Exception:  # noqa: BLE001 - a record deleted or rewritten meanwhile is left out
            return None

    with ThreadPoolExecutor(READERS) as pool:
        return [r for r in pool.map(get, keys) if r is not None]


def recent_records(settings: Settings, days: int = 7, limit: int = 2000, store: S3Store | None = None
                   ) -> list[dict[str, Any]]:
    """At most ``limit`` records of the last ``days`` days, newest first."""
    store = store or S3Store(settings)
    return read_records(store, record_keys(settings, days)[:limit])


# ---------------------------------------------------------------- the queue

def in_audit_sample(record_id: str, rate: float) -> bool:
    """Whether a decision is in the random audit sample: a function of its id alone."""
    digest = hashlib.sha256(f"{SAMPLE_SALT}\n{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def reviewable(record: dict[str, Any]) -> bool:
    return (record.get("decision") in ("duplicate", "unique") and bool(record.get("matched_id"))
            and record.get("stage") != "exact")


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@dataclass
class ReviewCard:
    """One pair for a reviewer, with everything the card shows."""

    record_key: str
    image_a: str  # the decided image
    image_b: str  # its best candidate (the one it was called a duplicate of, or nearly)
    decision: str
    probability: float
    stage: str
    threshold: float
    stage1_probability: float | None
    features: dict[str, float]
    contributions: dict[str, float]
    reason: str  # why it is in the queue, in words
    stream: str  # "informative" or "sample"
    calibration_version: str = ""
    untrained: bool = False
    original_id: str = ""
    orientation: str = ""  # the match needed the decided image turned this way
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pair(self) -> str:
        return pair_id(self.image_a, self.image_b)

    def to_dict(self) -> dict[str, Any]:
        from .signals import PHashSignal

        return {**asdict(self), "pair": self.pair, "how_matched": PHashSignal.how_matched(self.orientation)}

    def label_context(self) -> dict[str, Any]:
        """What a label row keeps of the decision it audits (extra columns, ignored by training)."""
        return {"record_key": self.record_key, "decision": self.decision, "probability": round(self.probability, 6),
                "stage": self.stage, "calibration_version": self.calibration_version, "stream": self.stream}


def card_from_record(record: dict[str, Any], cal: Calibration, stream: str, reason: str) -> ReviewCard:
    feats = {k: float(v) for k, v in (record.get("features") or {}).items()}
    p1 = cal.stage1.probability(feats) if all(f in feats for f in cal.stage1.features) else None
    return ReviewCard(record_key=record.get("_key", ""), image_a=record["id"], image_b=record["matched_id"],
                      decision=record["decision"], probability=float(record.get("probability", 0.0)),
                      stage=record.get("stage", ""), threshold=cal.threshold, stage1_probability=p1,
                      features=feats, contributions={k: float(v) for k, v in (record.get("contributions") or {}).items()},
                      reason=reason, stream=stream, calibration_version=record.get("calibration_version", ""),
                      untrained=bool(record.get("untrained")), original_id=record.get("original_id", ""),
                      orientation=record.get("orientation", ""))


def disagreement(card: ReviewCard) -> bool:
    """Stage 2 overturned stage 1: the descriptors alone were on the other side of the threshold."""
    return (card.stage == "stage2" and card.stage1_probability is not None
            and (card.stage1_probability >= card.threshold) != (card.probability >= card.threshold))


def review_queue(records: Iterable[dict[str, Any]], cal: Calibration, labelled_pairs: set[str], rate: float,
                 limit: int = 50, sample_every: int = 4) -> list[ReviewCard]:
    """Cards in the order a reviewer sees them (see the module doc for the policy)."""
    informative: list[ReviewCard] = []
    sample: list[ReviewCard] = []
    seen: set[str] = set()
    for r in records:
        if not reviewable(r) or pair_id(r["id"], r["matched_id"]) in labelled_pairs:
            continue
        if pair_id(r["id"], r["matched_id"]) in seen:
            continue
        seen.add(pair_id(r["id"], r["matched_id"]))
        if in_audit_sample(r["id"], rate):
            kind = "confident duplicate" if r["decision"] == "duplicate" else "confident unique"
            if abs(_logit(float(r.get("probability", 0))) - _logit(cal.threshold)) < 1.0:
                kind = "near the threshold"
            sample.append(card_from_record(r, cal, "sample", f"random audit sample ({kind})"))
            continue
        card = card_from_record(r, cal, "informative", "")
        margin = abs(_logit(card.probability) - _logit(cal.threshold))
        if disagreement(card):
            card.reason = (f"stage 2 overturned stage 1 (descriptors alone: p {card.stage1_probability:.2f}, "
                           f"after verification: p {card.probability:.2f})")
        else:
            card.reason = f"close to the threshold ({margin:.1f} log-odds from {cal.threshold:.2f})"
        card.extra["margin"] = margin
        informative.append(card)
    informative.sort(key=lambda c: (c.extra["margin"] / (2.0 if disagreement(c) else 1.0), c.image_a))
    sample.sort(key=lambda c: hashlib.sha256(c.image_a.encode()).hexdigest())  # a fixed, unbiased order
    out: list[ReviewCard] = []
    while len(out) < limit and (informative or sample):
        take_sample = sample and (not informative or (len(out) + 1) % sample_every == 0)
        out.append(sample.pop(0) if take_sample else informative.pop(0))
    return out


# ---------------------------------------------------------------- what the audit says

def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sensible at small n and at 0 or 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def latest_verdicts(labels: Iterable[Any]) -> dict[str, bool]:
    """pair id -> the latest true/false label of the pair (Label objects or label rows)."""
    out: dict[str, bool] = {}
    for lab in labels:
        a, b, dup = ((lab.image_a, lab.image_b, lab.is_duplicate) if hasattr(lab, "image_a")
                     else (lab["image_a"], lab["image_b"], lab["is_duplicate"]))
        if isinstance(dup, bool):
            out[pair_id(a, b)] = dup
    return out


def audit_estimate(records: Sequence[dict[str, Any]], verdicts: dict[str, bool], rate: float,
                   bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Live precision and recall estimated from the labelled decisions of the random audit sample.

    Stratified by decision: p_D = share of sampled duplicates labelled duplicate, q_U = share of
    sampled uniques labelled duplicate (a miss). With N_exact exact copies (certain), N_D other
    duplicates and N_U reviewable uniques: TP = N_exact + N_D p_D, FN = N_U q_U, precision =
    TP / (N_exact + N_D), recall = TP / (TP + FN). Intervals: Wilson for p_D (precision), a seeded
    bootstrap over the labelled sample for recall. Uniques with no candidate at all cannot be
    audited as a pair and are counted apart (``unauditable_uniques``): recall is over decisions
    that had a candidate."""
    n_exact = sum(1 for r in records if r.get("decision") == "duplicate" and r.get("stage") == "exact")
    dup = [r for r in records if reviewable(r) and r["decision"] == "duplicate"]
    uniq = [r for r in records if reviewable(r) and r["decision"] == "unique"]

    def labelled(rows: list[dict[str, Any]]) -> list[bool]:
        return [verdicts[pid] for r in rows if in_audit_sample(r["id"], rate)
                and (pid := pair_id(r["id"], r["matched_id"])) in verdicts]

    ld, lu = labelled(dup), labelled(uniq)
    out: dict[str, Any] = {"sample_rate": rate, "exact_duplicates": n_exact, "duplicates": len(dup),
                           "reviewable_uniques": len(uniq), "labelled_duplicates": len(ld),
                           "labelled_uniques": len(lu),
                           "unauditable_uniques": sum(1 for r in records if r.get("decision") == "unique"
                                                      and not reviewable(r)),
                           "precision": None, "precision_ci": None, "recall": None, "recall_ci": None}
    if ld or (n_exact and not dup):
        p_d = sum(ld) / len(ld) if ld else 1.0
        lo, hi = wilson(sum(ld), len(ld)) if ld else (1.0, 1.0)
        total = n_exact + len(dup)
        out["precision"] = (n_exact + len(dup) * p_d) / total if total else None
        out["precision_ci"] = ((n_exact + len(dup) * lo) / total, (n_exact + len(dup) * hi) / total) if total else None
    if (ld or n_exact) and (lu or not uniq):
        def recall(d: np.ndarray, u: np.ndarray) -> float:
            tp = n_exact + len(dup) * (d.mean() if len(d) else 1.0)
            fn = len(uniq) * (u.mean() if len(u) else 0.0)
            return float(tp / (tp + fn)) if tp + fn else float("nan")

        d, u = np.asarray(ld, float), np.asarray(lu, float)
        out["recall"] = recall(d, u)
        rng = np.random.default_rng(seed)
        draws = [recall(rng.choice(d, len(d)) if len(d) else d, rng.choice(u, len(u)) if len(u) else u)
                 for _ in range(bootstrap)]
        out["recall_ci"] = (float(np.nanpercentile(draws, 2.5)), float(np.nanpercentile(draws, 97.5)))
    return out


# ---------------------------------------------------------------- lookup and pictures

def split_image_ref(ref: str, default_bucket: str) -> tuple[str, str]:
    """``s3://bucket/key`` or a bare key (in the default bucket) -> (bucket, key)."""
    ref = ref.strip()
    if ref.startswith("s3://"):
        return parse_s3_uri(ref)
    return default_bucket, ref.lstrip("/")


def find_record(settings: Settings, ref: str) -> tuple[str, dict[str, Any] | None]:
    """The image id for ``ref`` and its record (None when it has none yet, or the object is gone)."""
    from botocore.exceptions import ClientError

    from .ingest_run import record_key

    bucket, key = split_image_ref(ref, settings.s3_bucket)
    image_id = f"s3://{bucket}/{key}"
    try:
        head = S3Store(settings, bucket=bucket).client.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return image_id, None
    rkey = record_key(settings, image_id, int(head["LastModified"].timestamp() * 1000))
    store = S3Store(settings)
    if not store.exists(rkey):
        return image_id, None
    return image_id, {**store.get_json(rkey), "_key": rkey}


class NotRecorded(LookupError):
    """The object has no NDID record: the pages show pictures of recorded objects only."""


def thumbnail(settings: Settings, image_id: str, max_side: int = 360) -> bytes:
    """A JPEG thumbnail of an object NDID has a record of, decoded under the same limits as ingest
    (the pages never hand out S3 URLs or credentials, and never show other objects)."""
    from .images import load_image

    if find_record(settings, image_id)[1] is None:
        raise NotRecorded(image_id)
    bucket, key = parse_s3_uri(image_id)
    data = S3Store(settings, bucket=bucket).get_bytes(key, max_bytes=settings.max_image_bytes)
    pic = load_image(data, image_id, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes,
                     max_decode_bytes=settings.max_decode_bytes).image
    pic.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    pic.save(buf, "JPEG", quality=85)
    return buf.getvalue()
