"""Signals: each knows how to compute itself for a batch of images and how to compare two values.

    exact   sha256 of the bytes             compare -> 1.0 if identical else 0.0
    phash   64-bit perceptual hash          compare -> Hamming distance (0..64)
    resnet  ResNet-50 pooled 2048-d, L2=1   compare -> cosine similarity
    clip    open_clip ViT-B-32 512-d, L2=1  compare -> cosine similarity

New signals (PDQ, local features, ...) plug in by subclassing :class:`Signal`.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import imagehash
import numpy as np

from .config import Settings
from .images import LoadedImage

log = logging.getLogger(__name__)


class Signal(ABC):
    name: ClassVar[str]
    dim: ClassVar[int]

    @abstractmethod
    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        """One row per image."""

    @abstractmethod
    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
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
            out[i] = imagehash.phash(im.image, hash_size=8).hash.flatten()
        return out

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.count_nonzero(np.asarray(a) != np.asarray(b)))

    @staticmethod
    def to_hex(bits: np.ndarray) -> str:
        return str(imagehash.ImageHash(np.asarray(bits, dtype=bool).reshape(8, 8)))


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
            t = F.pil_to_tensor(im.image)
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
    """Pooled ResNet-50, optionally centred on the corpus mean before L2 normalisation.

    Centring removes the component that every image shares (with random weights it makes all
    cosines ~0.99); the mean is data (``.npy``), fitted by ``ndid calibrate --bootstrap``.
    """

    name, dim = "resnet", 2048

    def __init__(self, settings: Settings, precision: str | None = None, center: np.ndarray | None = None) -> None:
        super().__init__(settings, precision)
        self._center = center

    @property
    def center(self) -> np.ndarray | None:
        if self._center is None and self.settings.resnet_centering:
            self._center = load_center(self.settings)
        return self._center

    def _build(self):
        from .weights import build_resnet50

        return build_resnet50(self.settings)

    def compute(self, images: Sequence[LoadedImage]) -> np.ndarray:
        return self.compute_from_raw(self.compute_raw(images))

    def compute_from_raw(self, raw: np.ndarray) -> np.ndarray:
        if self.center is None or not len(raw):
            return raw
        centred = raw - self.center[None, :]
        return (centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def compute_raw(self, images: Sequence[LoadedImage]) -> np.ndarray:
        return super().compute(images)


def center_path(settings: Settings):
    from importlib import resources
    from pathlib import Path

    if settings.resnet_center_file:
        return Path(settings.resnet_center_file)
    return resources.files("ndid_tasks").joinpath("data", f"resnet_center_{settings.weights_mode}.npy")


def load_center(settings: Settings) -> np.ndarray:
    """The mean vector for centring (.npy, loaded without pickle)."""
    from .calibration import CalibrationError

    path = center_path(settings)
    try:
        with path.open("rb") as fh:
            center = np.load(fh, allow_pickle=False)
    except FileNotFoundError as exc:
        raise CalibrationError(
            f"NDID_RESNET_CENTERING is on but there is no centre vector at {path}: fit one with "
            f"`ndid calibrate --bootstrap DIR --center-output FILE` and set NDID_RESNET_CENTER_FILE, "
            f"or set NDID_RESNET_CENTERING=false") from exc
    if center.shape != (2048,):
        raise ValueError(f"{path}: centre vector has shape {center.shape}, expected (2048,)")
    return center.astype(np.float32)


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


class LocalFeatures:
    """SIFT keypoints of an image and of its mirror (flipped copies must verify too)."""

    __slots__ = ("points", "descriptors", "mirror_points", "mirror_descriptors")

    def __init__(self, points, descriptors, mirror_points, mirror_descriptors) -> None:
        self.points, self.descriptors = points, descriptors
        self.mirror_points, self.mirror_descriptors = mirror_points, mirror_descriptors


class GeometricSignal(Signal):
    """Geometric verification: SIFT, ratio test, one-to-one matches, RANSAC homography inliers.

    ``compare`` returns the number of *distinct* inlier points (best of direct and mirrored):
    repeated matches onto blank backgrounds cannot inflate it, and no scale limit is imposed, so
    thumbnails verify. Expensive (~0.1 s an image), hence only run for ambiguous pairs.
    """

    name, dim = "geometry", 0
    ratio = 0.8
    ransac_px = 5.0

    def __init__(self, max_features: int = 1000) -> None:
        self.max_features = max_features

    def compute(self, images: Sequence[LoadedImage]) -> list[LocalFeatures]:
        import cv2

        sift = cv2.SIFT_create(nfeatures=self.max_features)
        out = []
        for im in images:
            grey = np.asarray(im.image.convert("L"))
            kp, desc = sift.detectAndCompute(grey, None)
            mkp, mdesc = sift.detectAndCompute(np.ascontiguousarray(grey[:, ::-1]), None)
            out.append(LocalFeatures(np.float32([k.pt for k in kp]).reshape(-1, 2), desc,
                                     np.float32([k.pt for k in mkp]).reshape(-1, 2), mdesc))
        return out

    def compare(self, a: LocalFeatures, b: LocalFeatures) -> float:
        return float(max(self._inliers(a.points, a.descriptors, b.points, b.descriptors),
                         self._inliers(a.mirror_points, a.mirror_descriptors, b.points, b.descriptors)))

    def _inliers(self, pa, da, pb, db) -> int:
        import cv2

        if da is None or db is None or len(da) < 4 or len(db) < 4:
            return 0
        matcher = cv2.BFMatcher(cv2.NORM_L2)
        best: dict[int, tuple[float, int]] = {}  # one-to-one: each b point keeps its best a point
        for pair in matcher.knnMatch(da, db, k=2):
            if len(pair) < 2:
                continue
            m, n = pair
            if m.distance < self.ratio * n.distance and (m.trainIdx not in best or m.distance < best[m.trainIdx][0]):
                best[m.trainIdx] = (m.distance, m.queryIdx)
        if len(best) < 4:
            return 0
        src = np.float32([pa[q] for _, q in best.values()])
        dst = np.float32([pb[t] for t in best])
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, self.ransac_px)
        if mask is None:
            return 0
        keep = mask.ravel().astype(bool)
        # distinct points on both sides: clusters of near-identical keypoints count once
        return min(len({tuple(p) for p in np.round(src[keep] / 2)}), len({tuple(p) for p in np.round(dst[keep] / 2)}))
