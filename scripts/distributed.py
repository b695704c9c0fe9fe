"""A real distributed NDID on this machine, the shape of docker-compose.yml without Docker.

    PostgreSQL (metadata DB) + Redis (Celery broker), both from Debian's packages, on 127.0.0.1
    Airflow 3: api-server, scheduler, dag-processor, two Celery workers (CeleryExecutor)
    Milvus Lite server (several writers; pool ndid_milvus with NDID_MILVUS_POOL_SLOTS=2) + SeaweedFS S3

    python scripts/distributed.py up       start everything (state under var/distributed/)
    python scripts/distributed.py down     stop everything this script started (by PID / process group)
    python scripts/distributed.py status

Every server binds 127.0.0.1 and needs a password generated at first start (kept in
var/distributed/secrets.env, mode 0600). ``tests/distributed`` drives it (``make test`` runs it).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airflow_env import ROOT

from ndid_tasks import services
from ndid_tasks.config import Settings

WORKERS = ("worker1", "worker2")
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class Stack:
    """Ports, folders and secrets of one local distributed stack (``base`` picks the ports)."""

    # every port below Linux's ephemeral range (32768 up), S3's +10000 gRPC twins included: a port
    # in that range can be an outgoing connection's source port when a server comes to bind it
    def __init__(self, state: Path, base: int = 21000) -> None:
        self.state = state.resolve()
        self.root = services.private_dir(self.state / "distributed")
        self.ports = {"postgres": base, "redis": base + 1, "api": base + 2, "milvus": base + 3,
                      "s3": base + 10, "worker1_logs": base + 4, "worker2_logs": base + 5}
        self.settings = Settings(state_dir=str(self.root), s3_endpoint_url=f"http://127.0.0.1:{self.ports['s3']}",
                                 weights_mode=os.environ.get("NDID_WEIGHTS_MODE", "random"))
        # PostgreSQL runs as the postgres user (it refuses root), which may not reach a folder under
        # a private home or pytest's temp root: its data lives in a folder of its own, owned by it
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        self.pg_root = Path(tempfile.gettempdir()) / f"ndid-postgres-{digest}"

    # ---------------------------------------------------------------- secrets
    def secrets(self) -> dict[str, str]:
        path = self.root / "secrets.env"
        if not path.exists():
            values = {"PG_PASSWORD": secrets.token_urlsafe(24), "REDIS_PASSWORD": secrets.token_urlsafe(24),
                      "JWT_SECRET": secrets.token_urlsafe(64), "API_SECRET": secrets.token_urlsafe(32),
                      "FERNET_KEY": _fernet_key()}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("".join(f"{k}={v}\n" for k, v in values.items()))
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)

    # ---------------------------------------------------------------- environment
    def airflow_env(self) -> dict[str, str]:
        """What every Airflow process and every task gets (the same values as docker-compose.yml)."""
        sec = self.secrets()
        s3_access, s3_secret = services.ensure_local_credentials(self.settings)
        db = f"postgresql+psycopg2://airflow:{sec['PG_PASSWORD']}@127.0.0.1:{self.ports['postgres']}/airflow"
        return {
            "AIRFLOW_HOME": str(services.private_dir(self.root / "airflow")),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__FERNET_KEY": sec["FERNET_KEY"],
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.ports['api']}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{sec['REDIS_PASSWORD']}@127.0.0.1:{self.ports['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.ports['api']}",
            "AIRFLOW__API__SECRET_KEY": sec["API_SECRET"],
            "AIRFLOW__API_AUTH__JWT_SECRET": sec["JWT_SECRET"],
            "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "ndid_airflow.worker_hostname",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "dags"), str(ROOT)]),
            "PYTHONWARNINGS": "ignore",
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            # NDID: the same settings for every worker
            "NDID_STATE_DIR": str(self.root),
            "NDID_S3_ENDPOINT_URL": self.settings.s3_endpoint_url,
            "NDID_S3_ACCESS_KEY": s3_access,
            "NDID_S3_SECRET_KEY": s3_secret,
            "NDID_MILVUS_URI": services.milvus_server_uri(self.ports["milvus"]),
            "NDID_MILVUS_POOL_SLOTS": "2",
            "NDID_WEIGHTS_MODE": self.settings.weights_mode,
        }

    # ---------------------------------------------------------------- servers
    def up(self) -> None:
        taken = [f"{k}:{p}" for k, p in self.ports.items() if services.port_in_use("127.0.0.1", p)
                 and not services.read_pid(self.settings, k.split("_")[0])]
        if taken:
            raise services.ServiceError(f"ports taken by another program: {taken}")
        services.start_s3(self.settings)
        services.start_milvus(self.settings, port=self.ports["milvus"])
        self.start_postgres()
        self.start_redis()
        env = {**os.environ, **self.airflow_env()}
        airflow = [sys.executable, "-m", "airflow"]
        subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        subprocess.run([*airflow, "pools", "set", "ndid_milvus", "2", "Milvus server: several writers"],
                       env=env, check=True, capture_output=True)
        logs = self.root / "logs"
        self.spawn("api", [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.ports["api"]),
                           "--workers", "1"], logs / "api.log")
        self.spawn("scheduler", [*airflow, "scheduler"], logs / "scheduler.log")
        self.spawn("dag-processor", [*airflow, "dag-processor"], logs / "dag-processor.log")
        for name in WORKERS:
            self.spawn(name, [*airflow, "celery", "worker", "--celery-hostname", f"{name}@%h", "--concurrency", "1",
                              "--without-gossip", "--without-mingle"], logs / f"{name}.log",
                       {"NDID_WORKER_NAME": name,
                        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports[f"{name}_logs"])})
        services.wait_until(lambda: self.api_ready(), 120, "Airflow api-server", logs / "api.log",
                            services.read_pid(self.settings, "api") or 0)

    def spawn(self, name: str, argv: list[str], log_path: Path, extra: dict[str, str] | None = None) -> int:
        if services.read_pid(self.settings, name):
            return services.read_pid(self.settings, name) or 0
        return services.spawn(self.settings, name, argv, log_path, env={**self.airflow_env(), **(extra or {})})

    def api_ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['api']}/api/v2/monitor/health", timeout=3):
                return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def start_postgres(self) -> None:
        """initdb (as the postgres user: PostgreSQL refuses root) + a password-protected role and
        database ``airflow``, listening on 127.0.0.1 only."""
        if services.read_pid(self.settings, "postgres"):
            return
        pg_bin = next((p for p in PG_BIN_CANDIDATES if (p / "postgres").exists()), None)
        if pg_bin is None:
            raise services.ServiceError("PostgreSQL is not installed: apt-get install postgresql")
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.pg_root.mkdir(mode=0o700, exist_ok=True)
        data, sock = self.pg_root / "data", self.pg_root / "socket"
        sock.mkdir(mode=0o700, exist_ok=True)
        if as_postgres:
            shutil.chown(self.pg_root, "postgres", "postgres")
            shutil.chown(sock, "postgres", "postgres")
        if not (data / "PG_VERSION").exists():
            data.mkdir(mode=0o700, exist_ok=True)
            pwfile = self.pg_root / "pw"
            pwfile.write_text(self.secrets()["PG_PASSWORD"] + "\n")
            if as_postgres:
                shutil.chown(data, "postgres", "postgres")
                shutil.chown(pwfile, "postgres", "postgres")
            os.chmod(pwfile, 0o600)
            subprocess.run([*as_postgres, str(pg_bin / "initdb"), "-D", str(data), "-U", "airflow",
                            "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"],
                           check=True, capture_output=True, cwd="/")
            pwfile.unlink()
        log_path = self.root / "logs" / "postgres.log"
        pid = services.spawn(self.settings, "postgres", [
            *as_postgres, str(pg_bin / "postgres"), "-D", str(data), "-h", "127.0.0.1",
            "-p", str(self.ports["postgres"]), "-k", str(sock)], log_path)
        services.wait_until(lambda: self._postgres_ready(), 60, "PostgreSQL", log_path, pid)
        env = {**os.environ, "PGPASSWORD": self.secrets()["PG_PASSWORD"]}
        exists = subprocess.run([str(pg_bin / "psql"), "-h", "127.0.0.1", "-p", str(self.ports["postgres"]), "-U",
                                 "airflow", "-d", "postgres", "-tAc", "SELECT 1 FROM pg_database WHERE datname='airflow'"],
                                env=env, capture_output=True, text=True, check=True).stdout.strip()
        if exists != "1":
            subprocess.run([str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.ports["postgres"]), "-U",
                            "airflow", "airflow"], env=env, check=True, capture_output=True)

    def _postgres_ready(self) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.ports["postgres"])) == 0

    def start_redis(self) -> None:
        if services.read_pid(self.settings, "redis"):
            return
        redis = shutil.which("redis-server")
        if redis is None:
            raise services.ServiceError("Redis is not installed: apt-get install redis-server")
        data = services.private_dir(self.root / "redis")
        conf = data / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:  # the password in a 0600 file, not on the command line
            fh.write(f"bind 127.0.0.1\nport {self.ports['redis']}\nprotected-mode yes\n"
                     f"requirepass {self.secrets()['REDIS_PASSWORD']}\nsave \"\"\nappendonly no\ndir {data}\n")
        log_path = self.root / "logs" / "redis.log"
        pid = services.spawn(self.settings, "redis", [redis, str(conf)], log_path)
        services.wait_until(lambda: services.port_in_use("127.0.0.1", self.ports["redis"]), 30, "Redis",
                            log_path, pid)

    def down(self) -> list[str]:
        stopped = []
        for name in (*WORKERS, "scheduler", "dag-processor", "api", "redis", "postgres"):
            if services.stop_process(self.settings, name, timeout=30):
                stopped.append(name)
        return stopped + services.services_down(self.settings)

    def purge(self) -> None:
        """Delete the stack's data (stopped first): tests leave nothing behind."""
        self.down()
        shutil.rmtree(self.pg_root, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def status(self) -> dict[str, int | None]:
        names = (*WORKERS, "scheduler", "dag-processor", "api", "redis", "postgres", "s3", "milvus")
        return {name: services.read_pid(self.settings, name) for name in names}


def _fernet_key() -> str:
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def main(argv: list[str]) -> int:
    action = argv[1] if len(argv) > 1 else "status"
    stack = Stack(Path(os.environ.get("NDID_STATE_DIR", ROOT / "var")))
    if action == "up":
        stack.up()
        print(json.dumps(stack.status(), indent=2))
        print(f"Airflow API/UI: http://127.0.0.1:{stack.ports['api']} (CeleryExecutor, 2 workers)")
    elif action == "down":
        print("stopped: " + ", ".join(stack.down()))
    else:
        print(json.dumps(stack.status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
