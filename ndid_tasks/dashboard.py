"""What the NDID dashboard shows, read from S3: runs over time, the calibration history (candidates,
evaluations, promoted / refused / skipped and why), labels per auditor, and the charts (PNG).

Plain Python; the Airflow plugin renders it. Every figure comes from the objects the DAGs write
(run summaries, calibration versions and evaluations, label files), never from Airflow internals.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .calibration import Calibration
from .calibration_store import CalibrationStore
from .config import Settings
from .labels import load_labels, read_review_labels
from .storage import S3Store

MAX_RUNS = 200


def run_summaries(store: S3Store, settings: Settings, limit: int = MAX_RUNS) -> list[dict[str, Any]]:
    """The latest ``limit`` ingest run summaries (``decisions/runs/date=…/run=…/_summary.json``), oldest first."""
    from .review import read_records

    keys = sorted(o.key for o in store.iter_objects(f"{settings.s3_decisions_prefix}runs/")
                   if o.key.endswith("/_summary.json"))[-limit:]
    runs = read_records(store, keys)
    return sorted(runs, key=lambda r: (r.get("written_at", ""), r.get("run_id", "")))


def calibration_history(store: S3Store, settings: Settings) -> dict[str, Any]:
    """The active calibration and every recalibration outcome, newest first."""
    from .review import read_records

    cal_store = CalibrationStore(settings, store)
    active: Calibration | None = None
    try:
        active = cal_store.active()
    except Exception:  # noqa: BLE001 - an unreadable active pointer is shown, not fatal for the page
        active = None
    evaluations = read_records(store, [o.key for o in store.iter_objects(f"{settings.s3_calibration_prefix}evaluations/")])
    evaluations.sort(key=lambda e: (e.get("evaluated_at", ""), e.get("_key", "")), reverse=True)
    versions = sorted(o.key.rsplit("/", 1)[-1].removesuffix(".json")
                      for o in store.iter_objects(f"{settings.s3_calibration_prefix}versions/"))
    return {"active": active, "active_is_stored": active is not None, "evaluations": evaluations,
            "versions": versions}


def label_counts(store: S3Store, settings: Settings) -> tuple[dict[str, Counter], list[Any], int]:
    """Per auditor: duplicate / not_duplicate / unsure counts, over every label file (the review
    page's and hand-written ones); also the parsed labels and how many rows were refused."""
    labels, errors = load_labels(store, settings.s3_labels_prefix)
    per: dict[str, Counter] = {}
    for lab in labels:
        per.setdefault(lab.auditor or "(none)", Counter())["duplicate" if lab.is_duplicate else "not_duplicate"] += 1
    for row in read_review_labels(store, settings):
        if not isinstance(row.get("is_duplicate"), bool):
            per.setdefault(row.get("auditor") or "(none)", Counter())["unsure"] += 1
    return per, labels, len(errors)


# ---------------------------------------------------------------- charts

def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _run_label(run: dict[str, Any]) -> str:
    """A short x-axis label: the start of the run's window (or when it was written)."""
    window = run.get("window") or [None, None]
    moment = window[0] or run.get("written_at") or run.get("run_id", "")
    return str(moment)[:16].replace("T", " ")


def runs_chart(runs: Sequence[dict[str, Any]]) -> bytes:
    """Four panels over the runs: objects and duplicates, errors by kind, stage-2 share, images/s."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 5.6), sharex=True)
    x = list(range(len(runs)))
    labels = [_run_label(r) for r in runs]
    ax = axes[0][0]
    ax.bar(x, [r.get("objects", 0) for r in runs], color="#9ab", label="objects")
    ax.bar(x, [r.get("decisions", {}).get("duplicate", 0) for r in runs], color="#c44", label="duplicates")
    ax.set_title("objects and duplicates per run")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[0][1]
    kinds = sorted({k for r in runs for k in r.get("errors", {})})
    bottom = [0] * len(runs)
    for kind in kinds:
        values = [r.get("errors", {}).get(kind, 0) for r in runs]
        ax.bar(x, values, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("error records by kind")
    if kinds:
        ax.legend(loc="upper left", fontsize=8)
    ax = axes[1][0]
    ax.plot(x, [r.get("stage2_share", 0) for r in runs], marker="o", color="#a60")
    ax.set_ylim(0, 1.05)
    ax.set_title("share of images reaching stage 2")
    ax = axes[1][1]
    ax.plot(x, [r.get("images_per_s") or 0 for r in runs], marker="o", color="#264")
    ax.set_title("images per second (whole run)")
    for ax in axes[1]:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
    if any(r.get("untrained") for r in runs):
        fig.suptitle("UNTRAINED (random weights): these runs only demonstrate the pipeline", color="#b00")
    fig.tight_layout()
    return _figure_png(fig)


def pr_chart(scored: Sequence[tuple[float, bool]], threshold: float, title: str) -> bytes:
    """Precision-recall curve of live probabilities against audited labels, threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    positives = sum(1 for _, y in scored if y)
    if positives and len(scored) > positives:
        from sklearn.metrics import precision_recall_curve

        precision, recall, cuts = precision_recall_curve([y for _, y in scored], [p for p, _ in scored])
        ax.step(recall, precision, where="post", color="#236")
        at = [i for i, c in enumerate(cuts) if c >= threshold]
        if at:
            ax.plot([recall[at[0]]], [precision[at[0]]], "o", color="#c44", label=f"threshold {threshold:.2f}")
            ax.legend(loc="lower left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "needs audited labels of both kinds", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    return _figure_png(fig)
