"""Would visual-words similarity let stage 1 gate? (issue #15; measurement only, nothing shipped)

Photos outside the dev benchmark (the last 120 of ``originals``, sorted): 80 are refs, each attacked
six ways (positives: the copy against its photo); the other 40 are unique queries, paired with
their 5 nearest refs by the ResNet cosine (what stage 1 sees for a unique image). Prints each
stage-1 signal's ROC AUC, per attack, and the words similarity's percentiles.

    .venv/bin/python docs/analysis/words_gating_probe.py ../shared/data/originals
"""
import io
import sys

import numpy as np
from pathlib import Path
from PIL import Image
from ndid_tasks import augment
from ndid_tasks.config import Settings
from ndid_tasks.images import load_image
from ndid_tasks.pipeline import Engine
from sklearn.metrics import roc_auc_score
files = sorted(Path(sys.argv[1] if len(sys.argv) > 1 else '../shared/data/originals').glob('*.jpg'))[-120:]
imgs = [Image.open(f).convert('RGB') for f in files]
def li(im, name):
    b = io.BytesIO(); im.save(b, 'PNG'); return load_image(b.getvalue(), name)
A, B = imgs[:80], imgs[80:]
rng = np.random.default_rng(3)
fams = {'crop': augment.attack_crop, 'jpeg': augment.attack_jpeg, 'tight': augment.attack_tight_crop,
        'print': augment.attack_print_scan, 'text': augment.attack_text_overlay, 'thumb': augment.attack_thumbnail}
e = Engine(Settings(weights_mode='random', state_dir='/tmp/ndid_words_probe'))
refs = [li(im, f'r{i}') for i, im in enumerate(A)]
def sig(pics):
    ph = np.array(e.phash.compute(pics)); rs = e.resnet.whiten(e.resnet.compute_raw(pics))
    w = [e.words.from_local(f) for f in e.geometry.compute(pics)]
    return ph, np.asarray(rs), w
rph, rrs, rw = sig(refs)
def wsim(a, b): return sum(v * b.get(k, 0.0) for k, v in a.items())
rows = []  # (label, fam, phash_d, cos, words)
for fam, att in fams.items():
    qs = [li(att(im, rng), f'{fam}{i}') for i, im in enumerate(A)]
    qph, qrs, qw = sig(qs)
    for i in range(len(qs)):
        rows.append((1, fam, np.abs(qph[i].astype(int) - rph[i].astype(int)).sum() / 64 if qph.ndim == 2 else 0, float(qrs[i] @ rrs[i]), wsim(qw[i], rw[i])))
negs = [li(im, f'n{i}') for i, im in enumerate(B)]
nph, nrs, nw = sig(negs)
for i in range(len(negs)):
    cos = nrs[i] @ rrs.T
    for j in np.argsort(-cos)[:5]:  # a unique's 5 nearest refs: what stage 1 sees for it
        rows.append((0, 'neg', np.abs(nph[i].astype(int) - rph[j].astype(int)).sum() / 64 if nph.ndim == 2 else 0, float(cos[j]), wsim(nw[i], rw[j])))
y = np.array([r[0] for r in rows]); fam = np.array([r[1] for r in rows]); X = np.array([r[2:] for r in rows], float)
print('phash shape', rph.shape)
for k, name in enumerate(['phash_d', 'cos', 'words']):
    s = -X[:, k] if k == 0 else X[:, k]
    print(name, 'AUC all', round(roc_auc_score(y, s), 3), ' per fam:', {f: round(roc_auc_score(y[(fam == f) | (y == 0)], s[(fam == f) | (y == 0)]), 3) for f in fams})
neg = X[y == 0]
print('neg words pct 50/95/99/max', np.percentile(neg[:, 2], [50, 95, 99, 100]).round(3))
for f in fams: print(f, 'pos words pct 5/25/50', np.percentile(X[fam == f][:, 2], [5, 25, 50]).round(3))
