"""Visual words: the stored SIFT features of an image as a sparse tf-idf vector, a candidate source.

Why: a tight crop (5-15 % of the frame) shares almost nothing with its original's global
descriptor or pHash, so the original is often not among the candidates at all, while geometric
verification would confirm it (measured: verified against every ref, tight-crop R@1 0.85 where the
candidate search gives 0.50). Its SIFT keypoints are a subset of the original's, and SIFT is scale
invariant, so a bag of visual words -- each RootSIFT descriptor assigned to the nearest of 4,096
centroids, sqrt term frequency x idf, L2-normalised (Sivic & Zisserman's Video Google; Arandjelovic
& Zisserman's RootSIFT) -- ranks the original near the top for ~3 in 4 tight crops. The vector is
sparse (~270 of 4,096 words), searched by inner product in Milvus' sparse inverted index.

The vocabulary is data, like a whitening: an NPZ (float16 centroids, idf, JSON metadata) loaded with
``allow_pickle=False``, fitted by ``ndid words fit`` on generic photos (unsupervised k-means; no
labels, no benchmark images).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..images import LoadedImage
from .base import Signal
from .geometry import GeometricSignal, LocalFeatures

SCHEMA = "ndid.visual_words/1"
PACKAGED = "visual_words_4096.npz"

SparseWords = dict[int, float]  # word -> weight, L2-normalised (Milvus' sparse vector format)


class VocabularyError(ValueError):
    """A vocabulary file is missing or malformed."""


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise, then square root (Hellinger kernel; better words than raw SIFT)."""
    d = descriptors.astype(np.float32)
    d /= d.sum(axis=1, keepdims=True) + 1e-7
    return np.sqrt(d)


class Vocabulary:
    """k RootSIFT centroids and their idf weights."""

    def __init__(self, centroids: np.ndarray, idf: np.ndarray, meta: dict[str, Any]) -> None:
        if centroids.ndim != 2 or centroids.shape[1] != 128 or idf.shape != (len(centroids),):
            raise VocabularyError(f"a vocabulary needs (k, 128) centroids and k idf weights, got "
                                  f"{centroids.shape} and {idf.shape}")
        self.centroids = centroids.astype(np.float32)
        self.idf = idf.astype(np.float32)
        self.meta = meta
        self._norms = (self.centroids * self.centroids).sum(axis=1)

    def __len__(self) -> int:
        return len(self.centroids)

    @property
    def version(self) -> str:
        """Content hash: an index holds the words of one vocabulary (its collection is named by it)."""
        digest = hashlib.sha256(self.centroids.astype(np.float16).tobytes() + self.idf.tobytes()).hexdigest()
        return f"vw{len(self)}-{digest[:10]}"

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """Nearest centroid of each (RootSIFT) descriptor: one matrix product (~3 ms for 500)."""
        return (self._norms[None, :] - 2.0 * descriptors @ self.centroids.T).argmin(axis=1)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = json.dumps({**self.meta, "schema": SCHEMA}).encode()
        np.savez(buf, meta=np.frombuffer(meta, np.uint8), centroids=self.centroids.astype(np.float16), idf=self.idf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "vocabulary") -> Vocabulary:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(npz["meta"].tobytes())
                if meta.get("schema") != SCHEMA:
                    raise VocabularyError(f"{origin}: schema {meta.get('schema')!r}, expected {SCHEMA}")
                return cls(npz["centroids"], npz["idf"], meta)
        except VocabularyError:
            raise
        except Exception as exc:  # any unreadable file is the same error to the caller
            raise VocabularyError(f"{origin}: not a readable NDID vocabulary NPZ ({exc})") from exc

    @classmethod
    def load(cls, path: str | Path = "") -> Vocabulary:
        """The vocabulary at ``path``, or the packaged one."""
        if path:
            try:
                return cls.from_bytes(Path(path).read_bytes(), str(path))
            except OSError as exc:
                raise VocabularyError(f"no vocabulary file at {path}") from exc
        return cls.from_bytes(resources.files("ndid_tasks").joinpath("data", PACKAGED).read_bytes(), PACKAGED)


def fit_vocabulary(features: Sequence[LocalFeatures], size: int = 4096, seed: int = 0,
                   meta: dict[str, Any] | None = None) -> Vocabulary:
    """k-means (scikit-learn's MiniBatchKMeans) on the RootSIFT descriptors of generic photos; idf
    from the same photos (in how many of them each word occurs)."""
    from sklearn.cluster import MiniBatchKMeans

    per_image = [root_sift(f.descriptors) for f in features if f.descriptors is not None and len(f)]
    if not per_image or sum(len(d) for d in per_image) < size:
        raise VocabularyError(f"{size} words need at least {size} descriptors")
    km = MiniBatchKMeans(size, batch_size=4096, n_init=1, max_iter=50, random_state=seed)
    km.fit(np.concatenate(per_image))
    vocab = Vocabulary(km.cluster_centers_, np.ones(size, np.float32), {})
    df = np.zeros(size)
    for d in per_image:
        df[np.unique(vocab.assign(d))] += 1
    idf = np.log((len(per_image) + 1) / (df + 1)).astype(np.float32)
    return Vocabulary(vocab.centroids, idf, {**(meta or {}), "images": len(per_image), "size": size, "seed": seed})


class VisualWordsSignal(Signal):
    """Bag of visual words from an image's SIFT features (the geometric signal's, so no second
    extraction); compared by inner product of the normalised sparse vectors. A candidate source
    only: the pair's evidence is its verification, so it declares no pair feature."""

    name = "visual_words"
    dim = 0  # sparse; see :attr:`size`

    def __init__(self, vocabulary: Vocabulary, geometry: GeometricSignal | None = None) -> None:
        self.vocabulary = vocabulary
        self.geometry = geometry or GeometricSignal()

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    def from_local(self, features: LocalFeatures) -> SparseWords:
        """sqrt(term frequency) x idf, L2-normalised; {} for an image without keypoints."""
        if features.descriptors is None or not len(features):
            return {}
        words, counts = np.unique(self.vocabulary.assign(root_sift(features.descriptors)), return_counts=True)
        weights = np.sqrt(counts) * self.vocabulary.idf[words]
        norm = float(np.linalg.norm(weights))
        if norm <= 0:
            return {}
        return {int(w): float(v) for w, v in zip(words, weights / norm, strict=True) if v > 0}

    def compute(self, images: Sequence[LoadedImage]) -> list[SparseWords]:
        return [self.from_local(f) for f in self.geometry.compute(images)]

    def compare(self, a: SparseWords, b: SparseWords) -> float:
        """Cosine of two word vectors (both normalised)."""
        if len(b) < len(a):
            a, b = b, a
        return float(sum(v * b.get(w, 0.0) for w, v in a.items()))


def pack_words(vectors: Sequence[SparseWords | None]) -> dict[str, np.ndarray]:
    """Word vectors as three flat arrays (for NPZ staging between tasks; None = not computed)."""
    lengths = np.array([-1 if v is None else len(v) for v in vectors], np.int64)
    keys = np.array([w for v in vectors if v for w in v], np.int32)
    vals = np.array([x for v in vectors if v for x in v.values()], np.float32)
    return {"words_len": lengths, "words_idx": keys, "words_val": vals}


def unpack_words(arrays: Any, count: int) -> list[SparseWords | None]:
    if "words_len" not in arrays:  # staged by a version without visual words
        return [None] * count
    out: list[SparseWords | None] = []
    start = 0
    idx, val = arrays["words_idx"], arrays["words_val"]
    for n in arrays["words_len"]:
        if n < 0:
            out.append(None)
            continue
        out.append({int(w): float(x) for w, x in zip(idx[start:start + n], val[start:start + n], strict=True)})
        start += int(n)
    return out
