"""Compiled encoders, built once per machine and reused by every process (AOTInductor).

``torch.compile`` recompiles in every process, and every Airflow task is a fresh process, so its
seconds-to-minutes of compilation never paid off. Here an encoder is exported with a dynamic batch
dimension and compiled ahead of time into a ``.pt2`` package under ``<model dir>/compiled/``,
named by everything its code depends on (torch version, CPU features, model identity, precision,
input size); later processes only load it (~10 ms). Where compiling is unavailable (no C++
compiler, an unsupported op) the eager module is used, with a warning -- never a failed task.

By default (NDID_TORCH_COMPILE=auto) a package is only loaded: building one takes 25-60 s and two
cores, which is a deployment step (`ndid models compile`, run by docker-compose's airflow-init),
not something a task should pay or two tasks race to do. Measured on a CPU with AMX
(bf16, docs/benchmarks.md, session 26): the layer3 descriptor 79 img/s eager, 129 compiled; on
an AVX2-only CPU it gained nothing (session 3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_BATCH = 256  # the dynamic batch dimension's upper bound (ingest batches are 32-64)


def cpu_features() -> list[str]:
    """The instruction-set flags the generated kernels may use (a package built with AMX must not
    be loaded where there is none)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", "fma")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return [platform.processor()]
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return sorted(f for f in wanted if f in flags)


def package_key(identity: Mapping[str, Any]) -> str:
    """The package's name: a digest of the model's identity, torch and the machine."""
    import torch

    parts = {**identity, "torch": torch.__version__, "machine": platform.machine(), "cpu": cpu_features()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def compiled_or_eager(module, example, identity: Mapping[str, Any], cache_dir: Path,
                      build: bool = True) -> tuple[Any, str]:
    """``module`` compiled ahead of time -- loaded from ``cache_dir`` when built before, else (with
    ``build``) built and stored there -- or ``module`` itself where there is none or that fails.
    Returns (callable, how) where how is "cache", "compiled" or "eager". ``example`` is a batch
    with the real dtype and memory format."""
    try:
        import torch
        from torch._inductor import aoti_compile_and_package, aoti_load_package
    except ImportError as exc:  # a torch without AOTInductor
        log.warning("AOTInductor unavailable (%s): running the eager encoder", exc)
        return module, "eager"
    path = cache_dir / f"{identity.get('name', 'encoder')}-{package_key(identity)}.pt2"
    if path.exists():
        try:
            return aoti_load_package(str(path)), "cache"
        except Exception as exc:  # noqa: BLE001 - a damaged package: rebuild it below
            log.warning("compiled package %s does not load (%s)%s", path, exc, "; compiling again" if build else "")
    if not build:
        from .signals.embedding import native_bf16_available  # (AMX: where compiling was measured to pay)

        if native_bf16_available():
            log.info("this CPU has AMX: `ndid models compile` builds %s for it once (1.6x the eager forward "
                     "measured); running it eager until then", identity.get("name"))
        return module, "eager"
    try:
        log.info("compiling %s ahead of time into %s (once per machine and model; minutes on a small CPU)",
                 identity.get("name"), path)
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with torch.inference_mode():
            exported = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")  # two processes may race: last one wins
        aoti_compile_and_package(exported, package_path=str(partial))
        partial.replace(path)
        return aoti_load_package(str(path)), "compiled"
    except Exception as exc:  # noqa: BLE001 - compilation is an optimisation; the eager module is correct
        log.warning("ahead-of-time compilation of %s failed (%s: %s); running the eager encoder",
                    identity.get("name"), type(exc).__name__, str(exc)[:300])
        return module, "eager"
