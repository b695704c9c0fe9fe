"""Draw docs/sift_resolution.png: the probe's inliers (sift_resolution_probe.py) and the dev
benchmark's cropped copies by area kept, at 256 and 384 px (two `ndid bench run` report.json).

    .venv/bin/python docs/analysis/sift_resolution_plot.py /tmp/sift_probe.json \
        /tmp/b256/out/report.json /tmp/b384/out/report.json docs/sift_resolution.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main(probe: str, report_256: str, report_384: str, out: str) -> None:
    inliers = json.loads(Path(probe).read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for side, colour in (("256", "tab:grey"), ("384", "tab:blue")):
        tight = np.sort(inliers[side]["tight_crop"])
        left.step(tight, 1 - np.arange(len(tight)) / len(tight), where="post", color=colour,
                  label=f"tight crops vs their photo, {side} px")
        scene = np.sort(inliers[side]["same_scene"])
        left.step(scene, 1 - np.arange(len(scene)) / len(scene), where="post", color=colour, linestyle=":",
                  label=f"same-scene pairs (no shared pixels), {side} px")
    left.set_xscale("symlog", linthresh=10)
    left.set_xlabel("distinct RANSAC inliers")
    left.set_ylabel("share of pairs with at least this many")
    left.set_title("Probe: 120 photos outside the dev benchmark")
    left.legend(fontsize=8)

    rows = {side: json.loads(Path(p).read_text())["by_crop_area"] for side, p in (("256", report_256), ("384", report_384))}
    areas = [r["kept_area"] for r in rows["384"]]
    x = np.arange(len(areas))
    width = 0.2
    for k, (side, key, colour) in enumerate((("256", "recall_at_1", "silver"), ("384", "recall_at_1", "lightblue"),
                                             ("256", "recall_at_threshold", "grey"),
                                             ("384", "recall_at_threshold", "tab:blue"))):
        right.bar(x + (k - 1.5) * width, [r[key] for r in rows[side]], width, color=colour,
                  label=f"{'R@1' if key == 'recall_at_1' else 'recall at the threshold'}, {side} px")
    right.set_xticks(x, [f"{a}\n({r['queries']})" for a, r in zip(areas, rows["384"], strict=True)])
    right.set_xlabel("share of the original's area kept (queries)")
    right.set_ylim(0, 1.25)
    right.set_title("Dev benchmark: cropped copies (UNTRAINED weights)")
    right.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:5])
