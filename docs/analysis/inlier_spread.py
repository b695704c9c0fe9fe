"""Where a pair's inliers lie: copies against same-scene pairs (sessions 20-21).

For every (copy, original) and (same-scene view, other view) pair of the benchmark folders given,
and for any extra pairs of files named on the command line, the plain SIFT match (direct or
mirrored, whichever has more distinct inliers, before the spread rule) and its *spread*: the larger,
over the two sides, of the inliers' convex hull area over all keypoints' hull area
(``GeometricSignal._spread``). A copy puts one picture, or most of it, inside the other; two shots
of one object match only on the object. Draws spread against inliers with the chance level and
``GeometricSignal.spread_min``, and prints the lowest spread per kind among pairs with 8+ inliers.

    .venv/bin/python docs/analysis/inlier_spread.py OUT.png BENCH_DIR [BENCH_DIR ...] \\
        [--pair LABEL A.jpg B.jpg ...]
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ndid_tasks.config import Settings
from ndid_tasks.images import load_image
from ndid_tasks.signals.geometry import GeometricSignal


def plain_match(geo: GeometricSignal, a: Path, b: Path) -> tuple[int, float]:
    """(distinct inliers, spread) of ``a`` matched on ``b``, direct or mirrored, no looks."""
    q, r = geo.compute([load_image(p.read_bytes(), p.name) for p in (a, b)])
    best = (0, 0.0)
    if len(q) < 4 or len(r) < 4:
        return best
    for side in (q, q.mirrored()):
        rows, cols = side.descriptors.astype(np.float32), r.descriptors.astype(np.float32)
        dist = rows @ (-2.0 * cols).T + (cols * cols).sum(1)[None, :]
        src, dst = geo._tentative(dist, (rows * rows).sum(1))
        if len(src) >= 4:
            count, mask, _, _ = geo._fit(side.points[src], r.points[dst])
            if count > best[0]:
                best = (count, geo._spread(side.points[src], r.points[dst], mask, side.points, r.points))
    return best


def bench_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(kind, query, ref) for the copies and same-scene views of a ``ndid bench make`` folder."""
    out = []
    with (folder / "ground_truth.csv").open() as fh:
        for row in csv.DictReader(fh):
            query = folder / "queries" / row["query"]
            if row["family"] == "hard_negative":
                out.append(("same scene (halves)", query, folder / "refs" / row["query"].replace("hardneg__", "scene__")))
            elif row["original"]:
                out.append((f"copy: {row['family']}", query, folder / "refs" / row["original"]))
    return out


def main(argv: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, rest = Path(argv[0]), argv[1:]
    extra = []
    if "--pair" in rest:
        at = rest.index("--pair")
        named, rest = rest[at + 1:], rest[:at]
        extra = [(named[k], Path(named[k + 1]), Path(named[k + 2])) for k in range(0, len(named), 3)]
    geo = GeometricSignal.from_settings(Settings.from_env())
    found: dict[str, list[tuple[int, float]]] = defaultdict(list)
    pairs = [p for folder in rest for p in bench_pairs(Path(folder))] + extra
    for n, (kind, a, b) in enumerate(pairs):
        found[kind].append(plain_match(geo, a, b))
        if n % 100 == 0:
            print(f"{n}/{len(pairs)} pairs", file=sys.stderr, flush=True)
    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, points in sorted(found.items()):
        inl, spread = np.array(points, float).T
        copy = kind.startswith("copy")
        ax.scatter(np.maximum(inl, 1), np.maximum(spread, 1e-3), s=10 if copy else 60, alpha=0.5 if copy else 0.9,
                   marker="o" if copy else "X", label=kind)
        strong = [s for i, s in points if i >= 8]
        print(f"{kind}: {len(points)} pairs, {len(strong)} with 8+ inliers, lowest spread there "
              f"{min(strong):.3f}" if strong else f"{kind}: {len(points)} pairs, none with 8+ inliers")
    ax.axhline(GeometricSignal.spread_min, color="k", ls="--", lw=1)
    ax.axvline(GeometricSignal.chance + 0.5, color="grey", ls=":", lw=1)
    ax.text(1.1, GeometricSignal.spread_min * 1.08, f"spread_min {GeometricSignal.spread_min}", fontsize=8)
    ax.text(GeometricSignal.chance + 0.7, 1.2e-3, "chance", fontsize=8, color="grey")
    ax.set(xscale="log", yscale="log", xlabel="distinct inliers (plain match)", ylim=(1e-3, 1.5),
           ylabel="spread: inliers' hull / keypoints' hull, larger side",
           title="Copies put one picture inside the other; one object in two photos does not")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
