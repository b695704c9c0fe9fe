"""The model store: where pretrained weights live, how they get there, how they are loaded.

Pretrained mode reads the standard files from the model directory (never from a hub at run time).
Random mode builds the same architectures with seeded random weights for tests and offline demos;
everything produced in that mode is marked ``untrained``. Checkpoints are loaded with
``weights_only=True`` (PyTorch files) or safetensors, and TorchScript descriptors (SSCD) with
``torch.jit.load`` after a checksum check -- nothing is unpickled.
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
SSCD = ModelSpec("sscd", "sscd_disc_mixup.torchscript.pt", None,
                 "SSCD disc_mixup copy-detection descriptor (Meta, MIT licence), TorchScript")
SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"
SSCD_INPUT_SIZE = 288  # SSCD's own DISC evaluation: the image squashed to 288 x 288, ImageNet normalisation
MODELS = {m.key: m for m in (RESNET50, CLIP_VIT_B_32, SSCD)}
DESCRIPTOR_MODELS = {"resnet50": RESNET50, "sscd": SSCD}  # Settings.descriptor -> the file it needs


def required_models(settings: Settings) -> tuple[ModelSpec, ...]:
    """The files pretrained mode reads with these settings: the descriptor's model and CLIP."""
    return DESCRIPTOR_MODELS[settings.descriptor], CLIP_VIT_B_32


def require_descriptor_weights(settings: Settings) -> None:
    """Fail now, with the fix in the message, if the descriptor's file is missing: ResNet-50 reads
    one in pretrained mode; SSCD always does (no architecture in code to initialise at random)."""
    spec = DESCRIPTOR_MODELS[settings.descriptor]
    if settings.weights_mode == "pretrained" or spec is not RESNET50:
        require_weights(settings, spec)


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
    elif spec is SSCD:
        descriptor_width(_torchscript_from_file(path))
    else:
        _clip_from_file(path)
    return digest


def import_weights(settings: Settings, key: str, source: Path, expected_sha256: str | None = None) -> Path:
    spec = MODELS[key]
    digest = verify_file(spec, source, expected_sha256)
    dest = model_path(settings, spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".partial")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
    _checksum_path(dest).write_text(digest + "\n")
    log.info("imported %s -> %s (sha256 %s)", source, dest, digest)
    return dest


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


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
    elif spec is SSCD:
        from torch.hub import download_url_to_file

        tmp = dest.with_suffix(".partial")
        download_url_to_file(SSCD_URL, str(tmp))
        _checksum_path(dest).write_text(verify_file(spec, tmp) + "\n")
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


def build_sscd(settings: Settings):
    """The imported SSCD TorchScript module, eval mode, after checking that the file is still the
    one imported (its sha256 was recorded then). Needed in both weights modes: there is no
    architecture in code to initialise at random; in random mode the results stay marked untrained."""
    path = require_weights(settings, SSCD)
    recorded = _checksum_path(path)
    if not recorded.exists():
        raise WeightsVerificationError(f"{path} has no recorded checksum; import it with `ndid models import sscd FILE`")
    if file_sha256(path) != recorded.read_text().strip():
        raise WeightsVerificationError(f"{path} changed since it was imported (sha256 differs from {recorded.name}); "
                                       f"import it again with `ndid models import sscd FILE`")
    return _torchscript_from_file(path)


def _torchscript_from_file(path: Path):
    """A TorchScript archive: code and tensors read by TorchScript's own loader (no Python unpickling)."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # deprecated for new models; SSCD is published as TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise WeightsVerificationError(f"{path} is not a TorchScript model: {exc}") from exc
    return model.eval()


def descriptor_width(model, dtype=None) -> int:
    """The length of the vector ``model`` gives for one image; a model that gives no such vector
    is refused (checked on import, before anything is indexed with it)."""
    import torch

    with torch.inference_mode():
        out = model(torch.zeros(2, 3, SSCD_INPUT_SIZE, SSCD_INPUT_SIZE, dtype=dtype or torch.float32))
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 or not 8 <= out.shape[1] <= 4096:
        raise WeightsVerificationError(f"a descriptor model must map (n, 3, {SSCD_INPUT_SIZE}, {SSCD_INPUT_SIZE}) "
                                       f"images to (n, d) vectors; this one gives "
                                       f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if not bool(torch.isfinite(out).all()):
        raise WeightsVerificationError("the descriptor model gives non-finite values")
    return int(out.shape[1])


def _clip_from_file(path: Path):
    import open_clip

    # open_clip loads .safetensors with safetensors and .pt/.bin with torch.load(weights_only=True)
    return open_clip.create_model(CLIP_ARCH, pretrained=str(path), weights_only=True)
