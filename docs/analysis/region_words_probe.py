"""Would the words of a query's regions find copies inside bigger pictures (issue #15, session 23)?

Offline, no index: every reference's visual words (the engine's SIFT and vocabulary), and for each
query its whole-image words and those of five regions (the four quadrants and the centre half of
its keypoints' box, each with >= 60 keypoints; images with >= 250 keypoints only). A hit is one of
the 4 nearest references that stands out of the query's background by the engine's 1.75
(``VisualWordsSignal.background_of`` over all references). Reports, per family, the share whose
original is such a hit by the whole image, by the whole image or a region, and the wrong hits the
regions add -- for the references too, each matched against the others (images with no copy:
the verification a region search would add to every ingest).

    python docs/analysis/region_words_probe.py BENCH_FOLDER [SECOND_FOLDER_WITH_THE_SAME_REFS]

Session 23: BENCH_FOLDER = attack_stress.py's folder on the outside set, SECOND = the outside set.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ndid_tasks.benchmark import read_ground_truth
from ndid_tasks.config import Settings
from ndid_tasks.images import load_image
from ndid_tasks.signals.geometry import GeometricSignal, LocalFeatures
from ndid_tasks.signals.visual_words import VisualWordsSignal, Vocabulary

RATIO, NEAREST, FULL_WORDS, REGION_WORDS = 1.75, 4, 250, 60


class Probe:
    def __init__(self, refs_folder: Path) -> None:
        self.geometry = GeometricSignal.from_settings(Settings.from_env())
        self.words = VisualWordsSignal(Vocabulary.load(), self.geometry)
        refs = sorted(refs_folder.iterdir())
        self.names = [p.name for p in refs]
        self.vectors = self.words.from_local_many(self.geometry.compute([load_image(p.read_bytes(), p.name)
                                                                          for p in refs]))

    def hits(self, vector, exclude: set[str]) -> list[str]:
        """The NEAREST references standing out of the query's background by RATIO."""
        sims = VisualWordsSignal.similarities([vector], self.vectors)[0]
        keep = [k for k, name in enumerate(self.names) if name not in exclude]
        values = sims[keep]
        order = np.argsort(-values)
        level = VisualWordsSignal.background_of(list(values), [float(values[k]) for k in order[:48]])
        return [self.names[keep[k]] for k in order[:NEAREST] if level and values[k] >= RATIO * level]

    @staticmethod
    def regions(local: LocalFeatures) -> list[LocalFeatures]:
        points = local.points
        if local.descriptors is None or len(points) < FULL_WORDS:
            return []
        (x0, y0), (x1, y1) = points.min(0), points.max(0)
        w, h = x1 - x0, y1 - y0
        boxes = [(x0 + i * w / 2, y0 + j * h / 2, x0 + (i + 1) * w / 2, y0 + (j + 1) * h / 2)
                 for i in (0, 1) for j in (0, 1)] + [(x0 + w / 4, y0 + h / 4, x0 + 3 * w / 4, y0 + 3 * h / 4)]
        out = []
        for bx0, by0, bx1, by1 in boxes:
            inside = (points[:, 0] >= bx0) & (points[:, 0] < bx1) & (points[:, 1] >= by0) & (points[:, 1] < by1)
            if inside.sum() >= REGION_WORDS:
                out.append(LocalFeatures(points[inside], local.descriptors[inside]))
        return out

    def query(self, path: Path, original: str, exclude: set[str]) -> dict:
        local = self.geometry.compute([load_image(path.read_bytes(), "query")])[0]
        whole = self.words.from_local_many([local])[0]
        found = self.hits(whole, exclude) if len(whole) >= FULL_WORDS else []
        by_regions: set[str] = set()
        for vector in self.words.from_local_many(self.regions(local)):
            by_regions.update(self.hits(vector, exclude))
        added = by_regions - set(found)
        return {"whole": original in found, "either": original in found or original in by_regions,
                "wrong_added": len([x for x in added if x != original])}


def main() -> None:
    folders = [Path(a) for a in sys.argv[1:]]
    probe = Probe(folders[0] / "refs")
    totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(5))
    for folder in folders:
        for row in read_ground_truth(folder):
            r = probe.query(folder / "queries" / row["query"], row["original"], set())
            totals[row["family"]] += [1, r["whole"], r["either"], r["wrong_added"], r["wrong_added"] > 0]
    for path in sorted((folders[0] / "refs").iterdir()):  # no copy: each against the others
        r = probe.query(path, "", {path.name})
        totals["(refs, no copy)"] += [1, 0, 0, r["wrong_added"], r["wrong_added"] > 0]
    print("| family | n | original a hit: whole image | whole or a region | wrong hits added / image | images with one |")
    print("|---|---|---|---|---|---|")
    for family, t in sorted(totals.items()):
        print(f"| {family} | {int(t[0])} | {t[1] / t[0]:.2f} | {t[2] / t[0]:.2f} | {t[3] / t[0]:.2f} | {t[4] / t[0]:.2f} |")


if __name__ == "__main__":
    main()
