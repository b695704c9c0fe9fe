"""Where a copy's original ranks by visual words as the index grows, for two vocabularies (issue #15):
the 4,096 flat words shipped before and the mirror-invariant two-level tree of 16,384 words
shipped now.

Photos outside the dev benchmark and outside both vocabularies' fitting set (distractors from 300
on): the last 120 of ``originals`` are attacked (tight crop with the seed of the other probes, and
seven more families), the references are those 120, then the first 300 distractors (the dev set
takes 120 of them: as unrelated references they carry no labels), then the other 180 originals.
A copy's words candidates are the ``Matcher.words_wanted`` nearest (4, more for images with few
words, at most 16); reported: the share whose original is among them, at 270 / 420 / 600 references.

    .venv/bin/python docs/analysis/vocabulary_probe.py ../shared/data OLD.npz NEW.npz docs/vocabulary.png
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ndid_tasks import augment
from ndid_tasks.images import LoadedImage, load_image
from ndid_tasks.signals.geometry import GeometricSignal
from ndid_tasks.signals.visual_words import VisualWordsSignal, Vocabulary

SIZES = (270, 420, 600)
FAMILIES = {"tight_crop": augment.attack_tight_crop, "crop": augment.attack_crop,
            "rotate_crop": augment.attack_rotate_crop, "crop_resize_jpeg": augment.attack_crop_resize_jpeg,
            "print_scan": augment.attack_print_scan, "thumbnail": augment.attack_thumbnail,
            "jpeg": augment.attack_jpeg, "mirror_crop": augment.attack_mirror_crop}


def loaded(img: Image.Image, name: str) -> LoadedImage:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return load_image(buf.getvalue(), name)


def within_wanted(query: list[dict], refs: list[dict], n: int) -> float:
    """Share of the copies whose original (reference i for copy i) is among its words candidates
    when the index holds the first ``n`` references."""
    hits = 0
    for i, q in enumerate(query):
        if not q:
            continue
        sims = np.array([sum(v * r.get(w, 0.0) for w, v in q.items()) for r in refs[:n]])
        wanted = min(16, max(4, round(4 * 250 / len(q))))  # Matcher.words_wanted, shipped settings
        hits += int((sims > sims[i]).sum()) < wanted
    return hits / len(query)


def main(data: str, old: str, new: str, png: str | None = None) -> None:
    geometry = GeometricSignal()
    originals = sorted(Path(data, "originals").glob("*.jpg"))
    files = originals[-120:] + sorted(Path(data, "distractors").glob("*"))[:300] + originals[:-120]
    photos = [Image.open(f).convert("RGB") for f in files]
    ref_local = geometry.compute([loaded(p, str(i)) for i, p in enumerate(photos)])
    vocabs = {"4,096 flat words (before)": Vocabulary.load(old), "16,384-word mirror-invariant tree (now)": Vocabulary.load(new)}
    signals = {k: VisualWordsSignal(v, geometry) for k, v in vocabs.items()}
    refs, assign_ms = {}, {}
    for k, sig in signals.items():
        t0 = time.perf_counter()
        refs[k] = [sig.from_local(f) for f in ref_local]
        assign_ms[k] = 1000 * (time.perf_counter() - t0) / len(ref_local)
    print(f"{len(photos)} references; " + "; ".join(f"{k}: {len(vocabs[k])} words, {assign_ms[k]:.1f} ms an image"
                                                      for k in vocabs))
    results: dict[str, dict[str, list[float]]] = {k: {} for k in vocabs}
    for family, attack in FAMILIES.items():
        seed = 7 if family == "tight_crop" else 11  # 7: the tight crops of the other probes
        rng = np.random.default_rng(seed)
        local = geometry.compute([loaded(attack(p, rng), "q") for p in photos[:120]])
        cells = []
        for k, sig in signals.items():
            query = [sig.from_local(f) for f in local]
            results[k][family] = [within_wanted(query, refs[k], n) for n in SIZES]
            cells.append(" / ".join(f"{x:.3f}" for x in results[k][family]))
        print(f"| {family} | " + " | ".join(cells) + " |", flush=True)
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for k, style in zip(vocabs, ("o--", "s-"), strict=True):
            axes[0].plot(SIZES, results[k]["tight_crop"], style, label=k)
            axes[1].plot(SIZES, np.mean([results[k][f] for f in FAMILIES if f != "tight_crop"], axis=0), style, label=k)
        axes[0].set_title("tight crops (120)", fontsize=10)
        axes[1].set_title(f"the other {len(FAMILIES) - 1} families (mean, 120 each)", fontsize=10)
        for ax in axes:
            ax.set_xlabel("references in the index")
            ax.set_ylabel("original among the words candidates")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle("Visual-words candidate recall as the index grows (photos outside the dev set)", fontsize=11)
        fig.tight_layout()
        fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
