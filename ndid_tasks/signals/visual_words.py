"""Visual words: the stored SIFT features of an image as a sparse tf-idf vector, a candidate source.

Why: a tight crop (5-15 % of the frame) shares almost nothing with its original's global
descriptor or pHash, so the original is often not among the candidates at all, while geometric
verification would confirm it (measured: verified against every ref, tight-crop R@1 0.85 where the
candidate search gives 0.50). Its SIFT keypoints are a subset of the original's, and SIFT is scale
invariant, so a bag of visual words -- each RootSIFT descriptor assigned to its word, sqrt term
frequency x idf, L2-normalised (Sivic & Zisserman's Video Google; Arandjelovic & Zisserman's
RootSIFT) -- ranks the original near the top for most tight crops. The vector is sparse (a few
hundred words), searched by inner product in Milvus' sparse inverted index.

The vocabulary is a two-level k-means tree (Nister & Stewenius' vocabulary tree): 128 coarse
centroids, then up to 128 words inside each, ~16,000 words in all -- more words make a chance
overlap between unrelated photos rarer, so an original keeps its rank as the index grows, and the
tree assigns a descriptor with two small products instead of one large one. The words are mirror
invariant: a descriptor's word is the smaller of its own and its mirror image's (SIFT_MIRROR, an
involution, so a keypoint and its mirrored twin get the same word), so a flipped and cropped
repost shares its words with its original. Measured on photos outside the dev set among 600
references (docs/benchmarks.md, session 14): original among the words candidates, 4,096 flat words
-> this tree, tight crops 0.842 -> 0.867, mirrored crops 0.758 -> 1.000, no family lower. A flat
or mirror-variant vocabulary still loads.

The vocabulary is data, like a whitening: an NPZ (uint8 or float16 centroids, idf, JSON metadata) loaded with
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
from .geometry import SIFT_MIRROR, GeometricSignal, LocalFeatures

SCHEMA = "ndid.visual_words/1"  # flat centroids, a descriptor's own nearest
SCHEMA_2 = "ndid.visual_words/2"  # may be a tree (coarse, offsets) and mirror invariant (meta)
PACKAGED = "visual_words_tree16k.npz"
GENERIC_SCHEMA = "ndid.visual_words_generic/1"
PACKAGED_GENERIC = "visual_words_generic.npz"  # the packaged vocabulary's generic background (see load_generic)

SparseWords = dict[int, float]  # word -> weight, L2-normalised (Milvus' sparse vector format)


class VocabularyError(ValueError):
    """A vocabulary file is missing or malformed."""


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise, then square root (Hellinger kernel; better words than raw SIFT)."""
    d = descriptors.astype(np.float32)
    d /= d.sum(axis=1, keepdims=True) + 1e-7
    return np.sqrt(d)


class Vocabulary:
    """k RootSIFT centroids and their idf weights; with ``coarse`` centroids and ``offsets``, a
    two-level tree: the words of coarse cell c are ``centroids[offsets[c]:offsets[c + 1]]``."""

    def __init__(self, centroids: np.ndarray, idf: np.ndarray, meta: dict[str, Any],
                 coarse: np.ndarray | None = None, offsets: np.ndarray | None = None) -> None:
        """``meta["mirror_invariant"]``: a word is the smaller of the descriptor's and its mirror's."""
        if centroids.ndim != 2 or centroids.shape[1] != 128 or idf.shape != (len(centroids),):
            raise VocabularyError(f"a vocabulary needs (k, 128) centroids and k idf weights, got "
                                  f"{centroids.shape} and {idf.shape}")
        if (coarse is None) != (offsets is None):
            raise VocabularyError("a vocabulary tree needs both coarse centroids and offsets")
        if coarse is not None and offsets is not None and (
                coarse.ndim != 2 or coarse.shape[1] != 128 or offsets.shape != (len(coarse) + 1,)
                or offsets[0] != 0 or offsets[-1] != len(centroids) or np.any(np.diff(offsets) < 1)):
            raise VocabularyError(f"a vocabulary tree needs (b, 128) coarse centroids and b + 1 increasing "
                                  f"offsets from 0 to {len(centroids)}")
        self.centroids = centroids.astype(np.float32)
        self.idf = idf.astype(np.float32)
        self.meta = meta
        self.coarse = None if coarse is None else coarse.astype(np.float32)
        self.offsets = None if offsets is None else offsets.astype(np.int64)
        self._norms = (self.centroids * self.centroids).sum(axis=1)
        self._coarse_norms = None if self.coarse is None else (self.coarse * self.coarse).sum(axis=1)

    def __len__(self) -> int:
        return len(self.centroids)

    @property
    def version(self) -> str:
        """Content hash: an index holds the words of one vocabulary (its collection is named by it)."""
        parts = [self.centroids.astype(np.float16).tobytes(), self.idf.tobytes()]
        if self.coarse is not None and self.offsets is not None:
            parts += [self.coarse.astype(np.float16).tobytes(), self.offsets.tobytes()]
        if self.mirror_invariant:
            parts.append(b"mirror-invariant")
        digest = hashlib.sha256(b"".join(parts)).hexdigest()
        return f"vw{len(self)}-{digest[:10]}"

    @property
    def mirror_invariant(self) -> bool:
        return bool(self.meta.get("mirror_invariant"))

    def assign(self, descriptors: np.ndarray) -> np.ndarray:
        """The word of each (RootSIFT) descriptor (mirror invariant: the smaller of its own and its
        mirror's, ~2.6 ms for 500 descriptors and 16,000 words)."""
        words = self._nearest_word(descriptors)
        return np.minimum(words, self._nearest_word(descriptors[:, SIFT_MIRROR])) if self.mirror_invariant else words

    def _nearest_word(self, descriptors: np.ndarray) -> np.ndarray:
        """Nearest centroid (flat), or nearest word within the nearest coarse cell (tree)."""
        if self.coarse is None or self.offsets is None or self._coarse_norms is None:
            return _nearest(descriptors, self.centroids, self._norms)
        cells = _nearest(descriptors, self.coarse, self._coarse_norms)
        out = np.empty(len(descriptors), np.int64)
        for c in np.unique(cells):
            rows = np.flatnonzero(cells == c)
            a, b = self.offsets[c], self.offsets[c + 1]
            out[rows] = a + _nearest(descriptors[rows], self.centroids[a:b], self._norms[a:b])
        return out

    def to_bytes(self) -> bytes:
        """Schema 1 (flat, mirror variant): float16 centroids, what its readers read. Schema 2: uint8
        centroids on [0, the largest value] (RootSIFT is non-negative; 16,384 words in < 2 MB,
        98 % of descriptors keep their float word), compressed."""
        schema = SCHEMA_2 if self.coarse is not None or self.mirror_invariant else SCHEMA
        if schema == SCHEMA:
            arrays: dict[str, Any] = {"centroids": self.centroids.astype(np.float16), "idf": self.idf}
            meta = {**self.meta, "schema": schema}
        else:
            tree = [self.coarse] if self.coarse is not None else []
            scale = float(max(float(c.max()) for c in [self.centroids, *tree]))
            arrays = {"centroids": _to_uint8(self.centroids, scale), "idf": self.idf}
            if self.coarse is not None and self.offsets is not None:
                arrays.update(coarse=_to_uint8(self.coarse, scale), offsets=self.offsets)
            meta = {**self.meta, "schema": schema, "centroid_scale": scale}
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "vocabulary") -> Vocabulary:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(npz["meta"].tobytes())
                if meta.get("schema") not in (SCHEMA, SCHEMA_2):
                    raise VocabularyError(f"{origin}: schema {meta.get('schema')!r}, expected {SCHEMA} or {SCHEMA_2}")
                if meta["schema"] == SCHEMA:
                    meta.pop("mirror_invariant", None)

                def centroids(name: str) -> np.ndarray:
                    found = npz[name]
                    return found.astype(np.float32) * (meta["centroid_scale"] / 255) if found.dtype == np.uint8 else found

                tree = (centroids("coarse"), npz["offsets"]) if "coarse" in npz.files else (None, None)
                return cls(centroids("centroids"), npz["idf"], meta, *tree)
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


def _to_uint8(centroids: np.ndarray, scale: float) -> np.ndarray:
    return np.round(np.clip(centroids / scale, 0.0, 1.0) * 255).astype(np.uint8)


def _nearest(descriptors: np.ndarray, centroids: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Index of each descriptor's nearest centroid: one matrix product (|c|^2 - 2 d.c)."""
    return (norms[None, :] - 2.0 * descriptors @ centroids.T).argmin(axis=1)


def fit_vocabulary(features: Sequence[LocalFeatures], size: int = 4096, seed: int = 0,
                   meta: dict[str, Any] | None = None, branch: int = 0,
                   mirror_invariant: bool = False) -> Vocabulary:
    """k-means (scikit-learn) on the RootSIFT descriptors of generic photos; idf from the same
    photos (in how many of them each word occurs). ``branch`` > 0: a tree of ``branch`` coarse
    cells with up to ``size / branch`` words each (fewer in a cell with few descriptors: at least 8
    descriptors a word); 0: ``size`` flat centroids. ``mirror_invariant``: fitted on the photos and
    their mirror images, words assigned as :meth:`Vocabulary.assign` says."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    per_image = [root_sift(f.descriptors) for f in features if f.descriptors is not None and len(f)]
    if not per_image or sum(len(d) for d in per_image) < size:
        raise VocabularyError(f"{size} words need at least {size} descriptors")
    data = np.concatenate(per_image + ([d[:, SIFT_MIRROR] for d in per_image] if mirror_invariant else []))
    coarse = offsets = None
    if branch <= 0:
        centroids = MiniBatchKMeans(size, batch_size=4096, n_init=1, max_iter=50, random_state=seed).fit(data).cluster_centers_
    else:
        top = MiniBatchKMeans(branch, batch_size=8192, n_init=1, max_iter=50, random_state=seed).fit(data)
        cells = _nearest(data, top.cluster_centers_, (top.cluster_centers_ ** 2).sum(axis=1))
        words, counts = [], [0]
        for c in range(branch):
            inside = data[cells == c]
            k = min(max(1, size // branch), len(inside) // 8)
            if k <= 1:  # (an empty cell keeps its centroid as its one word: offsets must increase)
                found = inside.mean(axis=0, keepdims=True) if len(inside) else top.cluster_centers_[c:c + 1]
            else:
                found = KMeans(k, n_init=1, max_iter=30, random_state=seed).fit(inside).cluster_centers_
            words.append(found)
            counts.append(len(found))
        centroids, coarse, offsets = np.concatenate(words), top.cluster_centers_, np.cumsum(counts)
    meta = {**(meta or {}), "images": len(per_image), "size": len(centroids), "branch": branch, "seed": seed,
            "mirror_invariant": mirror_invariant}
    vocab = Vocabulary(centroids, np.ones(len(centroids), np.float32), meta, coarse, offsets)
    df = np.zeros(len(vocab))
    for d in per_image:
        df[np.unique(vocab.assign(d))] += 1
    idf = np.log((len(per_image) + 1) / (df + 1)).astype(np.float32)
    # as it will be stored (its centroids' precision), so its version is the file's
    return Vocabulary.from_bytes(Vocabulary(vocab.centroids, idf, meta, coarse, offsets).to_bytes())


class VisualWordsSignal(Signal):
    """Bag of visual words from an image's SIFT features (the geometric signal's, so no second
    extraction); compared by inner product of the normalised sparse vectors. A candidate source
    only: the pair's evidence is its verification, so it declares no pair feature."""

    name = "visual_words"
    dim = 0  # sparse; see :attr:`size`
    # a query's background: the mean of its similarities ranked in this share of a uniform sample
    # of the earlier images (its top 3-12 %), ~SAMPLE of them; while fewer than MIN_SAMPLE are
    # earlier, of the ``generic`` photos' instead (none given: every candidate stands) ...
    BACKGROUND = (1 / 32, 1 / 8)
    SAMPLE, MIN_SAMPLE = 256, 64
    NEAREST = 48  # a candidate stands out only among the query's nearest by words too (one search)
    # ... or, where higher, the mean of its 17th..48th nearest (each group of copies once; at least
    # MIN_NEAREST of them): see background_of
    NEAREST_BACKGROUND, MIN_NEAREST = (16, 48), 8

    def __init__(self, vocabulary: Vocabulary, geometry: GeometricSignal | None = None,
                 generic: Sequence[SparseWords] = ()) -> None:
        """``generic``: the words of photos nobody indexes (:func:`load_generic`), a query's
        background while the index is too small to give its own."""
        self.vocabulary = vocabulary
        self.geometry = geometry or GeometricSignal()
        self.generic = list(generic)

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    def from_local(self, features: LocalFeatures) -> SparseWords:
        """sqrt(term frequency) x idf, L2-normalised; {} for an image without keypoints."""
        return self.from_local_many([features])[0]

    def from_local_many(self, features: Sequence[LocalFeatures]) -> list[SparseWords]:
        """:meth:`from_local` of each, the descriptors of all assigned at once (the tree's loop over
        its coarse cells then runs once a batch, not once an image: ~4 -> ~1 ms an image)."""
        described = [f.descriptors for f in features if f.descriptors is not None and len(f)]
        if not described:
            return [{} for _ in features]
        assigned = iter(np.split(self.vocabulary.assign(root_sift(np.concatenate(described))),
                                 np.cumsum([len(d) for d in described])[:-1]))
        return [self._weighted(next(assigned)) if f.descriptors is not None and len(f) else {} for f in features]

    def _weighted(self, assigned: np.ndarray) -> SparseWords:
        words, counts = np.unique(assigned, return_counts=True)
        weights = np.sqrt(counts) * self.vocabulary.idf[words]
        norm = float(np.linalg.norm(weights))
        if norm <= 0:
            return {}
        return {int(w): float(v) for w, v in zip(words, weights / norm, strict=True) if v > 0}

    def compute(self, images: Sequence[LoadedImage]) -> list[SparseWords]:
        return self.from_local_many(self.geometry.compute(images))

    @classmethod
    def background(cls, similarities: Sequence[float]) -> float | None:
        """The level a query's candidates are judged against: the mean of its similarities to a
        uniform sample of the earlier images (each group of copies once, or an image with many
        copies would be its own background) ranked in the :attr:`BACKGROUND` share -- a quantile,
        so it stays put as the index grows, where the 17th..48th nearest rose with it (sessions
        16-17; :meth:`background_of` takes the higher of the two). None for too small a sample:
        then every candidate stands. The similarity alone does
        not tell a tight crop's original from an unrelated photo's nearest (ROC AUC 0.55); against
        the query's own background it largely does (docs/benchmarks.md, sessions 15-17)."""
        n = len(similarities)
        if n < cls.MIN_SAMPLE:
            return None
        ranked = np.sort(np.asarray(similarities, dtype=np.float64))[::-1]
        return float(np.mean(ranked[int(n * cls.BACKGROUND[0]):int(n * cls.BACKGROUND[1])]))

    @classmethod
    def background_of(cls, sampled: Sequence[float], nearest: Sequence[float]) -> float | None:
        """The higher of :meth:`background` (``sampled``: the query's similarities to the sample)
        and the mean of its 17th..48th ``nearest`` similarities (best first, each group of copies
        once; none with fewer than :attr:`MIN_NEAREST` there); None without a sample background.

        Why both: a quantile holds its level as the index grows, but the best of more unrelated
        images climbs above any fixed level -- the words gate's 1.75 then passed the nearest hits
        of ever more images with no copy (outside the dev set: 22 % of them verifying at 162
        references, 30 % at 420, 37 % at 689). The nearest climb with the index; alone they sit
        too low in a small one (57 % at 162; docs/benchmarks.md, sessions 16-18)."""
        level = cls.background(sampled)
        if level is None:
            return None
        part = list(nearest)[cls.NEAREST_BACKGROUND[0]:cls.NEAREST_BACKGROUND[1]]
        return max(level, float(np.mean(part))) if len(part) >= cls.MIN_NEAREST else level

    @staticmethod
    def similarities(a: Sequence[SparseWords], b: Sequence[SparseWords]) -> np.ndarray:
        """Cosines of every vector of ``a`` with every vector of ``b`` (one sparse product)."""
        from scipy.sparse import csr_matrix

        size = 1 + max((w for v in (*a, *b) for w in v), default=0)

        def matrix(vectors: Sequence[SparseWords]) -> csr_matrix:
            cols = [w for v in vectors for w in v]
            rows = np.repeat(np.arange(len(vectors)), [len(v) for v in vectors])
            vals = [x for v in vectors for x in v.values()]
            return csr_matrix((np.asarray(vals, np.float64), (rows, cols)), shape=(len(vectors), size))

        return np.asarray((matrix(a) @ matrix(b).T).toarray())

    def compare(self, a: SparseWords, b: SparseWords) -> float:
        """Cosine of two word vectors (both normalised)."""
        if len(b) < len(a):
            a, b = b, a
        return float(sum(v * b.get(w, 0.0) for w, v in a.items()))


def generic_to_bytes(words: Sequence[SparseWords], vocabulary: Vocabulary, meta: dict[str, Any] | None = None) -> bytes:
    """A generic background file: the words of photos under one vocabulary (weights as float16:
    they only set a level), compressed NPZ, read with ``allow_pickle=False``."""
    arrays: dict[str, Any] = pack_words(list(words))
    arrays["words_val"] = arrays["words_val"].astype(np.float16)
    meta = {**(meta or {}), "schema": GENERIC_SCHEMA, "vocabulary": vocabulary.version, "images": len(words)}
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return buf.getvalue()


def load_generic(vocabulary: Vocabulary, path: str | Path = "") -> list[SparseWords]:
    """The generic background for ``vocabulary``: the file at ``path``, or the packaged one.

    Why: the words gates judge a candidate against the query's background, the level of its
    similarity to a uniform sample of the earlier images; an index with fewer than
    :attr:`VisualWordsSignal.MIN_SAMPLE` earlier images has none, and every candidate of its first
    images was verified. The same level from a fixed sample of generic photos is within a few % of
    a real index's (docs/analysis/generic_background_probe.py: median ratio 0.94-0.99 by family,
    correlation 0.94-0.99). Words depend on the vocabulary, so a file made for another one is refused
    (``path``) or left out (the packaged file beside a custom vocabulary: [], as before)."""
    origin = str(path) if path else PACKAGED_GENERIC
    try:
        data = Path(path).read_bytes() if path else \
            resources.files("ndid_tasks").joinpath("data", PACKAGED_GENERIC).read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes())
            arrays = {k: npz[k] for k in ("words_len", "words_idx", "words_val")}
    except Exception as exc:  # any unreadable file is the same error to the caller
        raise VocabularyError(f"{origin}: not a readable NDID generic background NPZ ({exc})") from exc
    if meta.get("schema") != GENERIC_SCHEMA:
        raise VocabularyError(f"{origin}: schema {meta.get('schema')!r}, expected {GENERIC_SCHEMA}")
    if meta.get("vocabulary") != vocabulary.version:
        if path:
            raise VocabularyError(f"{origin} holds words of vocabulary {meta.get('vocabulary')}, not "
                                  f"{vocabulary.version}: make one with `ndid words generic`")
        return []
    return [w for w in unpack_words(arrays, len(arrays["words_len"])) if w]


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
