"""The global-descriptor slot: one whitened image vector per image, for candidates (top-K) and the
stage-1 feature ``resnet_cosine``. Which model fills it is ``NDID_DESCRIPTOR`` (resnet, sscd).

The slot keeps the names from when ResNet-50 was its only model -- index field ``resnet``, pair
feature ``resnet_cosine`` -- so stored calibrations and collections stay readable; what tells
descriptors apart is :attr:`Settings.descriptor_name`, which every whitening records, every
calibration names through its whitening, and the raw and images collections are named after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ..config import Settings
from ..images import LoadedImage
from .base import PairFeature
from .embedding import TorchEmbeddingSignal


class GlobalDescriptorSignal(TorchEmbeddingSignal):
    """A frozen encoder's L2-normalised descriptor (``compute_raw``: what the index keeps for
    re-whitening), then the :class:`~ndid_tasks.whitening.Whitening` (PCA, ``dim`` axes) if set."""

    name = "resnet"  # the slot (see module doc), whichever model fills it
    model_key: ClassVar[str]  # Settings.descriptor value that selects this model
    pair_features = (PairFeature("resnet_cosine", 1, "resnet", 0.0, False,
                                 "cosine of the whitened global descriptors (NDID_DESCRIPTOR)"),)

    def __init__(self, settings: Settings, precision: str | None = None, whitening=None) -> None:
        super().__init__(settings, precision)
        self.whitening = whitening
        if whitening is not None and whitening.descriptor != settings.descriptor_name:
            from ..whitening import DescriptorMismatchError

            raise DescriptorMismatchError(
                f"whitening {whitening.version} was fitted on {whitening.descriptor} descriptors but the settings "
                f"give {settings.descriptor_name}; a new layer or pooling: `ndid whitening fit`; a new model "
                f"(NDID_DESCRIPTOR): `ndid calibrate --bootstrap DIR --activate`, then a reprocess run")

    @property
    def raw_dim(self) -> int:
        """Length of the un-whitened descriptor."""
        raise NotImplementedError

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.whitening.dim if self.whitening is not None else self.raw_dim

    def squashed(self, images: Sequence[LoadedImage]):
        """The whole picture resized to input_size x input_size (aspect not kept), normalised: crops
        keep the detail they share with their original, and the batch needs no padding."""
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

    @classmethod
    def for_settings(cls, settings: Settings) -> GlobalDescriptorSignal:
        return cls(settings)


def mirrored(images: Sequence[LoadedImage]) -> list[LoadedImage]:
    """The images' content (flat borders already trimmed), flipped left-right."""
    import dataclasses

    from PIL import Image

    return [dataclasses.replace(im, image=im.content.transpose(Image.Transpose.FLIP_LEFT_RIGHT), box=None)
            for im in images]
