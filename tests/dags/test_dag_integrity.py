"""DagBag integrity: the DAG files import cleanly and carry what operators need."""

import pytest

EXPECTED = {"ndid_ingest", "ndid_recalibrate"}


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert EXPECTED <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_tags_owner_retries_docs(dagbag, dag_id):
    dag = dagbag.get_dag(dag_id)
    assert "ndid" in dag.tags
    assert dag.doc_md and len(dag.doc_md) > 200
    for t in dag.tasks:
        assert t.owner == "ndid"
        assert t.retries >= 1, t.task_id
        assert t.execution_timeout is not None, t.task_id


def test_ingest_params_and_pool(dagbag):
    dag = dagbag.get_dag("ndid_ingest")
    assert {"bucket", "prefix", "start", "end", "batch_size", "reprocess"} <= set(dag.params.keys())
    pools = {t.task_id: t.pool for t in dag.tasks}
    assert pools["index"] == pools["decide"] == "ndid_milvus"
    assert pools["embed"] != "ndid_milvus" and pools["plan"] != "ndid_milvus"  # S3 only; embedding in parallel


def test_dag_files_are_thin():
    from pathlib import Path

    for path in (Path(__file__).resolve().parents[2] / "dags").glob("ndid_*.py"):
        assert len(path.read_text().splitlines()) < 250, f"{path.name}: logic belongs in ndid_tasks"
