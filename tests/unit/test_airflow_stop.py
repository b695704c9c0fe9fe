"""`make airflow-down` / Ctrl-C stop everything `airflow standalone` started, also children that
moved to sessions of their own (a kill of the standalone process alone used to leave them)."""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))


def test_stop_ends_the_whole_tree_including_children_in_new_sessions():
    from airflow_standalone import descendants, stop

    from ndid_tasks.services import alive

    tree = subprocess.Popen(["bash", "-c", "sleep 120 & setsid sleep 120 & bash -c 'sleep 120' & wait"],
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while len(descendants(tree.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    children = descendants(tree.pid)
    try:
        assert len(children) >= 3, children
    finally:
        left = stop(tree.pid, grace=5)
    tree.wait(timeout=10)
    assert left == [] and not any(alive(p) for p in children)
