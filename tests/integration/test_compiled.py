"""NDID_TORCH_COMPILE: an encoder compiled ahead of time once, reused by a fresh process with the
default settings (auto: load, never build), with the eager module's outputs; where compiling fails,
the eager module (slow to build: ~1-2 minutes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ndid_tasks.config import Settings
from ndid_tasks.images import load_image
from ndid_tasks.signals import TorchEmbeddingSignal
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class TinyEncoder(TorchEmbeddingSignal):
    """A small CNN standing in for ResNet-50 / CLIP (the same code path, seconds instead of minutes)."""

    name, dim = "tiny", 16
    input_size = 64

    def _build(self):
        import torch

        torch.manual_seed(self.settings.random_seed)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()

    def compare(self, a, b) -> float:
        return float(np.dot(a, b))


def encode_in_a_fresh_process(state_dir: Path, out: Path) -> str:
    """Like an Airflow task: a new interpreter builds the encoder and embeds the test photos."""
    code = (
        "import sys, numpy as np\n"
        "from ndid_tasks.config import Settings\n"
        "from tests.integration.test_compiled import TinyEncoder, pictures\n"
        f"sig = TinyEncoder(Settings(state_dir={str(state_dir)!r}, weights_mode='random'), precision='fp32')\n"
        f"np.save({str(out)!r}, sig.compute(pictures()))\n"
        "print(sig.compiled_from)\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def pictures():
    from tests.conftest import skimage_photo

    return [load_image(jpeg_bytes(skimage_photo(n)), n) for n in ("astronaut", "coffee", "rocket")]


@pytest.mark.skipif(shutil.which("g++") is None, reason="AOTInductor needs a C++ compiler (g++); none on this machine")
def test_compiled_once_then_loaded_by_a_fresh_process_with_eager_outputs(tmp_path):
    settings = Settings(state_dir=str(tmp_path), weights_mode="random", torch_compile="true")
    eager = TinyEncoder(settings.replace(torch_compile="false"), precision="fp32").compute(pictures())
    by_default = TinyEncoder(settings.replace(torch_compile="auto"), precision="fp32")
    by_default.compute(pictures()[:1])  # (auto: no package for this machine yet, and none is built)
    assert by_default.compiled_from == "eager" and not (tmp_path / "models" / "compiled").exists()
    compiled = TinyEncoder(settings, precision="fp32")
    out = compiled.compute(pictures())
    assert compiled.compiled_from == "compiled"
    np.testing.assert_allclose(out, eager, atol=1e-5)
    np.testing.assert_allclose(compiled.compute(pictures()[:1]), eager[:1], atol=1e-5)  # a lone query: batch of 1
    packages = list((tmp_path / "models" / "compiled").glob("tiny-*.pt2"))
    assert len(packages) == 1
    assert encode_in_a_fresh_process(tmp_path, tmp_path / "again.npy") == "cache"  # no recompilation
    np.testing.assert_allclose(np.load(tmp_path / "again.npy"), eager, atol=1e-5)
    # another seed is another model: never served the package built for this one
    other = TinyEncoder(settings.replace(random_seed=1), precision="fp32")
    assert other.compile_identity() != compiled.compile_identity()


def test_where_compiling_fails_the_eager_encoder_runs(tmp_path, monkeypatch, caplog):
    import torch._inductor

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler on this machine")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", broken)
    settings = Settings(state_dir=str(tmp_path), weights_mode="random", torch_compile="true")
    sig = TinyEncoder(settings, precision="fp32")
    out = sig.compute(pictures())
    assert sig.compiled_from == "eager" and "running the eager encoder" in caplog.text
    np.testing.assert_allclose(out, TinyEncoder(settings.replace(torch_compile="false"), precision="fp32")
                               .compute(pictures()), atol=0)
    assert not list((tmp_path / "models" / "compiled").glob("*.pt2"))
