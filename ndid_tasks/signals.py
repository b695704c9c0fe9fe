"""Signals: each knows how to compute itself for a batch of images and how to compare two values.

    exact   sha256 of the bytes             compare -> 1.0 if identical else 0.0
    phash   64-bit perceptual hash          compare -> Hamming distance (0..64)
    resnet  ResNet-50 GeM, whitened, L2=1   compare -> cosine similarity
    clip    open_clip ViT-B-32 512-d, L2=1  compare -> cosine similarity
    pdq     Meta PDQ 256-bit hash           compare -> Hamming distance (0..256); dihedral min
    geometry SIFT + RANSAC                  verify -> distinct inliers (stage 2 only)

New signals plug in by subclassing :class:`Signal`.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import imagehash
import numpy as np

from .config import Settings
from .images import LoadedImage

log = logging.getLogger(__name__)


class Signal(ABC):
    name: ClassVar[str]
    dim: ClassVar[int]

    @abstractmethod
    def compute(self, images: Sequence[LoadedImage]) -> Any:
        """One entry per image (a row of an array for vectors and hashes)."""

    @abstractmethod
    def compare(self, a: Any, b: Any) -> float:
        """The pair feature this signal contributes (distance or similarity; see module doc)."""


class ExactSignal(Signal):
    name, dim = "exact", 1

    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        return np.array([im.sha256 for im in images], dtype=object)

    def compare(self, a, b) -> float:
        return 1.0 if a == b else 0.0


class PHashSignal(Signal):
    """imagehash's DCT pHash. Stored as 64 floats of 0/1 so that squared L2 distance = Hamming."""

    name, dim = "phash", 64

    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            out[i] = imagehash.phash(im.content, hash_size=8).hash.flatten()
        return out

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.count_nonzero(np.asarray(a) != np.asarray(b)))

    @staticmethod
    def to_hex(bits: np.ndarray) -> str:
        return str(imagehash.ImageHash(np.asarray(bits, dtype=bool).reshape(8, 8)))

    # The 7 right-angle rotations and mirrors of an image (PIL transpose op names), and what each
    # does to pHash's 8x8 low-frequency DCT block: (transpose it, negate the odd rows, negate the
    # odd columns). A bit says "coefficient above the block's median", and the median sits near 0,
    # so negating a coefficient flips its bit: the variants follow from the 64 bits alone, with no
    # pixels and nothing more stored. Measured on 200 ImageNet photos: the hash of the turned image
    # is 0-10 bits (mean ~3; transpose exact) from its derived variant; unrelated photos stay >= 14
    # bits from every variant (0.1 % quantile 16).
    DIHEDRAL: ClassVar[tuple[tuple[str, bool, bool, bool], ...]] = (
        ("FLIP_LEFT_RIGHT", False, False, True), ("FLIP_TOP_BOTTOM", False, True, False),
        ("ROTATE_180", False, True, True), ("TRANSPOSE", True, False, False),
        ("ROTATE_90", True, True, False), ("ROTATE_270", True, False, True), ("TRANSVERSE", True, True, True))
    _ODD = np.arange(8) % 2 == 1

    @classmethod
    def dihedral(cls, bits: np.ndarray) -> np.ndarray:
        """(7, 64) 0/1 hashes: what this image's pHash would be if it were turned by each of
        :data:`DIHEDRAL` (as the images' pHash, so an index search with them finds turned copies)."""
        block = np.asarray(bits).reshape(8, 8) > 0.5
        out = np.zeros((len(cls.DIHEDRAL), 64), dtype=np.float32)
        for n, (_, transpose, odd_rows, odd_cols) in enumerate(cls.DIHEDRAL):
            m = block.T.copy() if transpose else block.copy()
            if odd_rows:
                m[cls._ODD, :] = ~m[cls._ODD, :]
            if odd_cols:
                m[:, cls._ODD] = ~m[:, cls._ODD]
            m[0, 0] = block[0, 0]  # the DC term: above the median in any orientation
            out[n] = m.flatten()
        return out

    @classmethod
    def turned(cls, image: LoadedImage, variant: str) -> LoadedImage:
        """The picture turned by one of :data:`DIHEDRAL` (its content: borders already trimmed)."""
        import dataclasses

        from PIL import Image

        pic = image.content.transpose(getattr(Image.Transpose, variant))
        return dataclasses.replace(image, image=pic, box=None)


class PDQSignal(Signal):
    """Meta's PDQ (pdqhash): a 256-bit DCT hash, the one platforms exchange (ThreatExchange).

    :meth:`dihedral` gives the hashes of the 8 rotations/flips of an image, so the pair feature
    (:meth:`dihedral_distance`) is the smallest Hamming distance of any of them to the other
    image's hash: rotated and mirrored copies look as close as plain ones. Hashed from the
    content (flat borders trimmed) shrunk to :attr:`max_side` (PDQ reduces to 64x64 anyway):
    ~3 ms an image for all 8 hashes. A stage-2 signal, used when the calibration keeps it.
    """

    name, dim = "pdq", 256
    max_side = 256

    def _pixels(self, im: LoadedImage) -> np.ndarray:
        small = im.content.convert("RGB")
        small.thumbnail((self.max_side, self.max_side))
        return np.ascontiguousarray(np.asarray(small))

    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        import pdqhash

        return np.array([pdqhash.compute(self._pixels(im))[0] for im in images], dtype=bool).reshape(-1, self.dim)

    def dihedral(self, images: Sequence[LoadedImage]) -> np.ndarray:
        """(n, 8, 256): the image's own hash first, then its 7 rotations/flips."""
        import pdqhash

        return np.array([pdqhash.compute_dihedral(self._pixels(im))[0] for im in images],
                        dtype=bool).reshape(-1, 8, self.dim)

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.count_nonzero(np.asarray(a, bool) != np.asarray(b, bool)))

    @staticmethod
    def dihedral_distance(query8: np.ndarray, other: np.ndarray) -> int:
        """Smallest Hamming distance of any of the query's 8 dihedral hashes to ``other``'s hash
        (row 0 of its dihedral set, or its plain hash)."""
        other = np.asarray(other, bool)
        return int(np.count_nonzero(np.asarray(query8, bool) != (other[0] if other.ndim == 2 else other), axis=1).min())


def native_bf16_available() -> bool:
    """True where bf16 pays off on this CPU: AMX tiles (ResNet-50 48 vs 21 img/s fp32).

    AVX512-BF16 alone is not enough: measured there, ResNet-50 gained 20 % but CLIP lost 45 %.
    """
    import torch

    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


class TorchEmbeddingSignal(Signal):
    """A frozen CNN/ViT image encoder: batched, no grad, channels_last, bf16 where native."""

    input_size: ClassVar[int] = 224
    _lock = threading.Lock()

    def __init__(self, settings: Settings, precision: str | None = None) -> None:
        self.settings = settings
        requested = precision or settings.precision
        self.precision = ("bf16" if native_bf16_available() else "fp32") if requested == "auto" else requested
        self._model = None
        self._mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
        self._std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @abstractmethod
    def _build(self):
        """Return the eval-mode module that maps a normalised batch to embeddings."""

    @property
    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    import torch

                    if self.settings.torch_threads:
                        torch.set_num_threads(self.settings.torch_threads)
                    model = self._build().to(memory_format=torch.channels_last)
                    if self.precision == "bf16":
                        model = model.to(torch.bfloat16)
                    if self.settings.torch_compile:
                        model = torch.compile(model)
                    self._model = model
        return self._model

    def preprocess(self, images: Sequence[LoadedImage]):
        import torch
        from torchvision.transforms.v2 import functional as F

        batch = []
        for im in images:
            t = F.pil_to_tensor(im.content)
            t = F.resize(t, [self.input_size], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
            t = F.center_crop(t, [self.input_size, self.input_size])
            batch.append(t)
        x = torch.stack(batch).float().div_(255.0)
        return F.normalize(x, list(self._mean), list(self._std))

    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        out = []
        bs = self.settings.embed_batch_size
        with torch.inference_mode():
            for start in range(0, len(images), bs):
                x = self.preprocess(images[start:start + bs]).to(dtype).contiguous(memory_format=torch.channels_last)
                emb = model(x).float()
                out.append(torch.nn.functional.normalize(emb, dim=1).numpy())
        return np.concatenate(out).astype(np.float32)

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b))


class ResNetSignal(TorchEmbeddingSignal):
    """ResNet-50 descriptor: GeM pooling of a stage's feature map (layer3 by default), then whitening.

    ``compute_raw`` gives the L2-normalised pooled descriptor (what the index keeps for re-whitening);
    ``compute`` applies the :class:`~ndid_tasks.whitening.Whitening` (PCA, ``dim`` axes) when one is
    set. layer3 + GeM on the whole (squashed) image keeps the spatial detail that crops share with
    their original; with layer3 the network stops there, so layer4 costs nothing.
    """

    name = "resnet"

    def __init__(self, settings: Settings, precision: str | None = None, whitening=None) -> None:
        super().__init__(settings, precision)
        self.whitening = whitening
        if whitening is not None and whitening.descriptor != settings.resnet_descriptor:
            from .whitening import WhiteningError

            raise WhiteningError(f"whitening {whitening.version} was fitted on {whitening.descriptor} descriptors "
                                 f"but the settings give {settings.resnet_descriptor}; fit a new one with "
                                 f"`ndid whitening fit`")

    @property
    def raw_dim(self) -> int:
        return 1024 if self.settings.resnet_layer == "layer3" else 2048

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.whitening.dim if self.whitening is not None else self.raw_dim

    def _build(self):
        from .weights import build_resnet50

        return PooledResNet(build_resnet50(self.settings), self.settings.resnet_layer, self.settings.resnet_gem_p)

    def preprocess(self, images: Sequence[LoadedImage]):
        if self.settings.resnet_input == "center_crop":
            return super().preprocess(images)
        import torch
        from torchvision.transforms.v2 import functional as F

        size = [self.input_size, self.input_size]
        batch = [F.resize(F.pil_to_tensor(im.content), size, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
                 for im in images]
        return F.normalize(torch.stack(batch).float().div_(255.0), list(self._mean), list(self._std))

    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        return self.whiten(self.compute_raw(images))

    def whiten(self, raw: np.ndarray) -> np.ndarray:
        if self.whitening is None:
            return np.asarray(raw, dtype=np.float32)
        if not len(raw):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.whitening.apply(raw)

    def compute_raw(self, images: Sequence[LoadedImage]) -> np.ndarray:
        raw = super().compute(images)
        if self.settings.resnet_flip_symmetric and len(images):
            raw = raw + super().compute(mirrored(images))
            raw = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
        return raw.astype(np.float32)


def _pooled_resnet_class():
    import torch

    class _PooledResNet(torch.nn.Module):
        """conv1 .. ``layer`` of a torchvision ResNet, then GeM pooling (computed in fp32)."""

        def __init__(self, resnet, layer: str, p: float) -> None:
            super().__init__()
            fuse_batchnorm(resnet)
            stages = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
            if layer == "layer4":
                stages.append("layer4")
            self.body = torch.nn.Sequential(*[getattr(resnet, s) for s in stages])
            self.p = float(p)

        def forward(self, x):
            return gem_pool(self.body(x), self.p)

    return _PooledResNet


def mirrored(images: Sequence[LoadedImage]) -> list[LoadedImage]:
    """The images' content (flat borders already trimmed), flipped left-right."""
    import dataclasses

    from PIL import Image

    return [dataclasses.replace(im, image=im.content.transpose(Image.Transpose.FLIP_LEFT_RIGHT), box=None)
            for im in images]


def gem_pool(fmap, p: float):
    """Generalised-mean pooling of a (n, C, H, W) feature map over H, W, in fp32; p = 1 is average."""
    f = fmap.float()
    if p == 1.0:
        return f.mean(dim=(2, 3))
    return f.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def fuse_batchnorm(resnet) -> None:
    """Fold every eval-mode BatchNorm into the convolution before it (same function, measured
    25 % less ResNet time on CPU: batch_norm took 6 of 21 s). In place; BNs become Identity."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    resnet.eval()
    resnet.conv1, resnet.bn1 = fuse_conv_bn_eval(resnet.conv1, resnet.bn1), torch.nn.Identity()
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in layer:
            for i in (1, 2, 3):
                conv, bn = getattr(block, f"conv{i}"), getattr(block, f"bn{i}")
                setattr(block, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(block, f"bn{i}", torch.nn.Identity())
            if block.downsample is not None:
                block.downsample = torch.nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))


def PooledResNet(resnet, layer: str, p: float):
    return _pooled_resnet_class()(resnet, layer, p)


class ClipSignal(TorchEmbeddingSignal):
    name, dim = "clip", 512

    def _build(self):
        from .weights import build_clip_visual

        visual, mean, std = build_clip_visual(self.settings)
        self._mean, self._std = tuple(mean), tuple(std)
        return visual

    def preprocess(self, images: Sequence[LoadedImage]):
        self.model  # noqa: B018 - building the model sets CLIP's own mean/std
        return super().preprocess(images)


def precision_agreement(signal_cls: type[TorchEmbeddingSignal], settings: Settings,
                        images: Sequence[LoadedImage]) -> float:
    """Minimum cosine between bf16 and fp32 embeddings of the same images (1.0 = identical)."""
    fast = signal_cls(settings, precision="bf16").compute(images)
    exact = signal_cls(settings, precision="fp32").compute(images)
    return float(np.min(np.sum(fast * exact, axis=1)))


def _sift_mirror_permutation() -> np.ndarray:
    """Where each of SIFT's 128 descriptor bins goes when the image is mirrored left-right.

    OpenCV's descriptor is 4x4 spatial cells x 8 orientation bins in the keypoint's own frame;
    mirroring the image flips that frame's rows and negates gradient angles. Measured: 92 % of the
    keypoints of a mirrored image match these permuted descriptors almost exactly, and a photo
    against its own mirror gets 406 distinct inliers (421 against itself) -- so the mirrored
    query costs a permutation instead of a second SIFT pass.
    """
    r, c, o = np.meshgrid(np.arange(4), np.arange(4), np.arange(8), indexing="ij")
    return (((3 - r) * 4 + c) * 8 + (8 - o) % 8).ravel()


_SIFT_MIRROR = _sift_mirror_permutation()


class LocalFeatures:
    """SIFT keypoints of an image; descriptors as uint8 (SIFT's values are 0..255 integers, so this
    is lossless and 4x smaller than OpenCV's float32)."""

    __slots__ = ("descriptors", "points")

    def __init__(self, points: np.ndarray, descriptors: np.ndarray | None) -> None:
        self.points = points
        self.descriptors = None if descriptors is None else np.clip(np.rint(descriptors), 0, 255).astype(np.uint8)

    @property
    def nbytes(self) -> int:
        return self.points.nbytes + (0 if self.descriptors is None else self.descriptors.nbytes)

    def __len__(self) -> int:
        return 0 if self.descriptors is None else len(self.descriptors)

    def mirrored(self) -> LocalFeatures:
        """The features of the left-right mirrored image, without running SIFT again (x is negated:
        homographies absorb the shift)."""
        if self.descriptors is None:
            return self
        out = LocalFeatures(self.points * np.array([-1, 1], dtype=np.float32), None)
        out.descriptors = self.descriptors[:, _SIFT_MIRROR]
        return out


class GeometricSignal(Signal):
    """Geometric verification: SIFT, ratio test, one-to-one matches, RANSAC homography inliers.

    :meth:`verify_many` returns, per candidate, the number of *distinct* inlier points: repeated
    matches onto blank backgrounds cannot inflate it, and no scale limit is imposed, so thumbnails
    verify. Mirrored copies: the query's mirrored features (a descriptor permutation) are matched
    too, and RANSAC runs on them only where the direct match is weak. All candidates of a query
    are matched in one matrix product: ~1.5 ms a pair with its mirror (OpenCV's brute-force
    matcher plus a homography RANSAC took 6.5 ms, and the mirror a second SIFT pass of 30 ms).
    Extraction (~12 ms an image at 256 px) is the rest, hence only for ambiguous pairs, and each
    image's features are kept.
    """

    name, dim = "geometry", 0
    ratio = 0.8
    ransac_px = 5.0
    verified = 12  # distinct inliers above which a pair is geometrically verified (unrelated: <= 6)
    affine_gate = 6  # fewer affine inliers than this: no homography RANSAC (see _inliers)

    def __init__(self, max_features: int = 500, max_side: int = 384) -> None:
        self.max_features = max_features
        self.max_side = max_side

    @classmethod
    def from_settings(cls, settings: Settings) -> GeometricSignal:
        return cls(settings.sift_features, settings.sift_max_side)

    def compute(self, images: Sequence[LoadedImage]) -> list[LocalFeatures]:
        import cv2

        sift = cv2.SIFT_create(nfeatures=self.max_features)  # type: ignore[attr-defined]  # (no stub)
        out = []
        for im in images:
            small = im.image.convert("L")
            small.thumbnail((self.max_side, self.max_side))
            kp, desc = sift.detectAndCompute(np.asarray(small), None)
            out.append(LocalFeatures(np.array([k.pt for k in kp], dtype=np.float32).reshape(-1, 2), desc))
        return out

    def compare(self, a: LocalFeatures, b: LocalFeatures) -> float:
        """Distinct inliers of ``a`` on ``b`` (no mirroring)."""
        return float(self.verify_many(a, [b], mirror=False)[0])

    def verify(self, query: LocalFeatures, candidate: LocalFeatures) -> float:
        """Distinct inliers of the query (or, when that is weak, of its mirror) on the candidate."""
        return float(self.verify_many(query, [candidate])[0])

    def verify_many(self, query: LocalFeatures, candidates: Sequence[LocalFeatures],
                    mirror: bool = True) -> list[int]:
        """Distinct inliers of the query on each candidate: max(direct, mirrored), where the
        mirror is tried only when the direct match has fewer than :attr:`verified` inliers."""
        out = [0] * len(candidates)
        usable = [k for k, c in enumerate(candidates) if len(c) >= 4]
        if len(query) < 4 or not usable:
            return out
        sides = [query, query.mirrored()] if mirror else [query]
        rows = np.concatenate([s.descriptors for s in sides]).astype(np.float32)
        cols = np.concatenate([candidates[k].descriptors for k in usable]).astype(np.float32)
        # squared L2 distance minus the row's own |q|^2 (constant along a row, so the nearest two
        # are found without it and it is added back to those two only): |c|^2 - 2 q.c
        dist = rows @ (-2.0 * cols).T
        dist += (cols * cols).sum(1)[None, :]
        row_norm = (rows * rows).sum(1)
        n, start = len(query), 0
        for k in usable:
            stop = start + len(candidates[k])
            for s, side in enumerate(sides):
                if s and out[k] >= self.verified:
                    break
                src, dst = self._tentative(dist[s * n:(s + 1) * n, start:stop], row_norm[s * n:(s + 1) * n])
                if len(src) >= 4:
                    out[k] = max(out[k], self._inliers(side.points[src], candidates[k].points[dst]))
            start = stop
        return out

    def _tentative(self, dist: np.ndarray, row_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ratio-test matches (query row -> candidate column), one-to-one: each candidate point
        keeps only its closest query point. ``dist`` (|c|^2 - 2 q.c, see :meth:`verify_many`) is
        overwritten: the second nearest is found by masking the nearest."""
        if dist.shape[1] < 2:
            return np.empty(0, int), np.empty(0, int)
        at = np.arange(len(dist))
        best_col = dist.argmin(axis=1)
        best = np.maximum(dist[at, best_col] + row_norm, 0.0)
        dist[at, best_col] = np.inf
        second = np.maximum(dist.min(axis=1) + row_norm, 0.0)
        rows = np.flatnonzero(best < (self.ratio ** 2) * second)  # ratio test on distances, squared
        if len(rows) == 0:
            return rows, rows
        order = np.lexsort((best[rows], best_col[rows]))  # by column, then distance
        rows = rows[order]
        keep = np.ones(len(rows), bool)
        keep[1:] = best_col[rows][1:] != best_col[rows][:-1]
        rows = rows[keep]
        return rows, best_col[rows]

    def _inliers(self, src: np.ndarray, dst: np.ndarray) -> int:
        """Distinct RANSAC inliers of a homography; an affine RANSAC first, because OpenCV's
        homography RANSAC takes ~3 ms on the random matches of unrelated pairs and 0.1 ms for an
        affine fit -- when not even :attr:`affine_gate` matches agree on an affine map, that small
        count is the answer (a homography fits at least as many; unrelated pairs stay <= 6)."""
        import cv2

        _, mask = cv2.estimateAffine2D(src, dst, ransacReprojThreshold=self.ransac_px, refineIters=0)
        affine = self._distinct(src, dst, mask)
        if affine < self.affine_gate:
            return affine
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, self.ransac_px)
        return max(affine, self._distinct(src, dst, mask))

    @staticmethod
    def _distinct(src: np.ndarray, dst: np.ndarray, mask: np.ndarray | None) -> int:
        if mask is None:
            return 0
        keep = mask.ravel().astype(bool)

        def distinct(points: np.ndarray) -> int:  # on a 2-px grid: clusters of near-identical keypoints count once
            cell = np.round(points[keep] / 2).astype(np.int64)
            return len(np.unique(cell[:, 0] * 1_000_003 + cell[:, 1]))

        return min(distinct(src), distinct(dst))
