"""`make airflow-ui`: `airflow standalone` on 127.0.0.1:8080 for watching NDID runs (services started first);
`make airflow-down` (or Ctrl-C) stops it and every process it started.

It runs in the same weights mode as `make demo` (pretrained where the weights are present, else the
loudly-flagged random mode) and says so at start and on the DAG page.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from airflow_env import airflow_environ, local_weights_mode, prepare_airflow

from ndid_tasks import services
from ndid_tasks.config import Settings, load_env_file


def pid_file(env: dict[str, str]) -> Path:
    return Path(env["NDID_STATE_DIR"]) / "run" / "airflow.pid"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): Airflow's components can start their own sessions."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop(pid: int, grace: float = 20.0) -> list[int]:
    """SIGTERM the process group we started and every descendant, SIGKILL what is left after ``grace``."""
    targets = [pid, *descendants(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for target in targets:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(services.alive(t) for t in targets):
            time.sleep(0.3)
        if not any(services.alive(t) for t in targets):
            break
    return [t for t in targets if services.alive(t)]


def unpause_recalibration(proc: subprocess.Popen, timeout: float = 180.0) -> None:
    """Labels written on the NDID review page should recalibrate: unpause ndid_recalibrate once the
    dag-processor has parsed it (ndid_ingest stays paused: trigger it by hand)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = subprocess.run([sys.executable, "-m", "airflow", "dags", "unpause", "ndid_recalibrate"],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            print("ndid_recalibrate unpaused: labels from the NDID review page (Plugins > NDID) recalibrate")
            return
        time.sleep(5)


def main(argv: list[str]) -> int:
    env = airflow_environ()
    os.environ.update(env)
    if argv[1:] == ["--stop"]:
        try:
            pid = int(pid_file(env).read_text())
        except (FileNotFoundError, ValueError):
            print("Airflow is not running (no pid file)")
            return 0
        left = stop(pid) if services.alive(pid) else []
        pid_file(env).unlink(missing_ok=True)
        print("Airflow stopped" + (f"; still alive: {left}" if left else ""))
        return 1 if left else 0
    local_weights_mode(env["NDID_STATE_DIR"])
    load_env_file(env["NDID_STATE_DIR"])
    settings = Settings.from_env()
    for st in services.services_up(settings):
        print(f"{st.name}: {st.address} (pid {st.pid})")
    os.environ.setdefault("NDID_MILVUS_URI", services.milvus_server_uri())
    prepare_airflow(env)
    # `airflow standalone` starts its components as `airflow ...` subprocesses: find ours first
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    print(f"Airflow UI: http://127.0.0.1:8080  (login printed below / in {env['AIRFLOW_HOME']}); "
          f"stop with Ctrl-C or `make airflow-down`")
    proc = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], start_new_session=True)
    pid_file(env).parent.mkdir(parents=True, exist_ok=True)
    pid_file(env).write_text(str(proc.pid))
    threading.Thread(target=unpause_recalibration, args=(proc,), daemon=True).start()

    def on_signal(signum, frame):
        print("\nstopping Airflow and everything it started ...")
        left = stop(proc.pid)
        pid_file(env).unlink(missing_ok=True)
        print("stopped" + (f"; still alive: {left}" if left else ""))
        sys.exit(0)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = proc.wait()
    stop(proc.pid)
    pid_file(env).unlink(missing_ok=True)
    if code < 0:  # ended by a signal: `make airflow-down` or a kill
        print("Airflow stopped")
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
