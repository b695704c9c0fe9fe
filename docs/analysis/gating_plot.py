"""Plot what gating_probe.py measured: can the shipped stage-1 model settle uniques without losing copies?

Analysis of the dev set, not a fit: nothing here changes a shipped threshold.
    python docs/analysis/gating_plot.py PROBE_DIR/probe.json docs/gating_tradeoff.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

with open(sys.argv[1]) as f:
    probe = json.load(f)
rows, THRESHOLD = probe["rows"], probe["threshold"]  # the calibration's threshold the probe ran with
refs = [r for r in rows if r["kind"] == "ref"]  # each reference as ingest decides it (all unique)
# copies the full pipeline finds at the threshold, unturned (a rotated copy's own p1 is for the
# turned query, which the probe does not score, so the rotation family is left out)
found = [r for r in rows if r["truth"] and r["fam"] != "rotation" and r["best"]
         and r["best"][0] == r["truth"] and r["best"][1] >= THRESHOLD]
best_unique = np.array([r["p1"][0] if r["p1"] else 0.0 for r in refs])
true_copy = np.array([r["true_p1"] or 0.0 for r in found])
edges = np.linspace(0, 1, 101)
share = [float(np.mean(best_unique >= e)) for e in edges]
kept = [float(np.mean(true_copy >= e)) for e in edges]

fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
bins = np.linspace(0, 1, 26)
a.hist(best_unique, bins, alpha=0.6, label=f"unique refs at ingest: best candidate (n={len(refs)})")
a.hist(true_copy, bins, alpha=0.6, label=f"found copies: their original (n={len(found)})")
a.set_xlabel("stage-1 probability"); a.set_ylabel("images"); a.legend(fontsize=8)
a.set_title("stage 1 (pHash distance + ResNet cosine), untrained weights", fontsize=9)
b.plot(share, kept, marker=".", ms=3)
for e in (0.023, 0.3, 0.5, 0.6, 0.8):
    i = round(e * 100) if e >= 0.01 else 2
    b.annotate(f"edge {e:g}", (share[i], kept[i]), fontsize=7, xytext=(4, -10), textcoords="offset points")
b.axvline(0.30, color="grey", ls="--", lw=0.8); b.text(0.31, 0.72, "30 % target", fontsize=7, color="grey")
b.set_xlabel("share of unique images reaching verification"); b.set_ylabel("share of found copies kept")
b.set_title("raising the band's lower edge", fontsize=9); b.set_xlim(0, 1); b.set_ylim(0.7, 1.01)
fig.suptitle("Why stage 1 cannot gate at 30 % on the dev set (UNTRAINED weights)", fontsize=10)
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110)
print(json.dumps({"refs": len(refs), "found_copies": len(found),
                  "at_30pct": next((round(k, 3), round(e, 2)) for s, k, e in zip(share, kept, edges, strict=False) if s <= 0.30)}))
