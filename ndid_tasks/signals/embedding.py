"""Frozen torch image encoders: batching, no grad, channels_last, bf16 where the CPU has it."""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ..config import Settings
from ..images import LoadedImage
from .base import Signal

log = logging.getLogger(__name__)


def native_bf16_available() -> bool:
    """True where bf16 pays off on this CPU: AMX tiles (ResNet-50 48 vs 21 img/s fp32).

    AVX512-BF16 alone is not enough: measured there, ResNet-50 gained 20 % but CLIP lost 45 %.
    """
    import torch

    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


class TorchEmbeddingSignal(Signal):
    """A frozen CNN/ViT image encoder: batched, no grad, channels_last, bf16 where native."""

    higher_is_closer = True  # cosine similarity of L2-normalised embeddings

    input_size: ClassVar[int] = 224
    compilable: ClassVar[bool] = True  # compiling ahead of time applies (NDID_TORCH_COMPILE)
    _lock = threading.Lock()

    def __init__(self, settings: Settings, precision: str | None = None) -> None:
        self.settings = settings
        requested = precision or settings.precision
        self.precision = ("bf16" if native_bf16_available() else "fp32") if requested == "auto" else requested
        self._model = None
        self.compiled_from = "eager"  # NDID_TORCH_COMPILE: "cache", "compiled" or "eager" once built
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
                    if self.settings.torch_compile != "false" and self.compilable:
                        model = self._compiled(model)
                    self._model = model
        return self._model

    def _compiled(self, model):
        """The module compiled ahead of time, built once per machine and model (by `ndid models
        compile`, or here with NDID_TORCH_COMPILE=true) and loaded by every later process (see
        ndid_tasks.compiled); the eager module where there is none or compiling fails."""
        import torch

        from ..compiled import compiled_or_eager

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        example = torch.zeros(2, 3, self.input_size, self.input_size, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        compiled, self.compiled_from = compiled_or_eager(model, example, self.compile_identity(),
                                                         self.settings.resolved_model_dir / "compiled",
                                                         build=self.settings.torch_compile == "true")
        return compiled

    def compile_identity(self) -> dict:
        """Everything a compiled package of this encoder depends on besides torch and the CPU."""
        identity = {"name": self.name, "class": type(self).__name__, "precision": self.precision,
                    "input_size": self.input_size, "weights_mode": self.settings.weights_mode}
        if self.settings.untrained:
            identity["seed"] = self.settings.random_seed
        for path in self.weights_files():
            stat = path.stat()
            identity[path.name] = [stat.st_size, stat.st_mtime_ns]
        return identity

    def weights_files(self) -> list:
        """The files the encoder's weights come from (none for seeded random weights)."""
        return []

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

    @classmethod
    def for_settings(cls, settings: Settings) -> TorchEmbeddingSignal:
        return cls(settings)


def precision_agreement(signal_cls: type[TorchEmbeddingSignal], settings: Settings,
                        images: Sequence[LoadedImage]) -> float:
    """Minimum cosine between bf16 and fp32 embeddings of the same images (1.0 = identical)."""
    fast = signal_cls(settings, precision="bf16").compute(images)
    exact = signal_cls(settings, precision="fp32").compute(images)
    return float(np.min(np.sum(fast * exact, axis=1)))
