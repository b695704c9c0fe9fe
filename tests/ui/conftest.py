"""A real Airflow for the NDID pages: api-server (with the plugin), scheduler (LocalExecutor) and
dag-processor in a temporary AIRFLOW_HOME, beside the session's SeaweedFS and a Milvus Lite server
of its own; every process started here is stopped by its process group at the end."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
USERS = {"admin": "admin", "reviewer": "op"}  # name -> Airflow role (simple auth manager)


def free_port() -> int:
    """A free port below the kernel's ephemeral range (see tests.conftest._free_port)."""
    from tests.conftest import _free_port

    return _free_port()


class LocalAirflow:
    """What the test needs to talk to: the URL, the users' passwords, the NDID settings."""

    def __init__(self, settings, home: Path, port: int) -> None:
        self.settings = settings
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.passwords = {name: secrets.token_urlsafe(12) for name in USERS}

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__SECRET_KEY": "ndid-ui-test-" + "s" * 32,
            "AIRFLOW__API_AUTH__JWT_SECRET": "ndid-ui-test-" + "j" * 64,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "dags"), str(ROOT)]),
            "PYTHONWARNINGS": "ignore",
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "NDID_STATE_DIR": s.state_dir,
            "NDID_S3_ENDPOINT_URL": s.s3_endpoint_url,
            "NDID_S3_ACCESS_KEY": s.s3_access_key,
            "NDID_S3_SECRET_KEY": s.s3_secret_key,
            "NDID_S3_BUCKET": s.s3_bucket,
            "NDID_MILVUS_URI": s.milvus_uri,
            "NDID_WEIGHTS_MODE": s.weights_mode,
            "NDID_REVIEW_SAMPLE_RATE": str(s.review_sample_rate),
            "NDID_TASK_RETRIES": "0",
        }

    def airflow(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "airflow", *args], env={**os.environ, **self.env()},
                              capture_output=True, text=True, timeout=300, check=True)

    def token(self, user: str) -> str:
        body = json.dumps({"username": user, "password": self.passwords[user]}).encode()
        req = urllib.request.Request(f"{self.url}/auth/token", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)["access_token"]

    def api(self, method: str, path: str, user: str = "admin", body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data, method=method,
                                     headers={"Authorization": f"Bearer {self.token(user)}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)

    def wait(self, check, timeout: float, what: str, interval: float = 2.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = exc
            time.sleep(interval)
        logs = {p.name: p.read_text()[-2500:] for p in (Path(self.settings.state_dir) / "logs").glob("*.log")}
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}); logs: {logs}")


@pytest.fixture(scope="module")
def ui_stack(services_state, tmp_path_factory):
    """SeaweedFS (the session's) + a Milvus Lite server + Airflow with the NDID plugin."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it when run as root)")
    pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed: `make test` installs it")
    from ndid_tasks import services
    from ndid_tasks.storage import S3Store

    state = tmp_path_factory.mktemp("ui")
    milvus_port = free_port()
    settings = services_state.replace(state_dir=str(state), s3_bucket="ndid-ui",
                                      milvus_uri=services.milvus_server_uri(milvus_port), review_sample_rate=0.25)
    S3Store(settings).ensure_bucket()
    home = services.private_dir(state / "airflow")
    stack = LocalAirflow(settings, home, free_port())
    (home / "passwords.json").write_text(json.dumps(stack.passwords))
    names = ("api", "scheduler", "dag-processor")
    try:
        services.start_milvus(settings, port=milvus_port)
        stack.airflow("db", "migrate")
        stack.airflow("pools", "set", "ndid_milvus", "1", "Milvus Lite: one writer")
        logs = state / "logs"
        services.spawn(settings, "api", [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1",
                                         "--port", str(stack.port), "--workers", "1"], logs / "api.log", stack.env())
        services.spawn(settings, "scheduler", [sys.executable, "-m", "airflow", "scheduler"], logs / "scheduler.log",
                       stack.env())
        services.spawn(settings, "dag-processor", [sys.executable, "-m", "airflow", "dag-processor"],
                       logs / "dag-processor.log", stack.env())
        stack.wait(lambda: urllib.request.urlopen(f"{stack.url}/api/v2/monitor/health", timeout=5).status == 200,
                   180, "the Airflow api-server")
        yield stack
    finally:
        for name in (*names, "milvus"):
            services.stop_process(settings, name)
