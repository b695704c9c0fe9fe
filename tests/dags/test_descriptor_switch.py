"""NDID_DESCRIPTOR=sscd end to end, with a TorchScript model the test builds (no real weights can
be downloaded here): import, bootstrap + activate, a real ndid_ingest run, a query -- each
descriptor with its own whitening, calibration pointer and index collection."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ndid_tasks import augment, cli
from ndid_tasks.calibration_store import CalibrationStore
from ndid_tasks.config import Settings
from ndid_tasks.pipeline import Engine
from ndid_tasks.storage import S3Store
from tests.conftest import jpeg_bytes, make_torchscript_descriptor
from tests.dags.test_ingest_dag import boundary, put_image, records_of, run_ingest

pytestmark = pytest.mark.integration


def test_a_torchscript_descriptor_indexes_decides_and_answers_queries(dagbag, airflow_env, photos, tmp_path,
                                                                      monkeypatch, capsys):
    monkeypatch.setenv("NDID_DESCRIPTOR", "sscd")
    settings = Settings.from_env()
    model = make_torchscript_descriptor(tmp_path / "sscd_disc_mixup.torchscript.pt", dim=64)
    assert cli.main(["models", "import", "sscd", str(model)]) == cli.EXIT_OK

    folder = tmp_path / "bootstrap"
    folder.mkdir()
    for name, img in photos.items():
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(img))
    resnet_pointer = CalibrationStore(settings.replace(descriptor="resnet50")).store
    before = resnet_pointer.get_bytes("calibration/active.json") if resnet_pointer.exists("calibration/active.json") \
        else None
    capsys.readouterr()
    assert cli.main(["calibrate", "--bootstrap", str(folder), "--activate", "--copies", "2"]) == cli.EXIT_OK
    assert "first calibration of descriptor sscd-" in capsys.readouterr().out
    store = CalibrationStore(settings)
    cal = store.active()
    assert cal is not None and store.active_key == "calibration/active-sscd.json"
    whitening = store.whitening(cal.whitening_version)
    assert whitening is not None and whitening.descriptor == settings.descriptor_name and whitening.raw_dim == 64
    after = resnet_pointer.get_bytes("calibration/active.json") if resnet_pointer.exists("calibration/active.json") \
        else None
    assert after == before  # the ResNet-50 descriptor's calibration is left where it was

    s3 = S3Store(airflow_env)
    t0 = boundary()
    for name in ("astronaut", "coffee", "rocket"):
        put_image(s3, f"images/sscd/orig/{name}.jpg", photos[name])
    time.sleep(1.1)
    rng = np.random.default_rng(1)
    put_image(s3, "images/sscd/copies/astronaut_q20.jpg", photos["astronaut"], 20)
    put_image(s3, "images/sscd/copies/coffee_crop.jpg", augment.crop_area(photos["coffee"], rng, 0.5))
    put_image(s3, "images/sscd/other/chelsea.jpg", photos["chelsea"])
    t1 = boundary()
    run_ingest(dagbag, airflow_env, t0, t1)  # (no prefix param: dag.test keeps a given one for later runs)
    records = {r["id"].split("/images/sscd/")[1]: r for r in records_of(airflow_env, t0, t1)}
    assert len(records) == 6 and {r["calibration_version"] for r in records.values()} == {cal.version}
    assert records["copies/astronaut_q20.jpg"]["original_id"].endswith("sscd/orig/astronaut.jpg")
    assert records["copies/coffee_crop.jpg"]["original_id"].endswith("sscd/orig/coffee.jpg")
    assert {k: r["decision"] for k, r in records.items() if not k.startswith("copies/")} == \
        dict.fromkeys(("orig/astronaut.jpg", "orig/coffee.jpg", "orig/rocket.jpg", "other/chelsea.jpg"), "unique")

    with Engine(settings) as engine:  # the collection is named by the SSCD whitening, 64-d raw vectors
        assert engine.index.images == settings.images_collection(whitening.version)
        assert engine.resnet.raw_dim == 64 and engine.index.count() == 6
    (tmp_path / "q.jpg").write_bytes(jpeg_bytes(photos["rocket"], 25))
    capsys.readouterr()
    assert cli.main(["query", str(tmp_path / "q.jpg"), "--json"]) == cli.EXIT_OK
    answer = json.loads(capsys.readouterr().out)
    assert answer["matches"][0]["id"].endswith("sscd/orig/rocket.jpg") and answer["calibration"] == cal.version


def test_switching_descriptor_without_its_calibration_says_what_to_run(random_settings, tmp_path):
    from ndid_tasks.weights import import_weights
    from ndid_tasks.whitening import DescriptorMismatchError

    settings = random_settings.replace(descriptor="sscd")
    import_weights(settings, "sscd", make_torchscript_descriptor(tmp_path / "m.pt"))
    with Engine(settings) as engine, pytest.raises(DescriptorMismatchError, match="calibrate --bootstrap"):
        engine.index  # noqa: B018 - the shipped calibration belongs to the ResNet-50 descriptor
