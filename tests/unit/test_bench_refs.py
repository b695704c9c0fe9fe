"""The benchmark's evaluation helpers (no servers): refs decided duplicates of other refs, the settings it measures with."""

from ndid_tasks.benchmark.evaluation import refs_called_duplicates
from ndid_tasks.decide import DecisionRecord


def test_refs_called_duplicates_lists_only_duplicate_decisions_by_file_name():
    records = [DecisionRecord(id="id-a", source="s3://b/a.jpg", decision="unique"),
               DecisionRecord(id="id-b", source="s3://b/b.jpg", decision="duplicate", matched_id="id-a",
                              probability=0.20684, stage="stage2"),
               DecisionRecord(id="id-c", source="s3://b/c.jpg", decision="error", error_reason="not_an_image"),
               DecisionRecord(id="id-d", source="s3://b/d.jpg", decision="duplicate", matched_id="gone",
                              probability=1.0, stage="exact")]
    names = {"id-a": "108041.jpg", "id-b": "108082.jpg", "id-c": "c.jpg", "id-d": "d.jpg"}
    found = refs_called_duplicates(records, names)
    assert found["refs"] == 3  # an unreadable ref cannot be called anything
    assert found["called_duplicates"] == [
        {"ref": "108082.jpg", "matched": "108041.jpg", "probability": 0.2068, "stage": "stage2"},
        {"ref": "d.jpg", "matched": "gone", "probability": 1.0, "stage": "exact"}]


def test_the_benchmark_measures_the_encoders_as_a_deployment_on_this_machine_runs_them(monkeypatch):
    """Where compiled encoders pay (AMX, bf16) and NDID_TORCH_COMPILE=auto leaves it to the machine,
    a deployment has built them (`ndid models compile`), so the benchmark builds them where missing;
    elsewhere, or with the setting or precision given, it keeps them as they are."""
    from ndid_tasks.benchmark.evaluation import as_deployed
    from ndid_tasks.config import Settings
    from ndid_tasks.signals import embedding

    monkeypatch.setattr(embedding, "native_bf16_available", lambda: True)
    assert as_deployed(Settings()).torch_compile == "true"
    assert as_deployed(Settings(torch_compile="false")).torch_compile == "false"
    assert as_deployed(Settings(precision="fp32")).torch_compile == "auto"
    monkeypatch.setattr(embedding, "native_bf16_available", lambda: False)
    assert as_deployed(Settings()).torch_compile == "auto"
