"""The benchmark end to end on a tiny folder made from scikit-image photos (figures, not thresholds)."""

import json

import pytest

from ndid_tasks import benchmark
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.integration


def test_make_and_run_a_tiny_benchmark(tmp_path, photos, random_settings):
    originals, distractors = tmp_path / "o", tmp_path / "d"
    originals.mkdir()
    distractors.mkdir()
    names = list(photos)
    for n in names[:4]:
        (originals / f"{n}.jpg").write_bytes(jpeg_bytes(photos[n]))
    for n in names[4:]:
        (distractors / f"{n}.jpg").write_bytes(jpeg_bytes(photos[n]))
    made = benchmark.make_benchmark(originals, distractors, tmp_path / "bench", seed=1, negative_share=0.34)
    assert made["originals"] == 4 and made["queries"] == 4 * 3 + made["negative_queries"]
    gt = benchmark.read_ground_truth(tmp_path / "bench")
    assert {r["family"] for r in gt} == {"crop", "jpeg", "strong", "negative"}
    assert all((tmp_path / "bench" / "queries" / r["query"]).exists() for r in gt)

    report = benchmark.run_benchmark(random_settings, tmp_path / "bench", tmp_path / "out",
                                     methods="full,phash_only,resnet_only,peer_pdq")
    assert set(report["accuracy"]) == {"full", "phash_only", "resnet_only", "peer_pdq"}
    for method in report["accuracy"].values():
        assert 0.0 <= method["overall"]["micro_ap"] <= 1.0
        assert {"crop", "jpeg", "strong", "overall"} == set(method)
    assert report["accuracy"]["full"]["jpeg"]["recall_at_1"] == 1.0  # JPEG copies of 4 photos: all found
    assert report["untrained"] is True and report["speed"]["bare_resnet50_images_per_s"] > 0
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "UNTRAINED" in md and "micro-AP" in md
    for png in ("pr_curves.png", "families.png"):
        assert (tmp_path / "out" / png).stat().st_size > 5000
