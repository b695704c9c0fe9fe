"""Bootstrap calibration end to end on scikit-image photos: whitening, pair LR, image-level threshold."""

import numpy as np
import pytest

from ndid_tasks import augment
from ndid_tasks.bootstrap import bootstrap_calibration
from ndid_tasks.pipeline import Engine, local_items
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.integration


def test_bootstrap_fits_whitening_and_an_image_level_threshold(random_settings, photos, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, img in photos.items():
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(img))
    cal, whitening = bootstrap_calibration(random_settings, folder, limit=None, copies=2)
    assert cal.whitening_version == whitening.version and whitening.fitted_on["source"] == "bootstrap"
    assert whitening.dim <= random_settings.whitening_dim and whitening.descriptor == random_settings.descriptor_name
    assert cal.band[1] == 1.0  # stage 1 never accepts alone
    assert cal.threshold > cal.band[0]
    ql = cal.metrics["query_level"]
    assert ql["queries"] > ql["positives"] > 0 and 0.0 <= ql["recall"] <= 1.0
    assert cal.metrics["pair_level_threshold"] > 0
    assert cal.training["same_scene_negatives"] >= 1
    print(f"bootstrap on {len(photos)} photos: band {cal.band}, threshold {cal.threshold:.3f} "
          f"(pair level {cal.metrics['pair_level_threshold']:.3f}), image level P {ql['precision']:.2f} "
          f"R {ql['recall']:.2f}, stage 2 {cal.stage2.features}")

    # the pair (calibration, whitening) drives an engine: a copy is found, verified
    engine = Engine(random_settings, calibration=cal, whitening=whitening)
    try:
        engine.ingest(local_items([folder]), run_id="r", run_at="t")
        rng = np.random.default_rng(3)
        copy = jpeg_bytes(augment.crop_area(photos["astronaut"], rng, 0.25), 50)
        best = engine.query(copy)[0]
        assert best["id"].endswith("astronaut.jpg") and best["stage"] == "stage2"
        assert engine.index.images.endswith(whitening.version.replace("-", "_"))
    finally:
        engine.close()
