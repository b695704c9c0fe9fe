"""Tight crops called duplicates, by the share of the frame they keep, across benchmark runs.

Reads each run's ``report.json`` (``ndid bench run ... --out DIR``) and draws, for the cropped
copies keeping under 10 % and 10-15 % of the frame, the share called a duplicate at the run's own
threshold, one bar per run, with the false positives on negatives in the legend. Session 19: the
faint look for every faint query not decided yet, on the dev benchmark and on one made from
photos outside it.

    .venv/bin/python docs/analysis/tight_crop_runs.py OUT.png LABEL=DIR [LABEL=DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BUCKETS = ("0%-10%", "10%-15%")  # the report's kept-area bins that hold the tight crops (5-15 %)


def called_by_bucket(run: Path) -> tuple[list[tuple[int, int]], int]:
    """Per bucket (cropped copies called duplicates, cropped copies) from the run's report, and its
    false positives on negatives."""
    report = json.loads((run / "report.json").read_text())
    bins = {b["kept_area"]: b for b in report["by_crop_area"]}
    out = [(round(bins[b]["recall_at_threshold"] * bins[b]["queries"]), bins[b]["queries"]) if b in bins else (0, 0)
           for b in BUCKETS]
    return out, int(report["operating_point"]["false_positives_on_negatives"])


def main(png: str, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    width = 0.8 / len(runs)
    for n, spec in enumerate(runs):
        label, folder = spec.split("=", 1)
        buckets, fps = called_by_bucket(Path(folder))
        xs = [k + n * width for k in range(len(BUCKETS))]
        bars = ax.bar(xs, [c / t if t else 0 for c, t in buckets], width, label=f"{label} (FP on negatives: {fps})")
        for bar, (c, t) in zip(bars, buckets, strict=True):
            ax.annotate(f"{c}/{t}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(BUCKETS))],
                  [f"{b} of the frame kept" for b in BUCKETS])
    ax.set_ylim(0.6, 1.02)
    ax.set_ylabel("cropped copies called duplicates")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    ax.set_title("Tight crops at the shipped threshold (untrained weights)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"written {png}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
