"""Speed: ingest against the bare model in the same run, stage seconds, memory, the machine."""

from __future__ import annotations

import logging
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..images import LoadedImage
from ..pipeline import Engine

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_speed(engine: Engine, pics: list[LoadedImage], ingest_s: float, n: int,
           rss_before: float) -> dict[str, Any]:
    """End-to-end ingest next to the bare ResNet-50 forward pass on the same images."""
    settings = engine.settings
    import torch

    from ..signals import TorchEmbeddingSignal
    from ..weights import build_resnet50

    class BareResNet50(TorchEmbeddingSignal):  # the whole network, classifier removed, 224 centre crop
        name, dim = "bare_resnet50", 2048

        def _build(self):
            return build_resnet50(self.settings)

    # (eager whatever NDID_TORCH_COMPILE says: the reference is torchvision's model as it ships)
    bare_signal = BareResNet50(settings.replace(torch_compile="false"), precision=engine.resnet.precision)
    model = bare_signal.model
    dtype = torch.bfloat16 if bare_signal.precision == "bf16" else torch.float32
    bs = settings.embed_batch_size
    tensors = [bare_signal.preprocess(pics[s:s + bs]).to(dtype).contiguous(memory_format=torch.channels_last)
               for s in range(0, len(pics), bs)]
    def throughput(net) -> float:
        with torch.inference_mode():
            net(tensors[0])  # warm-up
            t0 = time.perf_counter()
            for x in tensors:
                net(x)
            return len(pics) / (time.perf_counter() - t0)

    from ..signals import fuse_batchnorm

    # torchvision's ResNet-50 as it ships: the reference of the target. Median of three passes:
    # single passes of the same code ranged 14-20 img/s on a shared VM
    bare_runs = [throughput(model) for _ in range(3)]
    bare = float(np.median(bare_runs))
    fuse_batchnorm(getattr(model, "_orig_mod", model))  # stricter reference: BatchNorm folded (as NDID does)
    bare_fused = throughput(model)
    e2e = n / ingest_s
    timings = {k: round(v, 2) for k, v in engine.timings.items()}
    db = Path(settings.resolved_milvus_uri)
    disk = sum(f.stat().st_size for f in db.rglob("*") if f.is_file()) if db.is_dir() else (
        db.stat().st_size if db.exists() else 0)
    resnet_stage = n / engine.timings["resnet_s"] if engine.timings.get("resnet_s") else 0.0
    return {"images": n, "ingest_images_per_s": round(e2e, 2), "bare_resnet50_images_per_s": round(bare, 2),
            "bare_resnet50_runs": [round(b, 2) for b in bare_runs],
            "ndid_resnet_stage_images_per_s": round(resnet_stage, 2),
            "ndid_descriptor_compiled": engine.resnet.compiled_from,
            "bare_resnet50_bn_folded_images_per_s": round(bare_fused, 2),
            "ingest_to_bn_folded_ratio": round(e2e / bare_fused, 3),
            "ingest_to_bare_ratio": round(e2e / bare, 3), "precision": engine.resnet.precision,
            "stage_seconds": timings, "peak_rss_mb": round(peak_rss_mb(), 0),
            "rss_growth_mb": round(peak_rss_mb() - rss_before, 0),
            "index_vector_bytes_per_image": (64 + engine.resnet.dim) * 4,
            "index_raw_descriptor_bytes_per_image": engine.resnet.raw_dim * 4,
            "descriptor": settings.descriptor_name,
            "whitening": engine.resnet.whitening.version if engine.resnet.whitening else "none",
            "index_disk_bytes_per_image": round(disk / max(n, 1)), "torch_threads": torch.get_num_threads()}


def machine() -> dict[str, Any]:
    import os

    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


# ---------------------------------------------------------------- report
