"""The descriptor ablation: every ResNet-50 pooling, layer, input and whitening choice."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Settings
from ..images import load_image
from ..metrics import Prediction
from .evaluation import method_scores
from .generator import read_ground_truth
from .speed import machine

log = logging.getLogger(__name__)


def descriptor_ablation(settings: Settings, folder: str | Path, out: str | Path,
                        progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The ResNet-50 descriptor levers alone (no pHash, no verification): input framing, layer,
    GeM vs average pooling, flip symmetry, whitening. Nearest neighbour by cosine over refs; the
    whitening is fitted on the refs and their mirrors (the indexed corpus), never on queries."""
    import torch

    from ..signals import ResNetSignal, gem_pool, mirrored
    from ..weights import build_resnet50
    from ..whitening import fit_whitening, l2_normalise

    folder, out = Path(folder), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gt = read_ground_truth(folder)
    truth = {r["query"]: r["original"] for r in gt}
    family = {r["query"]: r["family"] for r in gt}
    ref_paths = sorted((folder / "refs").iterdir())
    paths = ref_paths + [folder / "queries" / r["query"] for r in gt]
    pics = [load_image(p.read_bytes(), p.name) for p in paths]
    n_refs = len(ref_paths)
    # pooled descriptors per (input, layer, p, mirrored): one forward pass per input and mirror
    parts: dict[tuple[str, str, float, bool], list[np.ndarray]] = {}
    layer4 = build_resnet50(settings).layer4.eval()  # the same (seeded or pretrained) weights
    for framing in ("center_crop", "squash"):
        signal = ResNetSignal(settings.replace(resnet_input=framing, resnet_layer="layer3"))
        body = signal.model  # conv1 .. layer3
        for flipped in (False, True):
            for start in range(0, len(pics), settings.embed_batch_size):
                batch = pics[start:start + settings.embed_batch_size]
                if flipped:
                    batch = mirrored(batch)
                dtype = next(body.parameters()).dtype
                with torch.inference_mode():
                    f3 = body.body(signal.preprocess(batch).to(dtype).contiguous(memory_format=torch.channels_last))
                    f4 = layer4(f3.float())
                for layer, fmap in (("layer3", f3), ("layer4", f4)):
                    for p in (1.0, 3.0):
                        parts.setdefault((framing, layer, p, flipped), []).append(gem_pool(fmap, p).numpy())
                if progress:
                    progress(len(batch))
    pooled = {k: np.concatenate(v) for k, v in parts.items()}
    rows = []
    ref_name = [p.name for p in ref_paths]
    queries = [r["query"] for r in gt]
    for framing, layer, p in [(f, layer, p) for f in ("center_crop", "squash") for layer in ("layer4", "layer3")
                              for p in (1.0, 3.0)]:
        for flip in (False, True):
            raw = l2_normalise(pooled[(framing, layer, p, False)] + (pooled[(framing, layer, p, True)] if flip else 0))
            for white in (0, 256):
                if white:
                    fit = np.concatenate([raw[:n_refs], l2_normalise(pooled[(framing, layer, p, True)][:n_refs]
                                                                     + (pooled[(framing, layer, p, False)][:n_refs] if flip else 0))])
                    w = fit_whitening(fit, "ablation", settings.weights_mode, dim=white)
                    vec = w.apply(raw)
                else:
                    vec = raw
                sims = vec[n_refs:] @ vec[:n_refs].T
                best = np.argmax(sims, axis=1)
                preds = [Prediction(q, ref_name[best[k]], float(sims[k, best[k]])) for k, q in enumerate(queries)]
                top10 = np.argsort(-sims, axis=1)[:, :10]
                row = {"input": framing, "layer": layer, "pooling": "avg" if p == 1.0 else f"gem{p:g}",
                       "flip_symmetric": flip, "whitening": f"pca{white}" if white else "none",
                       "dims": vec.shape[1], **method_scores(preds, truth)}
                for fam in sorted({family[q] for q in queries if truth[q]}):
                    idx = [k for k, q in enumerate(queries) if family[q] == fam]
                    row[f"{fam}_r1"] = round(float(np.mean([ref_name[best[k]] == truth[queries[k]] for k in idx])), 3)
                    row[f"{fam}_candidates10"] = round(float(np.mean(
                        [truth[queries[k]] in {ref_name[j] for j in top10[k]} for k in idx])), 3)
                rows.append(row)
    report = {"folder": str(folder), "weights_mode": settings.weights_mode, "untrained": settings.untrained,
              "rows": rows, "machine": machine()}
    (out / "descriptors.json").write_text(json.dumps(report, indent=2))
    fams = sorted({family[q] for q in queries if truth[q]})
    lines = [f"# ResNet-50 descriptor ablation — {'UNTRAINED (random weights)' if settings.untrained else 'pretrained'}",
             "", ("Nearest neighbour by cosine, descriptor alone (no pHash, no verification); whitening "
                 "fitted on refs + their mirrors."), "",
             "| input | layer | pooling | flip-sym | whitening | micro-AP | R@P99 | R@1 | " +
             " | ".join(f"{f} R@1 / cand@10" for f in fams) + " |", "|---" * (8 + len(fams)) + "|"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['layer']} | {r['pooling']} | {'yes' if r['flip_symmetric'] else 'no'} | "
                     f"{r['whitening']} | {r['micro_ap']:.3f} | {r['recall_at_p99']:.3f} | {r['recall_at_1']:.3f} | "
                     + " | ".join(f"{r[f + '_r1']:.2f} / {r[f + '_candidates10']:.2f}" for f in fams) + " |")
    (out / "descriptors.md").write_text("\n".join(lines) + "\n")
    report["markdown"] = str(out / "descriptors.md")
    return report
