"""The model store: where pretrained weights live, how they get there, how they are loaded.

Pretrained mode reads the standard files from the model directory (never from a hub at run time).
Random mode builds the same architectures with seeded random weights for tests and offline demos;
everything produced in that mode is marked ``untrained``. Checkpoints are loaded with
``weights_only=True`` (PyTorch files) or safetensors -- nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .errors import PermanentError

log = logging.getLogger(__name__)


class MissingWeightsError(PermanentError, FileNotFoundError):
    """Pretrained weights are not in the model directory."""


class WeightsVerificationError(PermanentError, ValueError):
    """A weights file is not the one it claims to be."""


@dataclass(frozen=True)
class ModelSpec:
    key: str  # name used on the command line
    filename: str  # standard file name inside the model directory
    sha256_prefix: str | None  # torchvision names files <name>-<first 8 hex of sha256>.pth
    description: str


RESNET50 = ModelSpec("resnet50", "resnet50-11ad3fa6.pth", "11ad3fa6",
                     "torchvision ResNet-50, ImageNet1K_V2 weights")
CLIP_VIT_B_32 = ModelSpec("clip", "open_clip_vit_b_32_laion2b_s34b_b79k.safetensors", None,
                          "open_clip ViT-B-32, laion2b_s34b_b79k")
CLIP_ARCH, CLIP_PRETRAINED_TAG = "ViT-B-32", "laion2b_s34b_b79k"
MODELS = {m.key: m for m in (RESNET50, CLIP_VIT_B_32)}


def model_path(settings: Settings, spec: ModelSpec) -> Path:
    return settings.resolved_model_dir / spec.filename


def require_weights(settings: Settings, spec: ModelSpec) -> Path:
    path = model_path(settings, spec)
    if not path.exists():
        raise MissingWeightsError(
            f"{spec.description.removesuffix(' weights')} weights not found at {path}. Where a network exists run "
            f"`ndid models fetch {spec.key}`; otherwise copy the file here with "
            f"`ndid models import {spec.key} FILE`. For tests and offline demos set "
            f"NDID_WEIGHTS_MODE=random (results are then marked untrained).")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(spec: ModelSpec, path: Path, expected_sha256: str | None = None) -> str:
    """Check a candidate weights file; return its sha256. Raises WeightsVerificationError."""
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise WeightsVerificationError(f"{path}: sha256 {digest} != expected {expected_sha256}")
    if spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
        raise WeightsVerificationError(
            f"{path}: sha256 {digest[:8]}... does not match {spec.filename} (expected {spec.sha256_prefix}...)")
    # Whatever the checksum says, the file must load into the architecture, strictly.
    if spec is RESNET50:
        _resnet_from_file(path)
    else:
        _clip_from_file(path)
    return digest


def import_weights(settings: Settings, key: str, source: Path, expected_sha256: str | None = None) -> Path:
    spec = MODELS[key]
    verify_file(spec, source, expected_sha256)
    dest = model_path(settings, spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".partial")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
    log.info("imported %s -> %s", source, dest)
    return dest


def fetch_weights(settings: Settings, key: str) -> Path:
    """Download with the libraries' own code (needs a network), verify, and store."""
    spec = MODELS[key]
    dest = model_path(settings, spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if spec is RESNET50:
        from torch.hub import download_url_to_file
        from torchvision.models import ResNet50_Weights

        tmp = dest.with_suffix(".partial")
        download_url_to_file(ResNet50_Weights.IMAGENET1K_V2.url, str(tmp), hash_prefix=spec.sha256_prefix)
        verify_file(spec, tmp)
        tmp.replace(dest)
    else:
        from open_clip import pretrained

        cfg = pretrained.get_pretrained_cfg(CLIP_ARCH, CLIP_PRETRAINED_TAG)
        downloaded = Path(pretrained.download_pretrained(cfg, cache_dir=str(dest.parent / "hf-cache")))
        verify_file(spec, downloaded)
        shutil.copyfile(downloaded, dest)
    return dest


# ---------------------------------------------------------------- builders

def _seed(settings: Settings, salt: int) -> None:
    import torch

    torch.manual_seed(settings.random_seed * 1000 + salt)


def build_resnet50(settings: Settings):
    """ResNet-50 with the classifier removed (outputs the 2048-d pooled feature), eval mode."""
    import torch
    from torchvision.models import resnet50

    if settings.untrained:
        log.warning("NDID_WEIGHTS_MODE=random: ResNet-50 has SEEDED RANDOM weights (seed %d); "
                    "results are UNTRAINED", settings.random_seed)
        _seed(settings, 50)
        model = resnet50(weights=None)
    else:
        model = _resnet_from_file(require_weights(settings, RESNET50))
    model.fc = torch.nn.Identity()
    return model.eval().requires_grad_(False)


def _resnet_from_file(path: Path):
    import torch
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


def build_clip_visual(settings: Settings):
    """open_clip ViT-B-32 image tower, eval mode, plus its preprocessing numbers (mean, std)."""
    import open_clip

    if settings.untrained:
        log.warning("NDID_WEIGHTS_MODE=random: CLIP has SEEDED RANDOM weights; results are UNTRAINED")
        _seed(settings, 32)
        model = open_clip.create_model(CLIP_ARCH, pretrained=None)
    else:
        model = _clip_from_file(require_weights(settings, CLIP_VIT_B_32))
    cfg = open_clip.pretrained.get_pretrained_cfg(CLIP_ARCH, CLIP_PRETRAINED_TAG)
    return model.visual.eval().requires_grad_(False), cfg["mean"], cfg["std"]


def _clip_from_file(path: Path):
    import open_clip

    # open_clip loads .safetensors with safetensors and .pt/.bin with torch.load(weights_only=True)
    return open_clip.create_model(CLIP_ARCH, pretrained=str(path), weights_only=True)
