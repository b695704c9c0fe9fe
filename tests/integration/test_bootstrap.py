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


def test_same_scene_pairs_whose_views_match_are_not_negatives(random_settings, photos):
    """A same-scene negative is two views in which nothing matches geometrically. The halves of a
    mirror-symmetric picture are mirrored crops of each other (measured: >= 143 inliers for this
    one, an ordinary photo's halves <= 5): that pair is dropped from the fit and the check set,
    an ordinary photo's pair stays a negative."""
    from PIL import Image, ImageOps

    from ndid_tasks.bootstrap import _scene_sources, bootstrap_features_from_images
    from ndid_tasks.images import load_image

    cat = photos["chelsea"].convert("RGB")
    cat = cat.resize((cat.width // 2, cat.height))
    symmetric = Image.new("RGB", (2 * cat.width, cat.height))
    symmetric.paste(cat, (0, 0))
    symmetric.paste(ImageOps.mirror(cat), (cat.width, 0))
    names = ["astronaut", "coffee", "SYMMETRIC", "rocket", "camera", "coins", "moon", "hubble_deep_field", "coffee"]
    pictures = [symmetric if n == "SYMMETRIC" else photos[n] for n in names]
    originals = [load_image(jpeg_bytes(p), f"{k}-{n}") for k, (n, p) in enumerate(zip(names, pictures, strict=True))]
    assert list(_scene_sources(len(originals))) == [2, 8]  # the symmetric picture and a plain photo
    boot = bootstrap_features_from_images(random_settings, originals, copies=1)
    assert boot.summary["same_scene_dropped"] == 1 and boot.summary["same_scene_negatives"] == 1
    first_scene = 2 * len(originals)  # (the originals, one copy of each, then two views per scene source)
    scene_queries = [q for q, target in boot.check_set.queries if target is None and q >= first_scene]
    assert scene_queries == [first_scene + 3]  # the plain photo's second view; the symmetric pair is gone
    assert first_scene not in boot.check_set.corpus and first_scene + 2 in boot.check_set.corpus
