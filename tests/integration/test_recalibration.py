"""Refits on audited labels against a real Milvus Lite index: promote when not worse, refuse when worse."""

import os
import time

import numpy as np
import pytest

from ndid_tasks import augment
from ndid_tasks.calibration import default_calibration
from ndid_tasks.labels import Label
from ndid_tasks.pipeline import Engine, local_items
from ndid_tasks.recalibration import holdout_mask, recalibrate
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, photos):
    """An index of 8 photos + 2 copies each, and labels: copies vs originals (1), photo pairs (0)."""
    from ndid_tasks.config import Settings

    folder = tmp_path_factory.mktemp("labelled")
    settings = Settings(state_dir=str(folder / "var"), weights_mode="random", embed_batch_size=8)
    rng = np.random.default_rng(0)
    names = list(photos)[:8]
    t = time.time() - 1000
    for n, name in enumerate(names):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(photos[name]))
        os.utime(folder / f"{name}.jpg", (t + n, t + n))
        (folder / f"{name}_c1.jpg").write_bytes(jpeg_bytes(augment.attack_jpeg(photos[name], rng)))
        (folder / f"{name}_c2.jpg").write_bytes(jpeg_bytes(augment.crop_area(photos[name], rng, 0.3)))
    with Engine(settings) as engine:
        ids = ingest_folder(engine, folder)
        labels = [Label(ids[n], ids[f"{n}_{c}"], True, "alice") for n in names for c in ("c1", "c2")]
        labels += [Label(ids[a], ids[b], False, "bob") for i, a in enumerate(names) for b in names[i + 1:i + 4]]
        yield engine, settings, labels


def ingest_folder(engine, folder) -> dict[str, str]:
    """Index every picture of ``folder``; file stem -> image id."""
    engine.ingest(local_items([folder]), run_id="setup", run_at="t")
    return {p.name[:-4]: f"file://{p.resolve()}" for p in folder.glob("*.jpg")}


def test_too_few_labels_skip(labelled):
    engine, _, labels = labelled
    result = recalibrate(engine, labels[:5], default_calibration("random"), min_labels=20)
    assert result["status"] == "skipped" and "need >= 20" in result["reason"]


def test_consistent_labels_are_promoted_when_not_worse(labelled):
    engine, _, labels = labelled
    active = default_calibration("random")
    first = recalibrate(engine, labels, active, min_labels=20)
    assert first["status"] in ("promoted", "rejected")
    assert first["usable"] == len(labels) and first["heldout"] > 0
    # the same candidate against itself is "not worse": promoted
    again = recalibrate(engine, labels, first["candidate"], min_labels=20)
    assert again["status"] == "promoted"
    assert again["candidate_eval"]["f1"] == pytest.approx(again["active_eval"]["f1"])


def test_a_worse_candidate_is_refused(labelled):
    engine, _, labels = labelled
    y = np.array([int(lab.is_duplicate) for lab in labels])
    test = holdout_mask(y)
    # training labels flipped, held-out labels true: the candidate learns the opposite rule
    poisoned = [lab if test[i] else Label(lab.image_a, lab.image_b, not lab.is_duplicate, "mallory")
                for i, lab in enumerate(labels)]
    good = recalibrate(engine, labels, default_calibration("random"), min_labels=20)["candidate"]
    result = recalibrate(engine, poisoned, good, min_labels=20)
    assert result["status"] != "promoted"
    if result["status"] == "rejected":
        assert result["candidate_eval"]["average_precision"] < result["active_eval"]["average_precision"]
        assert any("held-out labels" in r for r in result["reasons"])
    else:  # refused before fitting: mallory's flipped labels contradict the active model's confident calls
        assert "mallory" in result["refused_auditors"]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, photos):
    """An index big enough for the system's own check set: 32 unrelated pictures, 8 photos, a JPEG
    copy and an exact copy of each."""
    from ndid_tasks.config import Settings
    from tests.conftest import make_noise_image

    folder = tmp_path_factory.mktemp("guarded")
    settings = Settings(state_dir=str(folder / "var"), weights_mode="random", embed_batch_size=8)
    rng = np.random.default_rng(1)
    t = time.time() - 5000
    for k in range(32):
        path = folder / f"noise{k:02d}.jpg"
        path.write_bytes(jpeg_bytes(make_noise_image(300 + k)))
        os.utime(path, (t + k, t + k))
    names = list(photos)[:8]
    for n, name in enumerate(names):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(photos[name]))
        os.utime(folder / f"{name}.jpg", (t + 100 + n, t + 100 + n))
        (folder / f"{name}_jpeg.jpg").write_bytes(jpeg_bytes(augment.attack_jpeg(photos[name], rng)))
        (folder / f"{name}_exact.jpg").write_bytes((folder / f"{name}.jpg").read_bytes())
    with Engine(settings) as engine:
        ids = ingest_folder(engine, folder)
        honest = [Label(ids[n], ids[f"{n}_{c}"], True, "ann") for n in names for c in ("jpeg", "exact")]
        honest += [Label(ids[a], ids[b], False, "ann") for i, a in enumerate(names) for b in names[i + 1:i + 3]]
        yield engine, settings, honest


def test_inverted_labels_are_refused_with_the_reason(guarded):
    """The defect: 28 fully inverted labels of one auditor were promoted (then an unrelated photo was
    called a duplicate and a CMYK copy unique)."""
    from ndid_tasks.recalibration import IndexCheckSet

    engine, _, honest = guarded
    inverted = [Label(lab.image_a, lab.image_b, not lab.is_duplicate, "mallory") for lab in honest]
    result = recalibrate(engine, inverted, default_calibration("random"), min_labels=10,
                         check_set=IndexCheckSet(engine))
    assert result["status"] == "skipped", result
    assert "mallory" in result["refused_auditors"] and "mallory" in result["reason"]
    exact_errors = [e for e in result["label_errors"] if "exact copy" in e["reason"]]
    assert len(exact_errors) == 8  # every exact copy labelled "not duplicate"


def test_a_candidate_worse_on_the_check_set_is_refused(guarded):
    """Held-out labels can come from the same bad source as the training labels; the system's own
    check set (attacked copies and negatives it makes itself) cannot."""
    from ndid_tasks.recalibration import IndexCheckSet

    engine, _, honest = guarded
    active = default_calibration("random")
    check = IndexCheckSet(engine)
    # no exact copies among them (no confident calls to contradict), every label inverted
    subtle = [Label(lab.image_a, lab.image_b, not lab.is_duplicate, "eve") for lab in honest
              if "_exact" not in lab.image_b]
    result = recalibrate(engine, subtle, active, min_labels=10, check_set=check)
    assert result["status"] != "promoted", result
    if result["status"] == "rejected":
        assert any("check set" in r for r in result["reasons"]), result["reasons"]
        assert result["check_set"]["candidate"]["recall"] < result["check_set"]["active"]["recall"] or \
            result["check_set"]["candidate"]["false_positives"] > result["check_set"]["active"]["false_positives"]
    else:  # or its auditor already contradicted the active model's confident calls
        assert "eve" in result["refused_auditors"]
    honest_result = recalibrate(engine, honest, active, min_labels=10, check_set=check)
    assert honest_result["refused_auditors"] == {} and honest_result["label_errors"] == []
    assert "unavailable" not in honest_result["check_set"]["active"]  # 32+ unique images: a real check set
