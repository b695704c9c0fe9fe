"""Figure for docs/benchmarks.md (round 2, session 10): inliers of the probe's pairs without and
with the closer look, from closer_look_probe.py's JSON.

    .venv/bin/python docs/analysis/closer_look_plot.py /tmp/closer_look.json docs/closer_look.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main(probe: str, out: str) -> None:
    data = json.loads(open(probe).read())
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    styles = {"tight_crop": ("tab:blue", "tight crops (5-15 % of the frame)"),
              "same_scene": ("tab:red", "same-scene pairs (no shared pixels)"),
              "unrelated": ("tab:grey", "unrelated pairs")}
    for kind, (colour, label) in styles.items():
        plain = np.asarray(data[kind]["plain"]) + 1
        closer = np.asarray(data[kind]["closer"]) + 1
        jitter = np.random.default_rng(0).uniform(0.93, 1.07, len(plain))
        ax.scatter(plain * jitter, closer * jitter, s=14, alpha=0.6, color=colour, label=label)
    ax.plot([1, 300], [1, 300], color="black", lw=0.8, ls=":")
    ax.axhline(13, color="tab:green", lw=0.8, ls="--", label="12 inliers")
    ax.set(xscale="log", yscale="log", xlim=(0.8, 300), ylim=(0.8, 300),
           xlabel="distinct inliers + 1, verification at 384 px", ylabel="distinct inliers + 1, with the closer look",
           title="Closer look: 120 photos outside the dev set")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
