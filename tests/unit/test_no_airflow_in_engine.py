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
