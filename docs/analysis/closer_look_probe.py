"""Inliers of tight crops, same-scene pairs and unrelated pairs with and without the closer look
(issue #15): a weak match whose affine map puts one image into a small window of the other is
verified again on that window at full resolution (GeometricSignal.closer_look).

Photos the dev benchmark does not use (the last 120 of ``originals``, sorted, as in
sift_resolution_probe.py, with the same crops and windows); the shipped SIFT settings. Writes JSON.

    .venv/bin/python docs/analysis/closer_look_probe.py ../shared/data/originals /tmp/closer_look.json
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ndid_tasks import augment
from ndid_tasks.config import Settings
from ndid_tasks.images import load_image
from ndid_tasks.signals.geometry import GeometricSignal


def encoded(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def main(folder: str, out: str) -> None:
    settings = Settings()
    geometry = GeometricSignal.from_settings(settings)
    files = sorted(Path(folder).glob("*.jpg"))[-120:]
    photos = [Image.open(f).convert("RGB") for f in files]
    rng = np.random.default_rng(7)  # the crops and windows of sift_resolution_probe.py
    result: dict[str, dict[str, list[float]]] = {k: {"plain": [], "closer": [], "ms": [], "looked": []}
                                                 for k in ("tight_crop", "same_scene", "unrelated")}

    def measure(kind: str, query: Image.Image, ref: Image.Image) -> None:
        q_data, r_data = encoded(query), encoded(ref)
        q, r = geometry.compute([load_image(q_data, "q"), load_image(r_data, "r")])
        full = {None: load_image(q_data, "q", working_size=settings.closer_look_side).image,
                0: load_image(r_data, "r", working_size=settings.closer_look_side).image}
        looked = []

        def pixels(k):
            looked.append(k)
            return full[k]

        plain = geometry.verify_many(q, [r])[0]
        t0 = time.perf_counter()
        closer = geometry.verify_many(q, [r], pixels=pixels)[0]
        row = result[kind]
        row["plain"].append(plain)
        row["closer"].append(closer)
        row["ms"].append((time.perf_counter() - t0) * 1000)
        row["looked"].append(len(looked))

    for i, photo in enumerate(photos):
        crop = augment.attack_tight_crop(photo, rng)
        view_a, view_b = augment.same_scene_pair(photo, rng)
        measure("tight_crop", crop, photo)
        measure("same_scene", view_b, view_a)
        measure("unrelated", crop, photos[(i + 1) % len(photos)])
        if (i + 1) % 20 == 0:
            print(f"{i + 1}/{len(photos)} photos", flush=True)
    for kind, row in result.items():
        p, c = np.array(row["plain"]), np.array(row["closer"])
        print(f"{kind:10s} median {np.median(p):.1f} -> {np.median(c):.1f}; >= 12: {(p >= 12).mean():.3f} -> "
              f"{(c >= 12).mean():.3f}; max {p.max()} -> {c.max()}; looked closer {np.mean(row['looked']):.2f}, "
              f"{np.mean(row['ms']):.1f} ms/pair")
    t = np.array(result["tight_crop"]["closer"])
    s = np.array(result["same_scene"]["closer"])
    t0, s0 = np.array(result["tight_crop"]["plain"]), np.array(result["same_scene"]["plain"])
    print(f"tight crops above every same-scene pair: {(t0 > s0.max()).mean():.3f} -> {(t > s.max()).mean():.3f}")
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
