"""Shared fixtures. Unit tests need no servers; integration tests start the real local services."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NDID_SHARED_DATA", ROOT.parent / "shared" / "data"))

# photos shipped inside scikit-image: distinct scenes (chelsea == cat, so only one of them)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                  "colorwheel", "camera", "coins", "moon")


def skimage_photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    img = Image.fromarray(arr)
    return img.convert("RGB")


def one_object_in_two_photos(photos: dict[str, Image.Image]) -> tuple[Image.Image, Image.Image]:
    """Two shots of one object, simulated: the astronaut's face (~5 % of a frame) pasted into two
    different photos, at other places and sizes."""
    face = photos["astronaut"].crop((150, 40, 260, 170))
    one, two = photos["camera"].copy(), photos["coins"].resize((512, 512))
    one.paste(face, (40, 300))
    two.paste(face.resize((130, 154)), (330, 60))
    return one, two


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return {name: skimage_photo(name) for name in SKIMAGE_PHOTOS}


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "originals").is_dir():
        pytest.skip(f"real photos not available: {SHARED_DATA} is absent (it is outside the repository)")
    return SHARED_DATA


@pytest.fixture
def random_settings(tmp_path):
    from ndid_tasks.config import Settings

    return Settings(state_dir=str(tmp_path / "var"), weights_mode="random", ingest_batch_size=8,
                    embed_batch_size=8)


# ------------------------------------------------------------------ real local services

@pytest.fixture(scope="session")
def services_state(tmp_path_factory):
    """SeaweedFS S3 on a free port, for the whole session, in its own state dir."""
    from ndid_tasks import services
    from ndid_tasks.config import Settings

    port = _free_port()
    state = tmp_path_factory.mktemp("services")
    settings = Settings(state_dir=str(state), s3_endpoint_url=f"http://127.0.0.1:{port}",
                        weights_mode="random", ingest_batch_size=8, embed_batch_size=8,
                        s3_bucket="ndid-test")
    services.start_s3(settings)
    access, secret = services.ensure_local_credentials(settings)
    settings = settings.replace(s3_access_key=access, s3_secret_key=secret)
    yield settings
    services.stop_s3(settings)


@pytest.fixture
def s3_settings(services_state, tmp_path, request):
    """Settings on the live S3 server with a fresh bucket and a fresh embedded Milvus file."""
    import re

    bucket = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid() % 1000}"
    settings = services_state.replace(s3_bucket=bucket, milvus_uri=str(tmp_path / "milvus.db"))
    from ndid_tasks.storage import S3Store

    S3Store(settings).ensure_bucket()
    return settings


def _free_port() -> int:
    """A port P with P..P+3 and their +10000 gRPC twins free (the SeaweedFS layout), all below the
    kernel's ephemeral range: a port in it can be handed to any outgoing connection between this
    check and the server's bind (CI: SeaweedFS's master port 39714 "not available")."""
    import random

    from ndid_tasks.services import port_in_use, weed_ports

    ephemeral_low = 32768
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    # P + 10003 below the range, with room for a stack laid out above P (the distributed test: S3 at P + 10)
    highest = max(ephemeral_low - 10032, 10001)
    for _ in range(200):
        port = random.randint(10000, highest)
        if not any(port_in_use("127.0.0.1", p + d) for p in weed_ports(port).values() for d in (0, 10000)):
            return port
    raise RuntimeError("no free port range for the test S3 server")


def make_noise_image(seed: int, size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="session", autouse=True)
def _stop_embedded_milvus_at_the_end():
    """Stop embedded Milvus Lite servers in the last teardown, before pytest prints its summary
    (their atexit hook would otherwise log after it, into closed streams)."""
    yield
    import sys

    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is not None:
        manager.server_manager_instance.release_all()


def make_torchscript_descriptor(path: Path, dim: int = 64, seed: int = 0) -> Path:
    """A small copy-detection-shaped TorchScript model (a seeded random CNN + GeM pooling, (n, 3,
    H, W) -> (n, dim)), saved like SSCD's published file: what the SSCD path is tested with, since
    no real weights can be downloaded here."""
    import torch

    torch.manual_seed(seed)

    class TinyDescriptor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 7, stride=4, padding=3), torch.nn.ReLU(),
                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(32, dim, 3, stride=2, padding=1), torch.nn.ReLU())

        def forward(self, x):
            f = self.body(x).clamp(min=1e-6).pow(3.0).mean(dim=(2, 3)).pow(1.0 / 3.0)
            return torch.nn.functional.normalize(f, dim=1)

    import warnings

    with warnings.catch_warnings():  # tracing is deprecated for new models; SSCD's file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(TinyDescriptor().eval(), torch.rand(2, 3, 288, 288))
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path
