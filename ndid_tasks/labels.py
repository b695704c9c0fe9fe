"""Audited labels: their format, row-by-row validation, and how a reviewer's label is stored.

Label files are JSON Lines or CSV objects under ``<labels prefix>`` with the columns

    image_a, image_b, is_duplicate, auditor, labelled_at

(image ids as in the decision records: ``s3://bucket/key``; ``is_duplicate`` true/false, yes/no,
1/0, duplicate/not_duplicate, or unsure/skip -- an auditor's "don't know", which is neither a label
nor an error). Extra columns are kept in the file and ignored by the recalibration.

The review page writes **one object per (auditor, pair)** under ``<labels prefix>review/``:
two reviewers never overwrite each other, and submitting the same card again rewrites the same
key (idempotent; a changed mind replaces the earlier verdict).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .config import Settings

VERDICTS = ("duplicate", "not_duplicate", "unsure")  # what a reviewer can answer (Skip writes nothing)


@dataclass(frozen=True)
class Label:
    image_a: str
    image_b: str
    is_duplicate: bool
    auditor: str = ""
    labelled_at: str = ""


@dataclass(frozen=True)
class LabelError:
    """A label row that was not used, and why (reported by the recalibration, never fatal)."""

    file: str
    line: int
    reason: str


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "y", "duplicate"), ("0", "false", "no", "n", "not_duplicate")
UNSURE_WORDS = ("unsure", "skip")  # an auditor's "don't know": not a label, not an error


def parse_labels(name: str, data: bytes) -> tuple[list[Label], list[LabelError]]:
    """JSON Lines or CSV with columns image_a, image_b, is_duplicate, auditor, labelled_at, row by
    row: a bad row is reported with its line and skipped -- never turned into a negative."""
    labels: list[Label] = []
    errors: list[LabelError] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [LabelError(name, 0, f"not UTF-8 text: {exc}")]
    rows: list[tuple[int, Any]] = []
    if name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        rows = [(reader.line_num, r) for r in reader]
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                errors.append(LabelError(name, n, f"not JSON: {exc.msg}"))
    for n, r in rows:
        if not isinstance(r, dict):
            errors.append(LabelError(name, n, "not an object"))
            continue
        missing = [k for k in ("image_a", "image_b", "is_duplicate") if r.get(k) is None or str(r[k]).strip() == ""]
        if missing:
            errors.append(LabelError(name, n, f"missing {', '.join(missing)}"))
            continue
        dup = r["is_duplicate"]
        word = str(dup).strip().lower()
        if isinstance(dup, bool):
            value = dup
        elif word in TRUE_WORDS or word in FALSE_WORDS:
            value = word in TRUE_WORDS
        elif word in UNSURE_WORDS:
            continue
        else:
            errors.append(LabelError(name, n, f"is_duplicate {dup!r} is not true/false"))
            continue
        if str(r["image_a"]) == str(r["image_b"]):
            errors.append(LabelError(name, n, "image_a and image_b are the same image"))
            continue
        labels.append(Label(str(r["image_a"]), str(r["image_b"]), value, str(r.get("auditor", "")),
                            str(r.get("labelled_at", r.get("time", "")))))
    return labels, errors


def load_labels(store, prefix: str) -> tuple[list[Label], list[LabelError]]:
    """Every .jsonl / .json / .csv object under ``prefix``, row by row; the latest label of a pair
    wins. A file that cannot be read is one error; it never fails the others."""
    latest: dict[tuple[str, str], Label] = {}
    errors: list[LabelError] = []
    for obj in sorted(store.iter_objects(prefix), key=lambda o: (o.last_modified, o.key)):
        if not obj.key.lower().endswith((".jsonl", ".json", ".csv")):
            continue
        try:
            labels, bad = parse_labels(obj.key, store.get_bytes(obj.key))
        except Exception as exc:  # noqa: BLE001 - one unreadable file is reported, the rest go on
            labels, bad = [], [LabelError(obj.key, 0, f"unreadable: {exc}")]
        errors += bad
        for lab in labels:
            first, second = sorted((lab.image_a, lab.image_b))
            latest[first, second] = lab
    return list(latest.values()), errors


# ---------------------------------------------------------------- the review page's labels

def labels_asset_uri(settings: Settings) -> str:
    """The Airflow Asset that stands for "new labels": ndid_recalibrate is scheduled on it and the
    review page emits its events (one definition, used by both)."""
    return f"s3://{settings.s3_bucket}/{settings.s3_labels_prefix}"


def review_prefix(settings: Settings) -> str:
    return f"{settings.s3_labels_prefix}review/"


def auditor_slug(auditor: str) -> str:
    """A key-safe, readable form of the auditor's name (plus a hash, so two names never collide)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", auditor)[:40] or "_"
    return f"{safe}-{hashlib.sha256(auditor.encode()).hexdigest()[:8]}"


def pair_id(image_a: str, image_b: str) -> str:
    """The same id for (a, b) and (b, a)."""
    a, b = sorted((image_a, image_b))
    return hashlib.sha256(f"{a}\n{b}".encode()).hexdigest()[:32]


def review_label_key(settings: Settings, auditor: str, image_a: str, image_b: str) -> str:
    return f"{review_prefix(settings)}{auditor_slug(auditor)}/{pair_id(image_a, image_b)}.jsonl"


def review_label(image_a: str, image_b: str, verdict: str, auditor: str, context: dict[str, Any] | None = None,
                 now: datetime | None = None) -> dict[str, Any]:
    """One label row in the documented format, with the decision it audits as context."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
    if not auditor:
        raise ValueError("a label needs an auditor")
    if image_a == image_b:
        raise ValueError("image_a and image_b are the same image")
    is_duplicate: bool | str = {"duplicate": True, "not_duplicate": False}.get(verdict, "unsure")
    return {"image_a": image_a, "image_b": image_b, "is_duplicate": is_duplicate, "auditor": auditor,
            "labelled_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"), **(context or {})}


def write_review_label(store, settings: Settings, row: dict[str, Any]) -> str:
    """Store one reviewer's label of one pair at its own key (see the module doc); returns the key."""
    key = review_label_key(settings, row["auditor"], row["image_a"], row["image_b"])
    store.put_bytes(key, (json.dumps(row, sort_keys=True) + "\n").encode(), "application/x-ndjson")
    return key


def read_review_labels(store, settings: Settings, auditor: str | None = None) -> list[dict[str, Any]]:
    """The review page's label rows (all auditors, or one), unsure ones included; unreadable
    objects are left out (the recalibration reports them row by row)."""
    prefix = review_prefix(settings) + (auditor_slug(auditor) + "/" if auditor else "")
    rows = []
    for obj in store.iter_objects(prefix):
        try:
            row = json.loads(store.get_bytes(obj.key).decode().splitlines()[0])
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
        if isinstance(row, dict) and row.get("image_a") and row.get("image_b"):
            rows.append(row)
    return rows


def labelled_pair_ids(store, settings: Settings) -> set[str]:
    """Pairs someone has answered on the review page, from the key listing alone (no GETs)."""
    return {o.key.rsplit("/", 1)[-1].removesuffix(".jsonl") for o in store.iter_objects(review_prefix(settings))}
