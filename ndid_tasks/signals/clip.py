"""CLIP ViT-B-32 image embeddings: an optional stage-2 feature (kept only where it pays)."""

from __future__ import annotations

from collections.abc import Sequence

from ..images import LoadedImage
from .base import PairFeature
from .embedding import TorchEmbeddingSignal


class ClipSignal(TorchEmbeddingSignal):
    name, dim = "clip", 512
    pair_features = (PairFeature("clip_cosine", 2, "clip", 0.0, True, "cosine of the CLIP ViT-B-32 image embeddings"),)

    def _build(self):
        from ..weights import build_clip_visual

        visual, mean, std = build_clip_visual(self.settings)
        self._mean, self._std = tuple(mean), tuple(std)
        return visual

    def weights_files(self) -> list:
        from ..weights import CLIP_VIT_B_32, model_path

        return [] if self.settings.untrained else [model_path(self.settings, CLIP_VIT_B_32)]

    def preprocess(self, images: Sequence[LoadedImage]):
        self.model  # noqa: B018 - building the model sets CLIP's own mean/std
        return super().preprocess(images)
