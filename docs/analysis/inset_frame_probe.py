"""Whether a picture pasted inside another one can be found by its frame (issue #15, session 26).

Picture in picture (``augment.attack_picture_in_picture``: a screenshot of a post, a photo on a web
page) puts the original, shrunk, anywhere inside a never-indexed photo. The whole image's signals
see mostly the other photo, and no fixed view (quarters, halves) holds the inset. But a pasted
picture has a frame: four straight lines along which the image changes at once, all along their
length. Per query: whether such a rectangle is found (``PHashSignal._inset_boxes``), and the
Hamming distance between the pHash of what the best one holds (the ``INSET`` view) and the
original's; also whether one of the best two is within the tight radius. Then the false candidates it could add: the rectangles found in the references (photos
with no inset) against every other reference's pHash.

Photos outside the dev set: originals 240..299 (the outside set's), canvases and references from
distractors 430..559; the benchmark's own generator, 3 insets per original.

    .venv/bin/python docs/analysis/inset_frame_probe.py ../shared/data
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from ndid_tasks.augment import attack_picture_in_picture
from ndid_tasks.signals.phash import PHashSignal

sys.path.insert(0, str(Path(__file__).parent))
from collage_layouts_probe import loaded, nearest_other


def main(data: str) -> None:
    sig, rng = PHashSignal(), np.random.default_rng(5)
    originals = [Image.open(p).convert("RGB") for p in sorted(Path(data, "originals").glob("*.jpg"))[240:300]]
    pool = [Image.open(p).convert("RGB") for p in sorted(Path(data, "distractors").glob("*"))[430:560]]
    inset = PHashSignal.VIEWS.index(PHashSignal.INSET)
    bits, found, second, spent = [], 0, 0, 0.0
    for img in originals:
        own = sig.compute([loaded(img)])[0]
        for _ in range(3):
            pic = loaded(attack_picture_in_picture(img, pool, rng))
            t0 = time.perf_counter()
            boxes = PHashSignal._inset_boxes(pic.image, count=2)
            spent += time.perf_counter() - t0
            found += bool(boxes)
            bits.append(int(np.count_nonzero(sig.views([pic])[0, inset] != own)))
            grey = pic.image.convert("L")
            second += any(np.count_nonzero(imagehash.phash(grey.crop(b)).hash.flatten() != own) <= 12 for b in boxes)
    bits_a = np.array(bits)
    print(f"{len(bits)} insets: frame found {found / len(bits):.3f}; bits to the original: median "
          f"{np.median(bits_a):.0f}, within 12: {np.mean(bits_a <= 12):.3f} (the best 2 frames: "
          f"{second / len(bits):.3f}); finding the frame {1000 * spent / len(bits):.1f} ms")
    refs = originals + pool
    pics = [loaded(r) for r in refs]
    whole = np.array(sig.compute(pics))
    with_box = np.array([bool(PHashSignal._inset_boxes(p.image)) for p in pics])
    nearest = nearest_other(sig.views(pics)[:, [inset]], whole)
    print(f"{len(refs)} references (no inset): a frame found in {with_box.mean():.3f}; what it holds to another "
          f"reference: min {nearest[with_box].min() if with_box.any() else '-'} bits, within 12: "
          f"{np.mean(nearest[with_box] <= 12) if with_box.any() else 0:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
