"""The report: JSON, markdown and the pictures (PR curves, per-family recall)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import pr_curve
from ..signals.visual_words import VisualWordsSignal

log = logging.getLogger(__name__)


def write_report(report: dict[str, Any], results, truth, family, out: Path, wanted) -> None:
    missed: list[dict[str, Any]] = []
    if "full" in wanted:
        missed = _query_table(results, truth, family, out / "queries.csv", report["operating_point"]["threshold"])
        report["missed_copies"] = len(missed)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plots(results, truth, family, out, wanted, report)
    _misses_sheet(missed, Path(report["folder"]), out / "misses.png", untrained=report["untrained"])
    (out / "report.md").write_text(markdown(report))
    report["markdown"] = str(out / "report.md")


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# NDID benchmark — {'UNTRAINED (random weights)' if r['untrained'] else 'pretrained weights'}",
             "", (f"folder `{r['folder']}`, calibration `{r.get('calibration_version')}`, "
                  f"machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), torch {r['machine']['torch']}"),
             "", "## Accuracy (top-1 per query, one global threshold)", "",
             "| method | micro-AP | R@P99 | R@P95 | R@1 |", "|---|---|---|---|---|"]
    for m, e in r["accuracy"].items():
        o = e["overall"]
        lines.append(f"| {m} | {o['micro_ap']:.3f} | {o['recall_at_p99']:.3f} | {o['recall_at_p95']:.3f} | "
                     f"{o['recall_at_1']:.3f} |")
    fams = [k for k in next(iter(r["accuracy"].values())) if k != "overall"]
    lines += ["", "### Per family (micro-AP / R@P99 / R@1; each family with all negatives)", "",
              "| method | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
    for m, e in r["accuracy"].items():
        lines.append(f"| {m} | " + " | ".join(
            f"{e[f]['micro_ap']:.2f} / {e[f]['recall_at_p99']:.2f} / {e[f]['recall_at_1']:.2f}" for f in fams) + " |")
    op = r.get("operating_point") or {}
    if op:
        lines += ["", (f"**Shipped calibration's operating point** (threshold {op['threshold']:.3f}): precision "
                       f"{op['precision']:.3f}, recall {op['recall']:.3f}, false positives {op['false_positives']} "
                       f"({op['false_positives_on_negatives']} on {op['negatives']} negative queries).")]
    hn = r.get("hard_negatives")
    if hn:
        lines += ["", f"**Hard negatives** (same scene, no shared pixels; {hn['queries']} queries): "
                      f"{hn['full_false_positives']} called duplicate by the full pipeline at its threshold; "
                      f"top scores " + ", ".join(f"{m} {v}" for m, v in hn["max_score"].items()) + "."]
    rd = r.get("refs_called_duplicates")
    if rd:
        found = rd["called_duplicates"]
        head = f"**Refs among themselves** ({rd['refs']} refs, one per source photo): "
        if found:
            lines += ["", head + (f"{len(found)} decided a duplicate of an earlier ref while being ingested, each a "
                                  f"false positive on real photos unless the source folders hold copies of each other: "
                                  + "; ".join(f"{d['ref']} as a copy of {d['matched']} ({d['probability']:.3f}, "
                                              f"{d['stage']})" for d in found) + ".")]
        else:
            lines += ["", head + ("none decided a duplicate of an earlier ref while being ingested (any would be a "
                                  "false positive on real photos, unless the source folders hold copies of each other).")]
    rp = r.get("refs_pairwise")
    if rp:
        found, called = rp["above_chance"], sum(d["called_duplicate"] for d in rp["above_chance"])
        head = (f"**Refs matched pairwise** (all {rp['pairs']:,} pairs of the {rp['refs']} refs through the verifier, "
                f"whatever the gates let through): ")
        if found:
            lines += ["", head + (f"{len(found)} {'pair has' if len(found) == 1 else 'pairs have'} more than chance "
                                  f"inliers (6) -- two shots of one scene, a copy in the source folders, or chance at "
                                  f"7-8 -- each scored as a verified pair: " + "; ".join(
                                      f"{d['ref']} and {d['matched']} ({d['inliers']} inliers, {d['probability']:.3f})"
                                      for d in found) + f". **{called or 'None'} at or above the threshold.**")]
        else:
            lines += ["", head + "none has more than chance inliers (6): no two shots of one scene among them."]
    wr = r.get("whitening_refresh")
    if wr:
        lines += ["", (f"Queries answered with a whitening + calibration fitted on the indexed refs "
                      f"(`--fit-whitening`): whitening {wr['whitening']}, calibration {wr['calibration']}, "
                      f"{wr['corpus_descriptors']} corpus descriptors + {wr['bootstrap_images']} images with attacked "
                      f"copies, re-indexed {wr['reindex'].get('rows')} rows in {wr['seconds']} s.")]
    lines += [f"Stage 2 (verification, CLIP if calibrated) invoked for {100 * r['stage2_share_of_queries']:.1f} % of queries. Candidate recall per family: "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["candidate_recall"].items()) + "."]
    kinds = r.get("stage2_share_by_kind")
    if kinds:
        lines[-1] += " Stage 2 by kind of query: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in kinds.items()) + "."
    if "visual_words_searched" in r:
        lines[-1] += (f" Visual words: the {r['visual_words_searched']} nearest refs by words are candidates"
                      f" (up to {r.get('visual_words_max', r['visual_words_searched'])} for images with few words)."
                      if r["visual_words_searched"] else
                      " Visual words not searched (NDID_VISUAL_WORDS off, or Milvus Lite past NDID_VISUAL_WORDS_LITE_MAX_ROWS).")
    gates = {k: v for k, v in r.get("visual_words_ratios", {}).items() if v}
    if gates:
        lines[-1] += (" Verified only where they stand out of the query's words background: "
                      + ", ".join(f"{k.replace('_', ' ')} at {v:g}x" for k, v in gates.items()) + ".")
    crops = r.get("by_crop_area")
    if crops:
        lines += ["", "### Cropped copies by the area they keep (crop and tight-crop families)", "",
                  "| area kept | queries | candidate recall | R@1 | recall at the threshold |", "|---|---|---|---|---|"]
        lines += [f"| {c['kept_area']} | {c['queries']} | {c['candidate_recall']:.3f} | {c['recall_at_1']:.3f} | "
                  f"{c['recall_at_threshold']:.3f} |" for c in crops]
        lines += ["", "![cropped copies by area kept](crop_area.png)"]
    textures = r.get("by_crop_keypoints")
    if textures:
        lines += ["", ("The same copies by the SIFT keypoints the query has (a crop of flat sky or water gives "
                       "no local feature anything to place):"), "",
                  "| keypoints | queries | candidate recall | R@1 | recall at the threshold |", "|---|---|---|---|---|"]
        lines += [f"| {c['keypoints']} | {c['queries']} | {c['candidate_recall']:.3f} | {c['recall_at_1']:.3f} | "
                  f"{c['recall_at_threshold']:.3f} |" for c in textures]
    if "missed_copies" in r:
        lines += ["", (f"**Missed copies** (top 1 not the original, or under the threshold): {r['missed_copies']}; "
                       "every query's outcome is in `queries.csv`.")]
        if r["missed_copies"]:
            lines += ["", "![missed copies beside their originals](misses.png)"]
    s = r["speed"]
    lines += ["", "## Speed", "", "| figure | value |", "|---|---|",
              f"| end-to-end ingest (decode → signals → upsert → decide) | {s['ingest_images_per_s']} img/s |",
              (f"| once per process, not in the figure above (build ResNet-50"
               f"{' and compile it for this machine, once' if s.get('ndid_descriptor_compiled') == 'compiled' else ''}"
               f", start Milvus Lite) | {s.get('startup_s')} s |"),
              f"| bare ResNet-50 forward ({s['precision']}, same images, same run; median of {s.get('bare_resnet50_runs')}) | {s['bare_resnet50_images_per_s']} img/s |",
              (f"| NDID's ResNet stage in that ingest (preprocessing, layer3 GeM, whitening; encoder "
               f"{s.get('ndid_descriptor_compiled', 'eager')}) | {s.get('ndid_resnet_stage_images_per_s')} img/s |"),
              f"| ingest / bare model | **{s['ingest_to_bare_ratio']}** |",
              (f"| bare ResNet-50 with BatchNorm folded (stricter reference; NDID folds it too) | "
              f"{s.get('bare_resnet50_bn_folded_images_per_s')} img/s → ratio {s.get('ingest_to_bn_folded_ratio')} |"),
              f"| refs that reached stage 2 while being ingested | {100 * s.get('stage2_share_at_ingest', 0):.1f} %"
              + (f" (of those after the first {VisualWordsSignal.MIN_SAMPLE}, once the index gives its own"
                 f" words background: {100 * s['stage2_share_at_ingest_later']:.1f} %)"
                 if "stage2_share_at_ingest_later" in s else "") + " |",
              f"| query latency p50 / p95 | {r['query_latency_ms']['p50']} / {r['query_latency_ms']['p95']} ms |",
              f"| peak RSS | {s['peak_rss_mb']} MB |",
              (f"| index: searched vector bytes / image (+ raw descriptor kept for re-whitening; disk bytes / image) "
              f"| {s['index_vector_bytes_per_image']} (+{s.get('index_raw_descriptor_bytes_per_image', 0)}; "
              f"{s['index_disk_bytes_per_image']}) |"),
              f"| descriptor / whitening | {s.get('descriptor', s.get('resnet_descriptor'))} / {s.get('whitening')} |",
              f"| stage seconds | {s['stage_seconds']} |", "",
              "![PR curves](pr_curves.png)", "", "![per family](families.png)", ""]
    return "\n".join(lines)


def _plots(results, truth, family, out: Path, wanted, report) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = " (UNTRAINED weights)" if report["untrained"] else ""
    fig, ax = plt.subplots(figsize=(7, 5))
    for m in wanted:
        p, r, _ = pr_curve([res.predictions[m] for res in results.values() if m in res.predictions], truth)
        ax.plot(r, p, label=f"{m} (AP {report['accuracy'][m]['overall']['micro_ap']:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    _save(fig, ax, "Top-1 precision/recall" + tag, out / "pr_curves.png", fontsize=8, loc="lower left")
    fams = [k for k in next(iter(report["accuracy"].values())) if k != "overall"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(wanted), 1)
    for i, m in enumerate(wanted):
        ax.bar(np.arange(len(fams)) + i * width, [report["accuracy"][m][f]["recall_at_p99"] for f in fams],
               width, label=m)
    ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams)
    ax.set_ylabel("recall at precision 0.99")
    _save(fig, ax, "Per attack family" + tag, out / "families.png", fontsize=7, ncol=2)
    crops = report.get("by_crop_area")
    if crops:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        x = np.arange(len(crops))
        for i, (key, label) in enumerate((("candidate_recall", "candidate recall"), ("recall_at_1", "R@1"),
                                          ("recall_at_threshold", "recall at the threshold"))):
            ax.bar(x + (i - 1) * 0.27, [c[key] for c in crops], 0.27, label=label)
        ax.set_xticks(x, [f"{c['kept_area']}\n({c['queries']})" for c in crops])
        ax.set_xlabel("share of the original's area kept (queries)")
        ax.set_ylim(0, 1.25)
        _save(fig, ax, "Cropped copies, full pipeline" + tag, out / "crop_area.png", fontsize=8, loc="upper center",
              ncol=3)


def _query_table(results, truth, family, path: Path, threshold: float) -> list[dict[str, Any]]:
    """queries.csv: what the full pipeline did with every query; returns the copies it missed (top 1
    not the original, or under the threshold), lowest score first -- the ones worth looking at."""
    import csv

    rows = []
    for query, res in results.items():
        pred = res.predictions["full"]
        original = truth.get(query, "")
        rows.append({"query": query, "family": family[query], "original": original, "top1": pred.reference,
                     "score": round(float(pred.score), 4), "top1_correct": bool(original) and pred.reference == original,
                     "called_duplicate": bool(pred.reference) and pred.score >= threshold,
                     "candidate_hit": res.candidate_hit, "stage2": res.stage2_invoked, "keypoints": res.keypoints})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["query"])
        writer.writeheader()
        writer.writerows(rows)
    missed = [r for r in rows if r["original"] and not (r["top1_correct"] and r["called_duplicate"])]
    return sorted(missed, key=lambda r: (r["top1_correct"], r["score"]))


def _misses_sheet(missed: list[dict[str, Any]], folder: Path, path: Path, untrained: bool, limit: int = 12) -> None:
    """misses.png: each missed copy beside its original (and the wrong top 1, if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = missed[:limit]
    if not shown:
        path.unlink(missing_ok=True)  # not an earlier run's sheet beside this report
        return
    fig, axes = plt.subplots(len(shown), 3, figsize=(7.5, 2.3 * len(shown)), squeeze=False)
    for row, miss in zip(axes, shown, strict=True):
        panels = ((folder / "queries" / miss["query"], f"{miss['family']}: {miss['query'][:34]}"),
                  (folder / "refs" / miss["original"], "original" + ("" if miss["candidate_hit"] else " (not a candidate)")),
                  (folder / "refs" / miss["top1"] if miss["top1"] and not miss["top1_correct"] else None,
                   f"top 1 instead, p {miss['score']:.2f}" if not miss["top1_correct"] else f"top 1, p {miss['score']:.2f} < threshold"))
        for ax, (image_path, title) in zip(row, panels, strict=True):
            ax.axis("off")
            ax.set_title(title, fontsize=7)
            if image_path is not None and image_path.exists():
                with Image.open(image_path) as im:
                    im.thumbnail((240, 240))
                    ax.imshow(im.convert("RGB"))
    fig.suptitle(f"Missed copies ({len(shown)} of {len(missed)}: wrong top 1 first, then the lowest scores)"
                 + (" — UNTRAINED weights" if untrained else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _save(fig, ax, title: str, path: Path, **legend: Any) -> None:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- descriptor ablation
