"""`ndid bench make` on folders of synthetic pictures (no servers)."""

import numpy as np
from PIL import Image

from ndid_tasks import benchmark


def pictures(folder, names):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:  # textured enough for every attack, distinct per name
        noise = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((160, 120), Image.Resampling.BICUBIC).save(folder / f"{name}.jpg", quality=95)
    return folder


def test_skipping_the_first_files_makes_a_benchmark_of_the_others(tmp_path):
    """--skip-originals / --skip-distractors leave out the first sorted files (another
    benchmark's), then --max-* count from there; the summary records what was skipped."""
    originals = pictures(tmp_path / "o", [f"o{k}" for k in range(5)])
    distractors = pictures(tmp_path / "d", [f"d{k}" for k in range(8)])
    made = benchmark.make_benchmark(originals, distractors, tmp_path / "b", seed=1, max_originals=2,
                                    skip_originals=2, skip_distractors=3)
    truth = benchmark.read_ground_truth(tmp_path / "b")
    assert {r["original"] for r in truth if r["original"]} == {"o2.jpg", "o3.jpg"}
    refs = {p.name for p in (tmp_path / "b" / "refs").iterdir()}
    assert {"o2.jpg", "o3.jpg"} <= refs and not refs & {"o0.jpg", "o1.jpg", "o4.jpg", "d0.jpg", "d1.jpg", "d2.jpg"}
    used = refs | {r["query"] for r in truth if not r["original"]}
    assert all(f"d{k}" in " ".join(used) for k in range(3, 8))  # every later distractor, as a ref or a negative
    assert not any(f"d{k}." in name for name in used for k in range(3))  # (also as scene__/neg__ views)
    assert made["originals"] == 2 and made["skipped"] == {"originals": 2, "distractors": 3}
    everything = benchmark.make_benchmark(originals, distractors, tmp_path / "all", seed=1)
    assert everything["originals"] == 5 and everything["skipped"] == {"originals": 0, "distractors": 0}


def test_composite_families_are_added_on_request_and_leave_every_other_query_as_it_was(tmp_path):
    """--with picture_in_picture / collage / collage_letterboxed / pair add one copy per original holding it as a part of a
    bigger picture whose other parts are negative-query photos (never indexed); every other query
    is byte for byte the same as without them, and an unknown family is refused."""
    import pytest

    originals = pictures(tmp_path / "o", [f"o{k}" for k in range(3)])
    distractors = pictures(tmp_path / "d", [f"d{k}" for k in range(8)])
    plain = benchmark.make_benchmark(originals, distractors, tmp_path / "plain", seed=4)
    both = benchmark.make_benchmark(originals, distractors, tmp_path / "both", seed=4,
                                    optional=["picture_in_picture", "collage", "collage_letterboxed", "pair"])
    assert both["families"] == [*plain["families"], "picture_in_picture", "collage", "collage_letterboxed", "pair"]
    rows = {r["query"]: r for r in benchmark.read_ground_truth(tmp_path / "both")}
    added = {q: r for q, r in rows.items()
             if r["family"] in ("picture_in_picture", "collage", "collage_letterboxed", "pair")}
    assert len(added) == 12 and {r["original"] for r in added.values()} == {f"o{k}.jpg" for k in range(3)}
    for q in {r["query"] for r in benchmark.read_ground_truth(tmp_path / "plain")}:
        assert (tmp_path / "plain" / "queries" / q).read_bytes() == (tmp_path / "both" / "queries" / q).read_bytes()
    refs = {p.name for p in (tmp_path / "both" / "refs").iterdir()}
    for q, r in added.items():
        with Image.open(tmp_path / "both" / "queries" / q) as im:  # the original is a part of it, not all of it
            assert im.size == (640, 480) if r["family"] != "pair" else max(im.size) >= 480
        original = np.asarray(Image.open(originals / r["original"]).convert("RGB").resize((64, 48)), np.float32)
        whole = np.asarray(Image.open(tmp_path / "both" / "queries" / q).convert("RGB").resize((64, 48)), np.float32)
        assert np.abs(whole - original).mean() > 10  # the other parts are other photos
    negatives = {r["query"] for r in rows.values() if r["family"] == "negative"}
    assert negatives and not {n.removeprefix("neg__") for n in negatives} & refs  # the pool is never indexed
    with pytest.raises(ValueError, match="unknown optional families"):
        benchmark.make_benchmark(originals, distractors, tmp_path / "bad", seed=4, optional=["meme"])
