"""Whether the visual words can gate the pHash/descriptor candidates too (issue #15, gating).

Session 15 gated the words candidates by how far their words similarity stands out of the query's
background (``VisualWordsSignal.background``) and found that the words are not what sends nearly
every image to verification: stage 1 does, because with untrained weights an unrelated image's
nearest neighbour gets a stage-1 probability inside the ambiguous band. This probe asks whether
the same statistic could spare those pairs: a band candidate is verified only if it stands out of
the query's words background too (``NDID_VISUAL_WORDS_BAND_RATIO``).

Two backgrounds: ``nearest``, the mean of the query's 17th..48th nearest (session 16; it rises
as the index grows), and ``sample``, the engine's since session 17: the mean of the query's
similarities ranked in their top 1/32..1/8 among a uniform sample of at most 256 references (a
quantile: it should not move with the index size), and ``higher``, the engine's since session
18: the higher of the two (the best of more unrelated images climbs past the quantile as the index
grows). ``exempt < words``: queries with fewer words keep every candidate (the engine exempts
those under half the SIFT keypoint budget, 250). ``band_words_sizes.py`` plots the share by index
size from the logs of several runs.

Photos outside the dev benchmark, as words_gate_probe.py: references = the last SOURCES (120) of
the originals + the first DISTRACTORS (300) distractors; copies = those sources attacked eight
ways (the same seeds); images with no copy in the index = originals 60..179 (neither the dev set
nor the attacks use them). The shipped untrained calibration, band, top-k, pHash radius and
verification cap. Per gate: the share of no-copy images that still verify something (band or
words candidates), the pairs they verify, and the share of copies whose original is still
verified. 42 distractors give the dev benchmark's 162 references; 115 distractors with 47
sources give 162 with the 420's mix.

    NDID_WEIGHTS_MODE=random .venv/bin/python docs/analysis/band_words_probe.py ../shared/data [DISTRACTORS [SOURCES [PNG]]]
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
from ndid_tasks.signals.visual_words import VisualWordsSignal

sys.path.insert(0, str(Path(__file__).parent))
from words_gate_probe import FAMILIES, loaded, matrix, wanted

BACKGROUND, MIN_BACKGROUND = (16, 48), 8  # VisualWordsSignal's background before session 17


def ratios(sims: np.ndarray) -> np.ndarray:
    """Each reference's words similarity over the query's background (the mean of its 17th..48th
    nearest with any word in common, as Milvus returns them); inf where the background is too short
    (every candidate then stands). No image here has copies indexed, so no group is collapsed."""
    found = np.sort(sims[sims > 0])[::-1]
    background = found[BACKGROUND[0]:BACKGROUND[1]]
    if len(background) < MIN_BACKGROUND:
        return np.full(len(sims), np.inf)
    return sims / float(np.mean(background))


def sample_ratios(sims: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Each reference's words similarity over session 17's background: its similarities to a
    uniform sample of the references ranked in their top 1/32..1/8 (VisualWordsSignal.background)."""
    level = VisualWordsSignal.background(list(sims[sample]))
    return np.full(len(sims), np.inf) if level is None else sims / max(level, 1e-9)


def higher_ratios(sims: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Over the higher of the two backgrounds (session 18): the sample's quantile holds its level
    as the index grows, but the best of more unrelated images climbs above any fixed level; the
    17th..48th nearest climb with them."""
    return np.minimum(ratios(sims), sample_ratios(sims, sample))



def main(data: str, distractors: int = 300, n_sources: int = 120, png: str | None = None) -> None:
    settings = Settings.from_env().replace(milvus_uri=str(Path(tempfile.mkdtemp()) / "unused.db"))
    engine = Engine(settings)
    cal = engine.calibration
    band = decision_band(cal.band, cal.threshold)
    k, radius, cap = settings.resnet_top_k, settings.phash_radius, settings.stage2_max_candidates

    def describe(pictures, tag):
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
    sample = np.random.default_rng(0).choice(len(refs), min(VisualWordsSignal.SAMPLE, len(refs)), replace=False)

    def outcomes(pictures, truth):
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
            rat = {"nearest": ratios(sims[n]), "sample": sample_ratios(sims[n], sample),
                   "higher": higher_ratios(sims[n], sample)}
            top = [int(j) for j in np.argsort(-sims[n], kind="stable")[:wanted(len(words[n]))] if sims[n][j] > 0]
            out.append({"band": [(j, p1[j], {b: r[j] for b, r in rat.items()}) for j in inside],
                        "words": [(j, {b: r[j] for b, r in rat.items()}) for j in top],
                        "truth": truth[n], "n": len(words[n])})
        return out

    queries = {"no copy": outcomes([Image.open(f).convert("RGB") for f in originals[60:-120]], [None] * 120)}
    for family, attack in FAMILIES.items():
        rng = np.random.default_rng(7 if family == "tight_crop" else 11)
        queries[family] = outcomes([attack(p, rng) for p in sources], list(range(len(sources))))
        print(family, "done", flush=True)
    for f, qs in queries.items():
        ns = np.array([q["n"] for q in qs])
        print(f, "words per image: pct 5/25/50/75", np.percentile(ns, [5, 25, 50, 75]).round(0), flush=True)

    def verified(q, bg, r, words_r, exempt):
        if q["n"] < exempt:
            return {j for j, p, x in q["band"]} | {j for j, x in q["words"]}
        chosen = {j for j, p, x in q["band"] if r == 0 or x[bg] >= r}
        return chosen | {j for j, x in q["words"] if words_r == 0 or x[bg] >= words_r}

    print(f"refs {len(refs)} band {band}, threshold {cal.threshold:.3f}, top-k {k}, radius {radius}, cap {cap}")
    rows = []
    print("| background | band r | words r | exempt < words | no-copy verifying | pairs | " + " | ".join(FAMILIES) + " |")
    for bg in ("nearest", "sample", "higher"):
        for r, words_r in [(0, 0), (1.25, 1.5), (1.25, 1.75), (1.5, 1.75)]:
            for exempt in (0, 150, 250):
                if r == 0 and exempt:
                    continue
                hit = np.mean([bool(verified(q, bg, r, words_r, exempt)) for q in queries["no copy"]])
                cost = np.mean([len(verified(q, bg, r, words_r, exempt)) for q in queries["no copy"]])
                kept = {f: np.mean([q["truth"] in verified(q, bg, r, words_r, exempt) for q in queries[f]]) for f in FAMILIES}
                print(f"| {bg} | {r:g} | {words_r:g} | {exempt} | {hit:.3f} | {cost:.2f} | "
                      + " | ".join(f"{kept[f]:.3f}" for f in FAMILIES) + " |", flush=True)
                rows.append((bg, r, words_r, exempt, hit, kept))
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True)
        for bg, exempt, style in (("nearest", 250, "o:"), ("sample", 250, "s--"), ("higher", 250, "D-")):
            sel = [row for row in rows if row[0] == bg and row[3] in (exempt, 0) and (row[1] == 0 or row[3] == exempt)]
            for ax, fams, title in ((axes[0], ["tight_crop"], "tight crops"),
                                    (axes[1], [f for f in FAMILIES if f != "tight_crop"], "the other seven families")):
                ys = [np.mean([row[5][f] for f in fams]) for row in sel]
                ax.plot([row[4] for row in sel], ys, style,
                        label=f"{bg} background" + (f", queries under {exempt} words exempt" if exempt else ""))
                for row, y in zip(sel, ys, strict=True):
                    ax.annotate(f"{row[1]:g}/{row[2]:g}", (row[4], y), fontsize=6, xytext=(2, 2), textcoords="offset points")
                ax.set_title(f"{title}: original still verified", fontsize=9)
        for ax in axes:
            ax.set_xlabel("images with no copy that still verify something")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"Words gates at {len(refs)} references (labels: band / words ratio)", fontsize=10)
        fig.tight_layout()
        fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300, int(sys.argv[3]) if len(sys.argv) > 3 else 120,
         sys.argv[4] if len(sys.argv) > 4 else None)
