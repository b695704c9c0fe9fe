"""The environment for running NDID's Airflow locally (demo, UI): one place, used by both scripts."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def airflow_environ(state_dir: str | Path = "var") -> dict[str, str]:
    """Env vars for a project-local Airflow: SQLite home under var/, our dags/plugins, 2-core sizing."""
    home = (ROOT / state_dir / "airflow").resolve()
    home.mkdir(parents=True, exist_ok=True)
    secret_file = home / "jwt_secret"
    if not secret_file.exists():
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(64))
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",  # the default 32 forks 32 workers (5 GB) on 2 cores
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "PYTHONWARNINGS": "ignore",
        "NDID_STATE_DIR": str((ROOT / state_dir).resolve()),
    }


def prepare_airflow(env: dict[str, str]) -> None:
    """`airflow db migrate` and the Milvus pool (NDID_MILVUS_POOL_SLOTS; 1 for Milvus Lite)."""
    from ndid_tasks.config import Settings

    pool_slots = Settings.from_env().milvus_pool_slots
    airflow = [sys.executable, "-m", "airflow"]
    full = {**os.environ, **env}
    subprocess.run([*airflow, "db", "migrate"], env=full, check=True, capture_output=True)
    subprocess.run([*airflow, "pools", "set", "ndid_milvus", str(pool_slots),
                    "Milvus writers: 1 for Milvus Lite, more for a Milvus server"],
                   env=full, check=True, capture_output=True)


def local_weights_mode(state_dir: str) -> str:
    """NDID_WEIGHTS_MODE for everything local -- the demo, the Airflow UI, the ``ndid`` command: as
    set in the environment, else pretrained where the weights are present, else random. Recorded in
    ``<state>/ndid.env`` (which ``ndid`` and the DAGs read), so they all run in the demo's mode; said
    loudly, since random weights only demonstrate the pipeline. Call it before load_env_file()."""
    from ndid_tasks import weights
    from ndid_tasks.config import Settings, set_env_value

    mode = os.environ.get("NDID_WEIGHTS_MODE")
    if mode is None:
        probe = Settings.from_env()
        have = all(weights.model_path(probe, s).exists() for s in weights.MODELS.values())
        mode = "pretrained" if have else "random"
    os.environ["NDID_WEIGHTS_MODE"] = mode
    set_env_value(state_dir, "NDID_WEIGHTS_MODE", mode)
    if mode == "random":
        print(f"!! NDID runs UNTRAINED (NDID_WEIGHTS_MODE=random: seeded random weights; no pretrained weights "
              f"in {Settings.from_env().resolved_model_dir}). Import them with `ndid models import`; the next "
              f"`make demo` / `make airflow-ui` then switches to pretrained.")
    else:
        print(f"NDID runs with pretrained weights (NDID_WEIGHTS_MODE={mode})")
    return mode
