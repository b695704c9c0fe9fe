import warnings

import pytest
import torch

from ndid_tasks import weights
from ndid_tasks.config import Settings


def test_missing_weights_name_both_commands(tmp_path):
    s = Settings(state_dir=str(tmp_path), weights_mode="pretrained")
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.build_resnet50(s)
    text = str(err.value)
    assert "ndid models fetch resnet50" in text and "ndid models import resnet50" in text
    assert "NDID_WEIGHTS_MODE=random" in text


def test_random_mode_is_seeded_and_reproducible(tmp_path):
    s = Settings(state_dir=str(tmp_path), weights_mode="random", random_seed=7)
    a, b = weights.build_resnet50(s), weights.build_resnet50(s)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    c = weights.build_resnet50(s.replace(random_seed=8))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert isinstance(a.fc, torch.nn.Identity) and not a.training


def test_import_refuses_a_file_with_the_wrong_checksum(tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "not-the-real-weights.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    s = Settings(state_dir=str(tmp_path / "var"))
    with pytest.raises(weights.WeightsVerificationError, match="does not match"):
        weights.import_weights(s, "resnet50", path)
    assert not weights.model_path(s, weights.RESNET50).exists()


def test_a_file_that_does_not_fit_resnet50_is_refused(tmp_path):
    path = tmp_path / "garbage.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError):
        weights._resnet_from_file(path)


def test_resnet_checkpoint_loads_with_weights_only(tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "ok.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    model = weights._resnet_from_file(path)
    assert model.fc.out_features == 1000


def test_sscd_import_records_a_checksum_and_loading_rechecks_it(tmp_path):
    from tests.conftest import make_torchscript_descriptor

    settings = Settings(state_dir=str(tmp_path / "var"), weights_mode="random", descriptor="sscd")
    with pytest.raises(weights.MissingWeightsError, match="ndid models import sscd"):
        weights.require_descriptor_weights(settings)  # SSCD needs its file even in random mode
    weights.require_descriptor_weights(settings.replace(descriptor="resnet50"))  # seeded ResNet-50: no file
    source = make_torchscript_descriptor(tmp_path / "sscd.pt", dim=48)
    with pytest.raises(weights.WeightsVerificationError, match="expected"):
        weights.import_weights(settings, "sscd", source, expected_sha256="0" * 64)
    dest = weights.import_weights(settings, "sscd", source, expected_sha256=weights.file_sha256(source))
    assert dest.with_name(dest.name + ".sha256").read_text().strip() == weights.file_sha256(source)
    assert weights.descriptor_width(weights.build_sscd(settings)) == 48
    dest.write_bytes(dest.read_bytes() + b"\0")  # swapped or damaged after import
    with pytest.raises(weights.WeightsVerificationError, match="changed since it was imported"):
        weights.build_sscd(settings)


def test_sscd_import_refuses_files_that_are_not_descriptor_models(tmp_path):
    settings = Settings(state_dir=str(tmp_path / "var"), weights_mode="random", descriptor="sscd")
    pickled = tmp_path / "state_dict.pt"
    torch.save({"w": torch.zeros(3)}, pickled)  # a checkpoint, not TorchScript: never unpickled
    with pytest.raises(weights.WeightsVerificationError, match="not a TorchScript model"):
        weights.import_weights(settings, "sscd", pickled)
    classifier = tmp_path / "classifier.pt"
    with warnings.catch_warnings():  # tracing is deprecated; SSCD's published file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.trace(torch.nn.Conv2d(3, 4, 3).eval(), torch.zeros(1, 3, 32, 32)).save(str(classifier))
    with pytest.raises(weights.WeightsVerificationError, match=r"\(n, d\) vectors"):
        weights.import_weights(settings, "sscd", classifier)  # gives a feature map, not a vector
    assert not weights.model_path(settings, weights.SSCD).exists()
