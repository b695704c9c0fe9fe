"""Start `airflow standalone` on 127.0.0.1:8080 for watching NDID runs (services started first)."""

from __future__ import annotations

import os
import sys

from airflow_env import airflow_environ, prepare_airflow

from ndid_tasks import services
from ndid_tasks.config import Settings


def main() -> None:
    env = airflow_environ()
    os.environ.update(env)
    services.load_env_file(env["NDID_STATE_DIR"])
    settings = Settings.from_env()
    for st in services.services_up(settings):
        print(f"{st.name}: {st.address} (pid {st.pid})")
    os.environ.setdefault("NDID_MILVUS_URI", services.milvus_server_uri())
    prepare_airflow(env)
    # `airflow standalone` starts its components as `airflow ...` subprocesses: find ours first
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    print(f"Airflow UI: http://127.0.0.1:8080  (login printed below / in {env['AIRFLOW_HOME']})")
    os.execv(sys.executable, [sys.executable, "-m", "airflow", "standalone"])


if __name__ == "__main__":
    main()
