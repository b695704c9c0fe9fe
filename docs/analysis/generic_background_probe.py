"""Whether a shipped sample of generic photos' words can stand in for the index's own sample as a
query's words background while the index is too small to give one (issue #15, gating).

The words gates (``NDID_VISUAL_WORDS_MIN_RATIO``, ``NDID_VISUAL_WORDS_BAND_RATIO``) judge a
candidate by how far its words similarity stands out of the query's background: the mean of its
similarities ranked in the top 1/32..1/8 of a uniform sample of the earlier images
(``VisualWordsSignal.background``). Below 64 earlier images there is no background and every
candidate is verified: the first 64 images of a new index all reach verification (dev benchmark:
refs 60.5 % verified, 35.7 % after the 64th). A fixed sample of generic photos -- the words of
photos nobody indexes -- gives a level from the first image on, if its level is close to that of
a real index's sample.

Photos: generic = distractors 120..299 (neither the dev benchmark, the outside set nor the
vocabulary's fitting photos use them); index sample = the dev benchmark's references (distractors
0..119 and originals 0..59: photos the vocabulary's idf did not see, as in a deployment; its
fitting photos, distractors 300.., sit ~10 % lower); queries with no copy = originals 60..179; copies = originals 180..299 attacked
the eight ways of words_gate_probe.py, references = those 120 sources. Per query with at least 250
words (fewer: exempt, as in the engine): the two levels, and the gates at 1.25 / 1.75 with each.

    .venv/bin/python docs/analysis/generic_background_probe.py ../shared/data
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ndid_tasks.signals.geometry import GeometricSignal
from ndid_tasks.signals.visual_words import VisualWordsSignal, Vocabulary

sys.path.insert(0, str(Path(__file__).parent))
from words_gate_probe import FAMILIES, loaded, matrix

FULL = 250  # words under which a query is exempt from the gates (the engine: half the SIFT budget)


def words_of(signal: VisualWordsSignal, images: list[Image.Image], tag: str) -> list[dict[int, float]]:
    features = signal.geometry.compute([loaded(im, f"{tag}{n}") for n, im in enumerate(images)])
    return signal.from_local_many(features)


def levels(queries: list[dict[int, float]], sample: list[dict[int, float]], size: int) -> np.ndarray:
    sims = (matrix(queries, size) @ matrix(sample, size).T).toarray()
    return np.array([VisualWordsSignal.background(list(row)) for row in sims], dtype=np.float64)


def rgb(files: list[Path]) -> list[Image.Image]:
    return [Image.open(f).convert("RGB") for f in files]


def photo_sets(data: str) -> tuple[VisualWordsSignal, list[Path], list[Path]]:
    """The packaged words signal, and the sorted distractors and originals of ``data``."""
    return (VisualWordsSignal(Vocabulary.load(), GeometricSignal()), sorted(Path(data, "distractors").glob("*")),
            sorted(Path(data, "originals").glob("*.jpg")))


def main(data: str) -> None:
    signal, distractors, originals = photo_sets(data)
    size = signal.size
    generic = words_of(signal, rgb(distractors[120:300]), "p")
    sample = words_of(signal, rgb(distractors[:120] + originals[:60]), "s")
    sources = rgb(originals[180:300])
    refs = words_of(signal, sources, "r")
    R = matrix(refs, size)
    queries = {"no copy": (words_of(signal, rgb(originals[60:180]), "u"), None)}
    for family, attack in FAMILIES.items():
        rng = np.random.default_rng(7 if family == "tight_crop" else 11)
        queries[family] = (words_of(signal, [attack(p, rng) for p in sources], "q"), np.arange(len(sources)))
    print(f"generic {len(generic)} photos, index sample {len(sample)}, references {len(refs)}")
    print("\n| queries | judged (>= 250 words) | level generic / sample: median ratio (5-95 %) | corr | "
          "gate 1.25: generic / sample / none | gate 1.75: generic / sample / none |")
    print("|---|---|---|---|---|---|")
    for name, (words, own) in queries.items():
        judged = [n for n, w in enumerate(words) if len(w) >= FULL]
        if not judged:
            print(f"| {name} | 0/{len(words)} | (all exempt) | | | |")
            continue
        q = [words[n] for n in judged]
        lp, ls = levels(q, generic, size), levels(q, sample, size)
        sims = (matrix(q, size) @ R.T).toarray()
        # no copy: does the best reference pass (one verification at least)? copies: does the own original?
        best = sims.max(axis=1) if own is None else sims[np.arange(len(q)), own[judged]]
        ratio = lp / ls
        gates = []
        for tau in (1.25, 1.75):
            gates.append(f"{np.mean(best >= tau * lp):.3f} / {np.mean(best >= tau * ls):.3f} / {np.mean(best > 0):.3f}")
        print(f"| {name} | {len(judged)}/{len(words)} | {np.median(ratio):.3f} ({np.quantile(ratio, 0.05):.2f}-"
              f"{np.quantile(ratio, 0.95):.2f}) | {np.corrcoef(lp, ls)[0, 1]:.2f} | {gates[0]} | {gates[1]} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
