"""Whether the visual words can gate the pHash/descriptor candidates too (issue #15, gating).

Session 15 gated the words candidates by how far their words similarity stands out of the query's
background (``VisualWordsSignal.background``) and found that the words are not what sends nearly
every image to verification: stage 1 does, because with untrained weights an unrelated image's
nearest neighbour gets a stage-1 probability inside the ambiguous band. This probe asks whether
the same statistic could spare those pairs: a band candidate is verified only if it stands out of
the query's words background too, or if its stage-1 probability reaches a bypass level (pairs
stage 1 is sure of keep their verification).

Photos outside the dev benchmark, as words_gate_probe.py: references = the last 120 originals +
the first 300 distractors (420); copies = those 120 attacked eight ways (the same seeds); images
with no copy in the index = originals 60..179 (neither the dev set nor the attacks use them). The
shipped untrained calibration, band, top-k, pHash radius and verification cap. Per gate: the
share of no-copy images that still verify something (band or words candidates), the pairs they
verify, and the share of copies whose original is still verified.

    NDID_WEIGHTS_MODE=random .venv/bin/python docs/analysis/band_words_probe.py ../shared/data [PNG [DISTRACTORS [SOURCES]]]

(DISTRACTORS: how many distractors join the references, 300 by default; SOURCES: how many of the
120 originals are attacked and indexed, 120 by default. 42 distractors give the dev benchmark's
162 references; 115 distractors with 47 sources give 162 with the 420's mix. A fifth argument
``sample`` judges against a fixed-size random sample of the index instead of the nearest.)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ndid_tasks.config import Settings
from ndid_tasks.features import stage1_features
from ndid_tasks.pipeline import Engine
from ndid_tasks.scoring import decision_band

sys.path.insert(0, str(Path(__file__).parent))
from words_gate_probe import FAMILIES, loaded, matrix, wanted

BACKGROUND, MIN_BACKGROUND = (16, 48), 8  # VisualWordsSignal.background


def ratios(sims: np.ndarray) -> np.ndarray:
    """Each reference's words similarity over the query's background (the mean of its 17th..48th
    nearest with any word in common, as Milvus returns them); inf where the background is too short
    (every candidate then stands). No image here has copies indexed, so no group is collapsed."""
    found = np.sort(sims[sims > 0])[::-1]
    background = found[BACKGROUND[0]:BACKGROUND[1]]
    if len(background) < MIN_BACKGROUND:
        return np.full(len(sims), np.inf)
    return sims / float(np.mean(background))


SAMPLE, SAMPLE_RANKS = 128, (4, 16)  # the alternative background: a fixed-size random sample of the index


def sample_ratios(sims: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Each reference's words similarity over the mean of the query's 5th..16th nearest among a fixed
    random sample of 128 references (the same ranks by share as 17th..48th of 420): a level that
    should not move with the index size."""
    found = np.sort(sims[sample])[::-1]
    return sims / max(float(np.mean(found[SAMPLE_RANKS[0]:SAMPLE_RANKS[1]])), 1e-9)


def main(data: str, png: str | None = None, distractors: int = 300, n_sources: int = 120,
         background: str = "nearest") -> None:
    settings = Settings.from_env().replace(milvus_uri=str(Path(tempfile.mkdtemp()) / "unused.db"))
    engine = Engine(settings)
    cal = engine.calibration
    band = decision_band(cal.band, cal.threshold)
    k, radius, cap = settings.resnet_top_k, settings.phash_radius, settings.stage2_max_candidates

    def describe(pictures: list[Image.Image], tag: str):
        images = [loaded(p, f"{tag}{n}") for n, p in enumerate(pictures)]
        out_p, out_r, out_w = [], [], []
        for i in range(0, len(images), 32):
            batch = images[i:i + 32]
            out_p.append(engine.phash.compute(batch))
            out_r.append(engine.resnet.compute(batch))
            out_w += [engine.words.from_local(f) for f in engine.geometry.compute(batch)]
        return np.concatenate(out_p), np.concatenate(out_r), out_w

    originals = sorted(Path(data, "originals").glob("*.jpg"))
    sources = [Image.open(f).convert("RGB") for f in originals[-120:][:n_sources]]
    refs = sources + [Image.open(f).convert("RGB") for f in sorted(Path(data, "distractors").glob("*"))[:distractors]]
    ref_p, ref_r, ref_w = describe(refs, "r")
    R = matrix(ref_w, engine.words.size)
    sample = np.random.default_rng(0).choice(len(refs), min(SAMPLE, len(refs)), replace=False)

    def outcomes(pictures: list[Image.Image], truth: list[int | None]) -> list[dict]:
        """Per query: its band candidates (stage-1 p, words ratio), its words candidates' ratios,
        and which of them is its original."""
        ph, rn, words = describe(pictures, "q")
        sims = (matrix(words, engine.words.size) @ R.T).toarray()
        out = []
        for n in range(len(pictures)):
            cos = ref_r @ rn[n]
            ham = (ref_p != ph[n]).sum(axis=1)
            by_hash = [int(j) for j in np.argsort(ham, kind="stable")[:16] if ham[j] <= radius]
            cands = list(dict.fromkeys([int(j) for j in np.argsort(-cos, kind="stable")[:k]] + by_hash))
            p1 = {j: cal.stage1.probability(stage1_features(ph[n], ref_p[j], rn[n], ref_r[j])) for j in cands}
            inside = sorted((j for j in cands if band[0] <= p1[j] <= band[1]), key=lambda j: -p1[j])[:cap]
            ratio = ratios(sims[n]) if background == "nearest" else sample_ratios(sims[n], sample)
            top = [int(j) for j in np.argsort(-sims[n], kind="stable")[:wanted(len(words[n]))] if sims[n][j] > 0]
            out.append({"band": [(j, p1[j], ratio[j]) for j in inside], "words": [(j, ratio[j]) for j in top],
                        "truth": truth[n]})
        return out

    queries = {"no copy": outcomes([Image.open(f).convert("RGB") for f in originals[60:-120]], [None] * 120)}
    for family, attack in FAMILIES.items():
        rng = np.random.default_rng(7 if family == "tight_crop" else 11)
        queries[family] = outcomes([attack(p, rng) for p in sources], list(range(len(sources))))
        print(family, "done", flush=True)

    def verified(q: dict, r: float, bypass: float, words_r: float) -> set[int]:
        chosen = {j for j, p, x in q["band"] if r == 0 or x >= r or p >= bypass}
        return chosen | {j for j, x in q["words"] if words_r == 0 or x >= words_r}

    print(f"band {band}, threshold {cal.threshold:.3f}, top-k {k}, radius {radius}, cap {cap}")
    header = "| band gate: ratio >= / or p >= | words ratio >= | no-copy images verifying | pairs / no-copy image | "
    print(header + " | ".join(FAMILIES) + " |")
    rows = []
    for r, bypass in [(0, 1), (1.1, 1.01), (1.25, 1.01), (1.5, 1.01), (1.75, 1.01), (1.25, 0.9), (1.25, 0.8)]:
        for words_r in (0.0, 1.5, 1.75, 2.0):
            hit = np.mean([bool(verified(q, r, bypass, words_r)) for q in queries["no copy"]])
            cost = np.mean([len(verified(q, r, bypass, words_r)) for q in queries["no copy"]])
            kept = {f: np.mean([q["truth"] in verified(q, r, bypass, words_r) for q in queries[f]]) for f in FAMILIES}
            rows.append((r, bypass, words_r, hit, kept))
            print(f"| {r:g} / {bypass:g} | {words_r:g} | {hit:.3f} | {cost:.2f} | "
                  + " | ".join(f"{kept[f]:.3f}" for f in FAMILIES) + " |", flush=True)
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True)
        for words_r, style in ((0.0, "o-"), (1.5, "^:"), (1.75, "s--"), (2.0, "D-.")):
            sel = [row for row in rows if row[2] == words_r and row[1] >= 1]
            for ax, fams, title in ((axes[0], ["tight_crop"], "tight crops"),
                                    (axes[1], [f for f in FAMILIES if f != "tight_crop"], "the other seven families")):
                ax.plot([row[3] for row in sel], [np.mean([row[4][f] for f in fams]) for row in sel], style,
                        label=f"words candidates: ratio >= {words_r:g}" if words_r else "words candidates: all")
                for row in sel:
                    ax.annotate(f"{row[0]:g}", (row[3], np.mean([row[4][f] for f in fams])), fontsize=6,
                                xytext=(2, 2), textcoords="offset points")
                ax.set_title(f"{title}: original still verified", fontsize=9)
        for ax in axes:
            ax.set_xlabel("images with no copy that still verify something")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Band candidates verified only where they stand out in the words (labels: ratio)", fontsize=10)
        fig.tight_layout()
        fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None, int(sys.argv[3]) if len(sys.argv) > 3 else 300,
         int(sys.argv[4]) if len(sys.argv) > 4 else 120, sys.argv[5] if len(sys.argv) > 5 else "nearest")
