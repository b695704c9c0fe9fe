"""The benchmark end to end on a tiny folder made from scikit-image photos (figures, not thresholds)."""

import csv
import json
from pathlib import Path

import pytest

from ndid_tasks import benchmark
from tests.conftest import jpeg_bytes, one_object_in_two_photos

pytestmark = pytest.mark.integration


def source_folders(tmp_path, photos, n_originals):
    """The first photos as originals, the rest as distractors."""
    originals, distractors = tmp_path / "o", tmp_path / "d"
    originals.mkdir()
    distractors.mkdir()
    for k, (name, img) in enumerate(photos.items()):
        ((originals if k < n_originals else distractors) / f"{name}.jpg").write_bytes(jpeg_bytes(img))
    return originals, distractors


def test_make_and_run_a_tiny_benchmark(tmp_path, photos, random_settings):
    originals, distractors = source_folders(tmp_path, photos, 4)
    made = benchmark.make_benchmark(originals, distractors, tmp_path / "bench", seed=1, negative_share=0.34)
    assert made["originals"] == 4
    assert made["queries"] == 4 * 5 + made["negative_queries"] + made["hard_negative_queries"]
    gt = benchmark.read_ground_truth(tmp_path / "bench")
    assert {r["family"] for r in gt} == {"crop", "jpeg", "strong", "rotation", "tight_crop", "negative",
                                         "hard_negative"}
    assert made["hard_negative_queries"] >= 1  # same-scene views: one in refs, one as a negative query
    assert all((tmp_path / "bench" / "queries" / r["query"]).exists() for r in gt)

    report = benchmark.run_benchmark(random_settings, tmp_path / "bench", tmp_path / "out",
                                     methods="full,phash_only,resnet_only,peer_pdq")
    assert set(report["accuracy"]) == {"full", "phash_only", "resnet_only", "peer_pdq"}
    for method in report["accuracy"].values():
        assert 0.0 <= method["overall"]["micro_ap"] <= 1.0
        assert {"crop", "jpeg", "strong", "rotation", "tight_crop", "overall"} == set(method)
    assert report["accuracy"]["full"]["jpeg"]["recall_at_1"] == 1.0  # JPEG copies of 4 photos: all found
    assert report["untrained"] is True and report["speed"]["bare_resnet50_images_per_s"] > 0
    assert report["hard_negatives"]["queries"] == made["hard_negative_queries"]
    # the refs among themselves: distinct photos, so any duplicate decision at ingest is listed as a false positive
    rd = report["refs_called_duplicates"]
    assert rd["refs"] == made["refs"] and all(d["ref"] != d["matched"] for d in rd["called_duplicates"])
    assert report["speed"]["index_vector_bytes_per_image"] == (64 + 256) * 4
    # too few refs for a words background: no share of the refs ingested after the first 64
    assert "stage2_share_at_ingest_later" not in report["speed"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "UNTRAINED" in md and "micro-AP" in md
    said = f"{len(rd['called_duplicates'])} decided a duplicate" if rd["called_duplicates"] else "none decided a duplicate"
    assert f"**Refs among themselves** ({made['refs']} refs, one per source photo): {said} of an earlier ref" in md
    # and every pair of them through the verifier, whatever the gates let through
    pairwise = report["refs_pairwise"]
    assert pairwise["refs"] == made["refs"] and pairwise["pairs"] == made["refs"] * (made["refs"] - 1) // 2
    assert all(d["inliers"] > 6 for d in pairwise["above_chance"])
    assert f"**Refs matched pairwise** (all {pairwise['pairs']:,} pairs of the {made['refs']} refs" in md
    crops = report["by_crop_area"]  # 4 crops + 4 tight crops, binned by the area they keep
    assert sum(c["queries"] for c in crops) == 8
    assert any(c["kept_area"] in ("0%-10%", "10%-15%") for c in crops)  # tight crops keep 5-15 %
    assert all(0 <= c["recall_at_threshold"] <= c["recall_at_1"] <= 1 for c in crops)
    assert set(report["stage2_share_by_kind"]) == {"copies", "unique"}
    assert "area kept" in md
    assert report["visual_words_searched"] == random_settings.visual_words_candidates > 0
    assert (f"the {random_settings.visual_words_candidates} nearest refs by words are candidates (up to "
            f"{random_settings.visual_words_max_candidates} for images with few words)") in md
    for png in ("pr_curves.png", "families.png", "crop_area.png"):
        assert (tmp_path / "out" / png).stat().st_size > 5000
    # every query's outcome, and a picture of the copies it missed
    with (tmp_path / "out" / "queries.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    family_of = {r["query"]: r["family"] for r in rows}
    assert sorted(r["query"] for r in rows) == sorted(r["query"] for r in gt)
    assert all(r["original"] == "" for r in rows if r["family"] in ("negative", "hard_negative"))
    missed = [r for r in rows if r["original"] and not (r["top1_correct"] == "True" and r["called_duplicate"] == "True")]
    assert report["missed_copies"] == len(missed) == saved["missed_copies"]
    assert (tmp_path / "out" / "misses.png").exists() == bool(missed)
    assert f"**Missed copies** (top 1 not the original, or under the threshold): {len(missed)}" in md
    # the cropped copies again, split by the keypoints the query has (as queries.csv counts them)
    keypoints = {r["query"]: int(r["keypoints"]) for r in rows}
    assert all(k >= 0 for k in keypoints.values())
    textures = {c["keypoints"]: c for c in report["by_crop_keypoints"]}
    few = [q for q in keypoints if family_of[q] in ("crop", "tight_crop") and keypoints[q] < 10]
    assert sum(c["queries"] for c in textures.values()) == 8 and textures.get("< 10", {}).get("queries", 0) == len(few)
    assert "by the SIFT keypoints the query has" in md


def test_descriptor_ablation_reports_every_lever(tmp_path, photos, random_settings):
    originals, distractors = source_folders(tmp_path, photos, 3)
    benchmark.make_benchmark(originals, distractors, tmp_path / "bench", seed=2, negative_share=0.34)
    report = benchmark.descriptor_ablation(random_settings, tmp_path / "bench", tmp_path / "out")
    rows = report["rows"]
    assert len(rows) == 2 * 2 * 2 * 2 * 2  # input x layer x pooling x flip x whitening
    assert {r["dims"] for r in rows if r["whitening"] == "none"} == {1024, 2048}
    assert all(0.0 <= r["micro_ap"] <= 1.0 and 0.0 <= r["crop_candidates10"] <= 1.0 for r in rows)
    assert all(r["jpeg_r1"] == 1.0 for r in rows if r["whitening"] == "none")  # JPEG copies: always found
    assert "UNTRAINED" in (tmp_path / "out" / "descriptors.md").read_text()


def test_refs_matched_pairwise_lists_a_copy_among_the_refs_but_not_one_object_in_two_photos(
        tmp_path, photos, random_settings):
    """Every pair of refs through the verifier: a repost among the source photos is listed and
    called (scored by the one ranking), the same face in two different photos is not."""
    import numpy as np

    from ndid_tasks import augment
    from ndid_tasks.benchmark.evaluation import refs_matched_pairwise
    from ndid_tasks.images import load_image
    from ndid_tasks.pipeline import Engine, local_items

    folder = tmp_path / "refs"
    folder.mkdir()
    one, two = one_object_in_two_photos(photos)
    repost = augment.crop_area(photos["coffee"], np.random.default_rng(0), 0.5)
    for name, img in {"camera_face": one, "coins_face": two, "coffee": photos["coffee"], "rocket": photos["rocket"],
                      "coffee_repost": repost}.items():
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(img, 75))
    items = local_items([folder])
    with Engine(random_settings) as engine:
        engine.ingest(items, run_id="t", run_at="t")
        refs = [load_image(Path(i.source).read_bytes(), i.id) for i in items]
        found = refs_matched_pairwise(engine, refs, {i.id: Path(i.source).name for i in items}, chunk=2)
        threshold = engine.matcher().threshold
    assert found["refs"] == 5 and found["pairs"] == 10
    [pair] = found["above_chance"]
    assert {pair["ref"], pair["matched"]} == {"coffee.jpg", "coffee_repost.jpg"}
    assert pair["inliers"] > 6 and pair["probability"] >= threshold
    assert pair["called_duplicate"] is True
