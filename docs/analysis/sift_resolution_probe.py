"""Verified inliers of tight crops and of same-scene pairs at two SIFT resolutions (issue #15).

Offline probe behind NDID_SIFT_MAX_SIDE=384: photos the dev benchmark does not use (the last 120
of ``originals``, sorted; ``ndid bench make --max-originals 60`` takes the first 60). Each photo
gives a tight crop (5-15 % of the frame, as ``ndid bench make`` makes them) verified against the
photo, a same-scene pair (two windows sharing no pixels) and an unrelated pair. Writes JSON.

    .venv/bin/python docs/analysis/sift_resolution_probe.py ../shared/data/originals /tmp/sift_probe.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ndid_tasks import augment
from ndid_tasks.images import LoadedImage, load_image
from ndid_tasks.signals.geometry import GeometricSignal


def loaded(img: Image.Image) -> LoadedImage:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return load_image(buf.getvalue(), "probe")


def main(folder: str, out: str, sides: tuple[int, ...] = (256, 384)) -> None:
    files = sorted(Path(folder).glob("*.jpg"))[-120:]
    photos = [Image.open(f).convert("RGB") for f in files]
    result: dict[str, dict[str, list[int]]] = {}
    for side in sides:
        geometry = GeometricSignal(500, side)
        rng = np.random.default_rng(7)  # the same crops and windows for every side

        def inliers(query: Image.Image, ref: Image.Image) -> int:
            q, r = geometry.compute([loaded(query), loaded(ref)])
            return geometry.verify_many(q, [r])[0]

        tight, scene, unrelated = [], [], []
        for i, photo in enumerate(photos):
            crop = augment.attack_tight_crop(photo, rng)
            view_a, view_b = augment.same_scene_pair(photo, rng)
            tight.append(inliers(crop, photo))
            scene.append(inliers(view_b, view_a))
            unrelated.append(inliers(crop, photos[(i + 1) % len(photos)]))
        result[str(side)] = {"tight_crop": tight, "same_scene": scene, "unrelated": unrelated}
        t, s = np.array(tight), np.array(scene)
        print(f"{side} px: tight-crop inliers median {np.median(t):.1f}, >= 12: {(t >= 12).mean():.3f}, "
              f"above every same-scene pair: {(t > s.max()).mean():.3f}; same-scene 99th pct "
              f"{np.percentile(s, 99):.1f}, max {s.max()}; unrelated max {max(unrelated)}", flush=True)
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
