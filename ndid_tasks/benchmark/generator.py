"""The benchmark's folder format and its generator: attacked copies of originals among distractors."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import augment
from ..images import image_files

log = logging.getLogger(__name__)


def make_benchmark(originals: str | Path, distractors: str | Path, out: str | Path, seed: int = 0,
                   max_originals: int | None = None, max_distractors: int | None = None,
                   negative_share: float = 0.3, hard_negative_share: float = 0.5,
                   skip_originals: int = 0, skip_distractors: int = 0,
                   optional: Sequence[str] = ()) -> dict[str, Any]:
    """Attack every original once per family; hold some distractors out as negative queries.

    ``optional``: families of :data:`augment.OPTIONAL_FAMILIES` to add (composite copies, whose
    other parts are negative-query photos: never indexed), from a generator of their own, so every
    other query is the same with or without them.

    ``hard_negative_share`` of those negatives become *same-scene* pairs instead: one view goes into
    refs, the other (no shared pixels, see :func:`augment.same_scene_pair`) is a negative query.
    ``skip_*``: leave out the first sorted files, e.g. those a dev benchmark uses, so that a change
    found on one benchmark is checked on photos it has not seen."""
    unknown = [f for f in optional if f not in augment.OPTIONAL_FAMILIES]
    if unknown:
        raise ValueError(f"unknown optional families {unknown}; choose from {list(augment.OPTIONAL_FAMILIES)}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    refs, queries = out / "refs", out / "queries"
    for d in (refs, queries):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    origs = image_files(originals)[skip_originals:][:max_originals or None]
    dists = image_files(distractors)[skip_distractors:][:max_distractors or None]
    order = rng.permutation(len(dists))
    n_neg = round(len(dists) * negative_share)
    n_hard = round(n_neg * hard_negative_share)
    negatives = [dists[i] for i in order[:n_neg - n_hard]]
    scenes = [dists[i] for i in order[n_neg - n_hard:n_neg]]
    ref_dists = [dists[i] for i in order[n_neg:]]
    rows = []
    for p in origs + ref_dists:
        shutil.copyfile(p, refs / p.name)
    overlay_pool = [Image.open(p).convert("RGB") for p in negatives[:20]]  # never indexed
    for p in scenes:
        view_a, view_b = augment.same_scene_pair(Image.open(p).convert("RGB"), rng)
        view_a.save(refs / f"scene__{p.stem}.jpg", "JPEG", quality=92)
        qname = f"hardneg__{p.stem}.jpg"
        view_b.save(queries / qname, "JPEG", quality=90)
        rows.append({"query": qname, "original": "", "family": "hard_negative", "attack": "same_scene"})
    extra_rng = np.random.default_rng([seed, 2])
    for p in origs:
        img = Image.open(p).convert("RGB")
        for family, attacks in augment.EXTRA_FAMILIES.items():
            name = next(iter(attacks))
            qname = f"{p.stem}__{family}__{name}.jpg"
            attacks[name](img, extra_rng).convert("RGB").save(queries / qname, "JPEG", quality=90)
            rows.append({"query": qname, "original": p.name, "family": family, "attack": name})
        for family, attacks in augment.FAMILIES.items():
            name = list(attacks)[int(rng.integers(len(attacks)))]
            attacked = attacks[name](img, rng)
            if family == "strong" and name == "text_overlay" and overlay_pool:
                attacked = augment.overlay_image(attacked, overlay_pool[int(rng.integers(len(overlay_pool)))], rng)
            qname = f"{p.stem}__{family}__{name}.jpg"
            attacked.convert("RGB").save(queries / qname, "JPEG", quality=90)
            rows.append({"query": qname, "original": p.name, "family": family, "attack": name})
    optional_rng = np.random.default_rng([seed, 3])
    for p in origs if optional and overlay_pool else []:
        img = Image.open(p).convert("RGB")
        for family in optional:
            name, attack = next(iter(augment.OPTIONAL_FAMILIES[family].items()))
            qname = f"{p.stem}__{family}__{name}.jpg"
            attack(img, overlay_pool, optional_rng).convert("RGB").save(queries / qname, "JPEG", quality=90)
            rows.append({"query": qname, "original": p.name, "family": family, "attack": name})
    for p in negatives:
        qname = f"neg__{p.stem}.jpg"
        Image.open(p).convert("RGB").save(queries / qname, "JPEG", quality=90)
        rows.append({"query": qname, "original": "", "family": "negative", "attack": "none"})
    with open(out / "ground_truth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["query", "original", "family", "attack"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"refs": len(origs) + len(ref_dists) + len(scenes), "originals": len(origs),
               "distractors_in_refs": len(ref_dists), "queries": len(rows), "negative_queries": len(negatives),
               "hard_negative_queries": len(scenes), "families": [*augment.FAMILIES, *augment.EXTRA_FAMILIES,
                                                             *(optional if overlay_pool else [])],
               "seed": seed, "skipped": {"originals": skip_originals, "distractors": skip_distractors},
               "folder": str(out)}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    return summary


def read_ground_truth(folder: Path) -> list[dict[str, str]]:
    with open(folder / "ground_truth.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- evaluation
