"""The global descriptor: ResNet-50 layer3 GeM, whitened; candidates (top-K) and a stage-1 feature."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import Settings
from ..images import LoadedImage
from .base import PairFeature
from .embedding import TorchEmbeddingSignal


class ResNetSignal(TorchEmbeddingSignal):
    """ResNet-50 descriptor: GeM pooling of a stage's feature map (layer3 by default), then whitening.

    ``compute_raw`` gives the L2-normalised pooled descriptor (what the index keeps for re-whitening);
    ``compute`` applies the :class:`~ndid_tasks.whitening.Whitening` (PCA, ``dim`` axes) when one is
    set. layer3 + GeM on the whole (squashed) image keeps the spatial detail that crops share with
    their original; with layer3 the network stops there, so layer4 costs nothing.
    """

    name = "resnet"
    pair_features = (PairFeature("resnet_cosine", 1, "resnet", 0.0, False, "cosine of the whitened ResNet-50 descriptors"),)

    def __init__(self, settings: Settings, precision: str | None = None, whitening=None) -> None:
        super().__init__(settings, precision)
        self.whitening = whitening
        if whitening is not None and whitening.descriptor != settings.resnet_descriptor:
            from ..whitening import WhiteningError

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
        from ..weights import build_resnet50

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
