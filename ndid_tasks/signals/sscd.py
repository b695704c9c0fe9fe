"""SSCD (Pizzi et al., CVPR 2022): a descriptor trained for image copy detection, in the global
descriptor slot when ``NDID_DESCRIPTOR=sscd``. A TorchScript file imported with
``ndid models import sscd FILE`` (checksum recorded and re-checked on load); 512-d for the
published ``sscd_disc_mixup`` model, whatever width the imported file gives otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from ..images import LoadedImage
from ..weights import SSCD_INPUT_SIZE
from .descriptor import GlobalDescriptorSignal


class SSCDSignal(GlobalDescriptorSignal):
    """The imported TorchScript model on the whole image squashed to 288 x 288 (SSCD's own DISC
    evaluation), ImageNet normalisation; the output is L2-normalised, then whitened as any descriptor."""

    model_key = "sscd"
    compilable = False  # a TorchScript module is already compiled

    input_size = SSCD_INPUT_SIZE

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._raw_dim: int | None = None

    @property
    def raw_dim(self) -> int:
        if self._raw_dim is None:  # whatever the imported file gives (measured once, at first use)
            import torch

            from ..weights import descriptor_width

            self._raw_dim = descriptor_width(self.model, torch.bfloat16 if self.precision == "bf16" else torch.float32)
        return self._raw_dim

    def _build(self):
        from ..weights import build_sscd

        return build_sscd(self.settings)

    def preprocess(self, images: Sequence[LoadedImage]):
        return self.squashed(images)
