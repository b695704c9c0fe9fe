"""Which visual-words candidates are worth verifying (issue #15, gating): with every words
candidate verified, nearly every image reaches geometric verification. A gate that skips the
candidates whose words similarity does not stand out of the query's own background should spare
most images that have no copy in the index while keeping the tight crops' originals
(``NDID_VISUAL_WORDS_MIN_RATIO``, ``VisualWordsSignal.background``).

Photos outside the dev benchmark (as in vocabulary_probe.py): references = the last 120 of
``originals`` + the first 300 distractors (420); copies = the 120 attacked eight ways (seeds of
the other probes); images with no copy in the index = the 120 originals neither attacked here nor
in the dev set (which takes the first 60). A query's candidates are its ``Matcher.words_wanted`` nearest. For each gate statistic and level:
the share of the no-copy images that would still verify some words candidate, and the share of
copies whose original is still verified through the words.

    .venv/bin/python docs/analysis/words_gate_probe.py ../shared/data [PNG]
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import sparse
from scipy.stats import poisson

from ndid_tasks import augment
from ndid_tasks.images import LoadedImage, load_image
from ndid_tasks.signals.geometry import GeometricSignal
from ndid_tasks.signals.visual_words import VisualWordsSignal, Vocabulary

FAMILIES = {"tight_crop": augment.attack_tight_crop, "crop": augment.attack_crop,
            "rotate_crop": augment.attack_rotate_crop, "crop_resize_jpeg": augment.attack_crop_resize_jpeg,
            "print_scan": augment.attack_print_scan, "thumbnail": augment.attack_thumbnail,
            "jpeg": augment.attack_jpeg, "mirror_crop": augment.attack_mirror_crop}
BACKGROUND = (16, 48)  # the query's background: its similarities ranked 17th..48th (beyond any candidate list)


def loaded(img: Image.Image, name: str) -> LoadedImage:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return load_image(buf.getvalue(), name)


def matrix(vectors: list[dict[int, float]], size: int) -> sparse.csr_matrix:
    rows, cols, vals = [], [], []
    for i, v in enumerate(vectors):
        rows += [i] * len(v)
        cols += list(v)
        vals += list(v.values())
    return sparse.csr_matrix((vals, (rows, cols)), shape=(len(vectors), size))


def wanted(n_words: int) -> int:
    return min(16, max(4, round(4 * 250 / max(n_words, 1))))  # Matcher.words_wanted, shipped settings


def statistics(sims: np.ndarray, n_words: list[int], shared: np.ndarray, chance: np.ndarray
               ) -> list[list[dict[str, float]]]:
    """Per query, per candidate (best first): the reference index and the gate statistics.
    ``shared``: distinct words in common; ``chance``: how many a random image of the candidate's
    size would share (the a contrario statistic: -log10 of the chance of sharing that many, less
    log10 of the index size -- >= 0: under one such chance match expected in the whole index)."""
    out = []
    for row, n, k, lam in zip(sims, n_words, shared, chance, strict=True):
        order = np.argsort(-row, kind="stable")
        bg = row[order[BACKGROUND[0]:BACKGROUND[1]]]
        mu, sd = float(bg.mean()), float(bg.std()) + 1e-6
        out.append([{"ref": int(r), "sim": float(row[r]), "ratio": float(row[r]) / (mu + 1e-6),
                     "z": (float(row[r]) - mu) / sd,
                     "acontrario": float(-poisson.logsf(k[r] - 1, lam[r]) / np.log(10) - np.log10(len(row)))}
                    for r in order[:wanted(n)]])
    return out


def word_sets(vectors: list[dict[int, float]], size: int) -> sparse.csr_matrix:
    return matrix([{w: 1.0 for w in v} for v in vectors], size)


def shared_and_chance(queries: list[dict[int, float]], refs: list[dict[int, float]], freq: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distinct words in common, and the count expected by chance: each query word w is in a
    reference of m words with probability freq[w] * m / (words of an average image)."""
    shared = (word_sets(queries, len(freq)) @ word_sets(refs, len(freq)).T).toarray()
    q_mass = np.array([freq[list(q)].sum() if q else 0.0 for q in queries])
    r_scale = np.array([len(r) for r in refs]) / freq.sum()
    return shared, np.outer(q_mass, r_scale) + 1e-9


def main(data: str, png: str | None = None) -> None:
    geometry = GeometricSignal()
    vocabulary = Vocabulary.load()
    signal = VisualWordsSignal(vocabulary, geometry)
    freq = np.exp(-vocabulary.idf.astype(np.float64))  # the share of photos holding each word
    originals = sorted(Path(data, "originals").glob("*.jpg"))
    sources = [Image.open(f).convert("RGB") for f in originals[-120:]]
    refs_files = originals[-120:] + sorted(Path(data, "distractors").glob("*"))[:300]
    refs = [signal.from_local(f) for f in geometry.compute([loaded(Image.open(f).convert("RGB"), "r")
                                                           for f in refs_files])]
    R = matrix(refs, signal.size)
    queries: dict[str, list[list[dict[str, float]]]] = {}
    uniques = [signal.from_local(f) for f in geometry.compute([loaded(Image.open(f).convert("RGB"), "u")
                                                              for f in originals[60:-120]])]
    queries["no copy"] = statistics((matrix(uniques, signal.size) @ R.T).toarray(), [len(u) for u in uniques],
                                    *shared_and_chance(uniques, refs, freq))
    for family, attack in FAMILIES.items():
        rng = np.random.default_rng(7 if family == "tight_crop" else 11)
        words = [signal.from_local(f) for f in geometry.compute([loaded(attack(p, rng), "q") for p in sources])]
        queries[family] = statistics((matrix(words, signal.size) @ R.T).toarray(), [len(w) for w in words],
                                     *shared_and_chance(words, refs, freq))
        print(family, "done", flush=True)

    levels = {"sim": [0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10],
              "ratio": [0.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0],
              "z": [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0],
              "acontrario": [-2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 6.0, 10.0]}
    results: dict[str, list[tuple[float, float, float, float]]] = {}
    for stat, taus in levels.items():
        print(f"\n| {stat} >= | no-copy images verified | words verifications / no-copy image | "
              + " | ".join(FAMILIES) + " |")
        results[stat] = []
        for tau in taus:
            unique_hit = np.mean([any(c[stat] >= tau for c in q) for q in queries["no copy"]])
            unique_cost = np.mean([sum(c[stat] >= tau for c in q) for q in queries["no copy"]])
            kept = {f: np.mean([any(c["ref"] == i and c[stat] >= tau for c in q)
                                for i, q in enumerate(queries[f])]) for f in FAMILIES}
            results[stat].append((tau, float(unique_hit), float(kept["tight_crop"]),
                                  float(np.mean([kept[f] for f in FAMILIES if f != "tight_crop"]))))
            print(f"| {tau:g} | {unique_hit:.3f} | {unique_cost:.2f} | " + " | ".join(f"{kept[f]:.3f}" for f in FAMILIES)
                  + " |", flush=True)
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for (stat, rows), style in zip(results.items(), ("o-", "s-", "^-", "D-"), strict=True):
            ax.plot([r[1] for r in rows], [r[2] for r in rows], style, label=f"gate on {stat}")
            for tau, x, y, _ in rows:
                ax.annotate(f"{tau:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel("images with no copy that still verify a words candidate")
        ax.set_ylabel("tight crops whose original is still verified")
        ax.set_title("Gating the visual-words candidates (photos outside the dev set)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
