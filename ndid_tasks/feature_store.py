"""What geometric verification needs from an image, computed once at ingest and kept in S3.

A later task (a fresh process on any worker) verifies a new image against an earlier one with the
stored SIFT features instead of downloading and decoding the earlier image again. One small NPZ per
image (keypoints as float32, so a decision is the same whether the features came from here or from
pixels; descriptors as uint8: ~55 KB at 384 px), named by the image id, never pickled. Features
made with other SIFT settings are treated as missing (recomputed from pixels).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .config import Settings
from .signals import LocalFeatures
from .storage import S3Store

log = logging.getLogger(__name__)

PARALLEL_REQUESTS = 8


class FeatureStore:
    """Local features per image id under ``<features prefix>sift/``."""

    def __init__(self, settings: Settings) -> None:
        self.store = S3Store(settings)
        self.prefix = f"{settings.s3_features_prefix}sift/"
        self.params = settings.sift_params

    def key(self, image_id: str) -> str:
        digest = hashlib.sha256(image_id.encode()).hexdigest()[:40]
        return f"{self.prefix}{digest[:2]}/{digest}.npz"

    def pack(self, image_id: str, feats: LocalFeatures) -> bytes:
        buf = io.BytesIO()
        meta = json.dumps({"id": image_id, **self.params}).encode()
        np.savez(buf, meta=np.frombuffer(meta, np.uint8), points=feats.points.astype(np.float32),
                 descriptors=(feats.descriptors if feats.descriptors is not None else np.zeros((0, 128), np.uint8)))
        return buf.getvalue()

    def unpack(self, image_id: str, data: bytes) -> LocalFeatures | None:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes())
            if meta.get("id") != image_id or {k: meta.get(k) for k in self.params} != self.params:
                return None  # another image (hash collision) or other SIFT settings
            out = LocalFeatures(npz["points"].astype(np.float32), None)
            out.descriptors = npz["descriptors"] if len(npz["descriptors"]) else None
            return out

    def put_many(self, features: dict[str, LocalFeatures]) -> int:
        """Store features; returns the bytes written."""
        blobs = {image_id: self.pack(image_id, f) for image_id, f in features.items()}
        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            list(pool.map(lambda kv: self.store.put_bytes(self.key(kv[0]), kv[1]), blobs.items()))
        return sum(len(b) for b in blobs.values())

    def get_many(self, ids: Iterable[str]) -> dict[str, LocalFeatures]:
        """Stored features of these ids; an id without (usable) stored features is left out."""
        wanted = list(dict.fromkeys(ids))

        def fetch(image_id: str) -> LocalFeatures | None:
            try:
                return self.unpack(image_id, self.store.get_bytes(self.key(image_id)))
            except Exception as exc:  # noqa: BLE001 - missing or unreadable: recomputed from pixels
                if "NoSuchKey" not in str(exc) and "404" not in str(exc):
                    log.warning("stored features of %s unusable: %s", image_id, exc)
                return None

        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            found = dict(zip(wanted, pool.map(fetch, wanted), strict=True))
        return {k: v for k, v in found.items() if v is not None}
