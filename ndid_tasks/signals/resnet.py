"""The default global descriptor: ResNet-50 layer3 GeM, whitened (see descriptor.py for the slot)."""

from __future__ import annotations

from collections.abc import Sequence

from ..images import LoadedImage
from .descriptor import GlobalDescriptorSignal


class ResNetSignal(GlobalDescriptorSignal):
    """ResNet-50 descriptor (the default): GeM pooling of a stage's feature map (layer3 by default).

    layer3 + GeM on the whole (squashed) image keeps the spatial detail that crops share with
    their original; with layer3 the network stops there, so layer4 costs nothing.
    """

    model_key = "resnet50"

    @property
    def raw_dim(self) -> int:
        return 1024 if self.settings.resnet_layer == "layer3" else 2048

    def _build(self):
        from ..weights import build_resnet50

        return PooledResNet(build_resnet50(self.settings), self.settings.resnet_layer, self.settings.resnet_gem_p)

    def compile_identity(self) -> dict:
        return {**super().compile_identity(), "descriptor": self.settings.descriptor_name}

    def weights_files(self) -> list:
        from ..weights import RESNET50, model_path

        return [] if self.settings.untrained else [model_path(self.settings, RESNET50)]

    def preprocess(self, images: Sequence[LoadedImage]):
        if self.settings.resnet_input == "center_crop":
            return super().preprocess(images)
        return self.squashed(images)


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
