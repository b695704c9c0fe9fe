"""What stage 1 sees: per image of a dev set, its candidates' stage-1 probabilities, the ResNet
cosines of its nearest refs and the full ranking's best (for gating_plot.py). An analysis that
reads the Matcher's internals, not a product path.

    NDID_WEIGHTS_MODE=random python docs/analysis/gating_probe.py BENCH_FOLDER OUT_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np

from ndid_tasks.benchmark.generator import read_ground_truth
from ndid_tasks.config import Settings
from ndid_tasks.images import load_image
from ndid_tasks.index import IndexedImage
from ndid_tasks.pipeline import Engine, local_items

folder = Path(sys.argv[1]); out = Path(sys.argv[2]); out.mkdir(exist_ok=True, parents=True)
s = Settings.from_env().replace(milvus_uri=str(out / "m.db"), milvus_collection_prefix="probe")
gt = read_ground_truth(folder)
eng = Engine(s)
items = local_items([folder / "refs"])
eng.warm_up()
recs = eng.ingest(items, run_id="p", run_at="p")
name = {i.id: Path(i.source).name for i in items}
m = eng.matcher()
cal = eng.calibration
print("band", m.band, "threshold", m.threshold, file=sys.stderr)
rows_out = []
K = s.resnet_top_k
def probe(image, before, kind, truth, fam):
    cands = m.candidates(image, before=before)
    pairs = m._pairs(image, cands)
    hits = m.index.search_many("resnet", [image.resnet], 2 * K + 1)[0]
    hits = [h for h in hits if h.id != image.id and (not before or (h.created_at, h.id) < (image.created_at, image.id))]
    cos = [h.score for h in hits]
    p1 = {c: cal.stage1.probability(f) for c, f in pairs}
    feats = dict(pairs)
    tp1 = [p1[c] for c in p1 if truth and name.get(c) == truth]
    scores = m.rank(image, cands, [], before=before)
    best = scores[0] if scores else None
    rows_out.append({"kind": kind, "fam": fam, "truth": truth, "n": len(pairs),
        "p1": sorted(p1.values(), reverse=True), "true_p1": (tp1[0] if tp1 else None),
        "cos": cos[:2 * K],
        "true_cos": next((h.score for h in hits if truth and name.get(h.id) == truth), None),
        "true_rank": next((k for k, h in enumerate(hits) if truth and name.get(h.id) == truth), None),
        "phd": {name.get(c): feats[c]["phash_distance"] for c in feats},
        "best": (name.get(best.candidate_id), best.probability, best.stage) if best else None})
# refs at ingest (as ingest sees them)
ids = [i.id for i in items]
R = eng.index.get_rows(ids, ["phash", "resnet", "created_at", "sha256"])
for i in items:
    r = R[i.id]
    im = IndexedImage(id=i.id, sha256=r["sha256"], source="", width=0, height=0, num_bytes=0, created_at=r["created_at"],
                      phash=np.asarray(r["phash"], np.float32), resnet=np.asarray(r["resnet"], np.float32))
    probe(im, True, "ref", None, "ref")
for rec in gt:
    p = folder / "queries" / rec["query"]
    pic = load_image(p.read_bytes(), "q:" + p.name)
    ph = eng.phash.compute([pic])[0]; rn = eng.resnet.compute([pic])[0]
    eng._loaded[pic.image_id] = pic
    im = IndexedImage(id=pic.image_id, sha256=pic.sha256, source="", width=pic.width, height=pic.height, num_bytes=0,
                      created_at=0, phash=ph, resnet=rn)
    probe(im, False, "query", rec["original"], rec["family"])
    eng.forget([pic.image_id])
(out / "probe.json").write_text(json.dumps({"threshold": m.threshold, "band": list(m.band), "rows": rows_out},
                                           default=float))
eng.close()
