"""Whether images with few visual words could be gated too (issue #15, gating; session 24).

The words gates leave every candidate of a query with fewer than 250 words (half the SIFT budget)
standing. In the dev benchmark's ingest those images are 31 of the 52 refs that still reach
verification, each with up to 8 band and 16 words candidates. This probe asks what gating them
at the ratio levels of the full images would cost: per query with 1-249 words, whether its own
original (copies) or its best reference (no copy) reaches ratio x its background, the background
being its similarities' top 1/32..1/8 among a uniform sample of 256 references
(``VisualWordsSignal.background``).

Photos outside the dev benchmark: references = originals 180..299 (the copies' sources) and
distractors 0..179; no copy = originals 60..179 and distractors 420..568; copies = the sources
attacked as in words_gate_probe.py (only the families that give few-word images).

    .venv/bin/python docs/analysis/few_words_gate_probe.py ../shared/data
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from generic_background_probe import levels, photo_sets, rgb, words_of
from words_gate_probe import FAMILIES, matrix

RATIOS = (1.25, 1.5, 1.75, 2.5)


def main(data: str) -> None:
    signal, distractors, originals = photo_sets(data)
    size = signal.size
    sources = rgb(originals[180:300])
    refs = words_of(signal, sources, "r") + words_of(signal, rgb(distractors[:180]), "x")
    R = matrix(refs, size)
    sample = [refs[i] for i in np.random.default_rng(0).permutation(len(refs))[:256]]
    queries = {"no copy": (words_of(signal, rgb(originals[60:180] + distractors[420:569]), "u"), None)}
    for family in ("tight_crop", "thumbnail", "crop_resize_jpeg", "jpeg"):
        rng = np.random.default_rng(7 if family == "tight_crop" else 11)
        queries[family] = (words_of(signal, [FAMILIES[family](p, rng) for p in sources], "q"), np.arange(len(sources)))
    print("| queries with 1-249 words | n | " + " / ".join(f"ratio {r:g}" for r in RATIOS) + " | ungated |")
    print("|---|---|---|---|")
    for name, (words, own) in queries.items():
        few = [n for n, w in enumerate(words) if 0 < len(w) < 250]
        if not few:
            continue
        q = [words[n] for n in few]
        level = levels(q, sample, size)
        sims = (matrix(q, size) @ R.T).toarray()
        best = sims.max(axis=1) if own is None else sims[np.arange(len(q)), own[few]]
        gates = " / ".join(f"{np.mean(best >= r * level):.3f}" for r in RATIOS)
        print(f"| {name} | {len(few)} | {gates} | {np.mean(best > 0):.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
