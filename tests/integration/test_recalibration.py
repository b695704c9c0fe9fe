"""Refits on audited labels against a real Milvus Lite index: promote when not worse, refuse when worse."""

import os
import time

import numpy as np
import pytest

from ndid_tasks import augment
from ndid_tasks.calibrate import Label, holdout_mask, recalibrate
from ndid_tasks.calibration import default_calibration
from ndid_tasks.pipeline import Engine, local_items
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
    engine = Engine(settings)
    engine.ingest(local_items([folder]), run_id="setup", run_at="t")
    ids = {p.name[:-4]: f"file://{p.resolve()}" for p in folder.glob("*.jpg")}
    labels = [Label(ids[n], ids[f"{n}_{c}"], True, "alice") for n in names for c in ("c1", "c2")]
    labels += [Label(ids[a], ids[b], False, "bob") for i, a in enumerate(names) for b in names[i + 1:i + 4]]
    yield engine, settings, labels
    engine.close()


def test_too_few_labels_skip(labelled):
    engine, settings, labels = labelled
    result = recalibrate(settings, engine, labels[:5], default_calibration("random"), min_labels=20)
    assert result["status"] == "skipped" and "need >= 20" in result["reason"]


def test_consistent_labels_are_promoted_when_not_worse(labelled):
    engine, settings, labels = labelled
    active = default_calibration("random")
    first = recalibrate(settings, engine, labels, active, min_labels=20)
    assert first["status"] in ("promoted", "rejected")
    assert first["usable"] == len(labels) and first["heldout"] > 0
    # the same candidate against itself is "not worse": promoted
    again = recalibrate(settings, engine, labels, first["candidate"], min_labels=20)
    assert again["status"] == "promoted"
    assert again["candidate_eval"]["f1"] == pytest.approx(again["active_eval"]["f1"])


def test_a_worse_candidate_is_refused(labelled):
    engine, settings, labels = labelled
    y = np.array([int(lab.is_duplicate) for lab in labels])
    test = holdout_mask(y)
    # training labels flipped, held-out labels true: the candidate learns the opposite rule
    poisoned = [lab if test[i] else Label(lab.image_a, lab.image_b, not lab.is_duplicate, "mallory")
                for i, lab in enumerate(labels)]
    good = recalibrate(settings, engine, labels, default_calibration("random"), min_labels=20)["candidate"]
    result = recalibrate(settings, engine, poisoned, good, min_labels=20)
    assert result["status"] == "rejected"
    assert result["candidate_eval"]["average_precision"] < result["active_eval"]["average_precision"]
