import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "ndid_tasks"


def test_engine_never_imports_airflow():
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "airflow"]
    assert not offenders


def test_nothing_is_unpickled():
    for path in ENGINE.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text and "joblib.load" not in text, path
        assert "allow_pickle=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_local_services_stay_out_of_the_production_path():
    """The DAG glue, the plugin and the modules their tasks import never load ndid_tasks.services
    (the local dev servers): only the CLI, the benchmark and the scripts do."""
    root = ENGINE.parent
    production = [root / "dags" / "ndid_airflow.py", root / "dags" / "ndid_ingest.py",
                  root / "dags" / "ndid_recalibrate.py", root / "plugins" / "ndid_pages.py",
                  root / "plugins" / "ndid_links.py"]
    production += [p for p in ENGINE.glob("*.py") if p.stem not in ("services", "cli", "scale_bench", "benchmark")]
    offenders = []
    for path in production:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.endswith("services") or ".services." in n]
    assert not offenders
