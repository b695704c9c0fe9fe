import numpy as np
import pytest

from ndid_tasks import augment
from ndid_tasks.calibration import default_calibration
from ndid_tasks.images import load_image
from ndid_tasks.pipeline import resolve_whitening
from ndid_tasks.signals import ResNetSignal
from ndid_tasks.whitening import Whitening, WhiteningError, fit_whitening, packaged_whitening
from tests.conftest import jpeg_bytes


def test_fit_apply_and_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    raw = np.abs(rng.normal(size=(300, 64))) + 5.0  # a big shared component, like random CNN features
    w = fit_whitening(raw, "test-descriptor", "random", dim=16)
    out = w.apply(raw[:10])
    assert out.shape == (10, 16) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    raw_cos = (raw / np.linalg.norm(raw, axis=1, keepdims=True)) @ (raw / np.linalg.norm(raw, axis=1, keepdims=True)).T
    white = w.apply(raw)
    off = ~np.eye(len(raw), dtype=bool)
    assert raw_cos[off].mean() > 0.9 and abs((white @ white.T)[off].mean()) < 0.1  # the shared part is gone
    again = Whitening.from_bytes(w.save(tmp_path / "w.npz").read_bytes())
    assert again.version == w.version and np.allclose(again.apply(raw[:3]), out[:3])
    assert fit_whitening(raw, "test-descriptor", "random", dim=16).version == w.version  # content-addressed


def test_bad_whitening_files_are_typed_errors(tmp_path):
    with pytest.raises(WhiteningError, match="not a readable"):
        Whitening.from_bytes(b"not an npz")
    w = fit_whitening(np.random.default_rng(1).normal(size=(50, 8)), "d", "random", dim=4)
    data = bytearray(w.to_bytes())
    tampered = Whitening(w.descriptor, w.weights_mode, w.mean + 1.0, w.projection)
    # a file whose arrays do not match the version it claims is refused
    import io
    import json

    buf = io.BytesIO()
    np.savez(buf, mean=tampered.mean, projection=tampered.projection,
             meta=np.frombuffer(json.dumps(w.meta()).encode(), dtype=np.uint8))
    with pytest.raises(WhiteningError, match="does not match its version"):
        Whitening.from_bytes(buf.getvalue())
    with pytest.raises(WhiteningError, match="expects 8-d"):
        w.apply(np.ones((1, 5)))
    assert len(data) > 0


def test_whitening_must_fit_the_descriptor(random_settings):
    w = packaged_whitening("random")
    with pytest.raises(WhiteningError, match="ndid whitening fit"):
        ResNetSignal(random_settings.replace(resnet_layer="layer4"), whitening=w)


def test_shipped_calibration_names_the_shipped_whitening(random_settings, tmp_path):
    cal = default_calibration("random")
    w = resolve_whitening(random_settings, cal)
    assert w is not None and w.version == cal.whitening_version and w.descriptor == random_settings.descriptor_name
    other = fit_whitening(np.random.default_rng(2).normal(size=(20, w.raw_dim)), w.descriptor, "random", dim=8)
    other.save(tmp_path / "other.npz")
    with pytest.raises(WhiteningError, match="was fitted with"):
        resolve_whitening(random_settings.replace(whitening_file=str(tmp_path / "other.npz")), cal)


def test_shipped_whitening_separates_copies_from_unrelated_photos(random_settings, photos):
    """Random-init ResNet-50 gives every pair of photos a cosine near 1; whitening spreads them so
    that copies stay close and unrelated photos do not."""
    names = list(photos)[:5]
    rng = np.random.default_rng(0)
    pics = [load_image(jpeg_bytes(photos[n]), n) for n in names]
    copies = [load_image(jpeg_bytes(augment.crop_area(photos[n], rng, 0.3), 40), n + "#copy") for n in names]
    sig = ResNetSignal(random_settings, precision="fp32", whitening=packaged_whitening("random"))
    raw = sig.compute_raw(pics)
    white, white_copies = sig.compute(pics), sig.compute(copies)
    off = ~np.eye(len(names), dtype=bool)
    raw_unrelated, unrelated = (raw @ raw.T)[off], (white @ white.T)[off]
    copy_cos = np.sum(white * white_copies, axis=1)
    print(f"raw unrelated cosine min {raw_unrelated.min():.3f}; whitened: unrelated max {unrelated.max():.3f}, "
          f"copies min {copy_cos.min():.3f}")
    assert raw_unrelated.min() > 0.8
    assert unrelated.max() < raw_unrelated.min()
    assert copy_cos.min() > unrelated.max()
