import re
from pathlib import Path

import pytest

from ndid_tasks.config import Settings, SettingsError, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_reads_ndid_variables_with_types():
    s = Settings.from_env({"NDID_S3_BUCKET": "photos", "NDID_PHASH_RADIUS": "20", "NDID_TORCH_COMPILE": "yes",
                           "NDID_DECISION_THRESHOLD": "0.7", "NDID_S3_IMAGES_PREFIX": "uploads"})
    assert s.s3_bucket == "photos" and s.phash_radius == 20 and s.torch_compile == "true"
    assert s.decision_threshold == 0.7
    assert s.s3_images_prefix == "uploads/"  # prefixes always end with a slash


def test_compiled_encoders_are_loaded_by_default_and_built_only_when_asked():
    """NDID_TORCH_COMPILE: auto (the default) loads a package built for the machine and never builds
    one in a task; the old yes/no spellings and Python bools still mean build / eager."""
    assert Settings().torch_compile == "auto"
    for raw, mode in [("auto", "auto"), ("TRUE", "true"), ("1", "true"), ("off", "false"), ("", "false")]:
        assert Settings.from_env({"NDID_TORCH_COMPILE": raw}).torch_compile == mode, raw
    assert Settings(torch_compile=True).torch_compile == "true"
    assert Settings(torch_compile=False).replace(precision="fp32").torch_compile == "false"


@pytest.mark.parametrize("env", [
    {"NDID_WEIGHTS_MODE": "imagenet"}, {"NDID_PHASH_RADIUS": "65"}, {"NDID_EMBED_BATCH_SIZE": "0"},
    {"NDID_PHASH_RADIUS": "ten"}, {"NDID_AMBIGUOUS_LOW": "0.3"}, {"NDID_TORCH_COMPILE": "maybe"},
    {"NDID_AMBIGUOUS_LOW": "0.8", "NDID_AMBIGUOUS_HIGH": "0.2"}, {"NDID_MILVUS_LITE_MEMTABLE_MB": "0"},
    {"NDID_CLOSER_LOOK_SIDE": "256"}, {"NDID_CLOSER_LOOK_SIDE": "-1"}, {"NDID_FAINT_LOOK_PAIRS": "-1"},
    {"NDID_FAINT_LOOK_PAIRS": "17"}, {"NDID_VISUAL_WORDS_BAND_RATIO": "0.9"}, {"NDID_VISUAL_WORDS_BAND_RATIO": "1"},
    {"NDID_VISUAL_WORDS_MIN_RATIO": "-1"},
])
def test_bad_values_are_refused(env):
    with pytest.raises(SettingsError):
        Settings.from_env(env)


def test_milvus_lite_memtable_budget_reaches_its_environment(monkeypatch):
    from ndid_tasks.index import LITE_MEMTABLE_ENV, lite_environment

    monkeypatch.delenv(LITE_MEMTABLE_ENV, raising=False)
    assert lite_environment(Settings(milvus_lite_memtable_mb=16)) == {LITE_MEMTABLE_ENV: str(16 << 20)}
    monkeypatch.setenv(LITE_MEMTABLE_ENV, "1234")  # set by hand: the operator's value wins
    assert lite_environment(Settings()) == {LITE_MEMTABLE_ENV: "1234"}


def test_secrets_never_in_repr_or_public_dict():
    s = Settings.from_env({"NDID_S3_SECRET_KEY": "topsecret", "NDID_S3_ACCESS_KEY": "AKIAXYZ",
                           "NDID_MILVUS_TOKEN": "root:pw"})
    assert "topsecret" not in repr(s) and "AKIAXYZ" not in repr(s) and "root:pw" not in repr(s)
    assert s.public_dict()["s3_secret_key"] == "***"


def test_derived_values():
    s = Settings(state_dir="/srv/ndid", weights_mode="random")
    assert s.resolved_milvus_uri == "/srv/ndid/milvus.db"
    assert s.resolved_model_dir == Path("/srv/ndid/models")
    # never mixes encoders or whitenings
    assert s.images_collection("w256-0123456789") == "ndid_images_random_w256_0123456789"
    assert s.images_alias == "ndid_images_random"
    assert s.descriptor_name == "resnet50-layer3-gem3-squash224"
    assert s.replace(resnet_layer="layer4", resnet_flip_symmetric=True).descriptor_name == \
        "resnet50-layer4-gem3-squash224-flip"
    sscd = s.replace(descriptor="sscd")  # another model: another raw collection (and whitening, calibration)
    assert sscd.descriptor_name.startswith("sscd-") and sscd.raw_collection != s.raw_collection
    with pytest.raises(SettingsError, match="NDID_DESCRIPTOR"):
        Settings(descriptor="clip")
    assert Settings(milvus_uri="http://milvus:19530").resolved_milvus_uri == "http://milvus:19530"


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in settings_table() if name not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_no_credentials_in_code():
    pattern = re.compile(r"(aws_secret_access_key|secret_key)\s*=\s*['\"][A-Za-z0-9/+]{12,}")
    for path in list((ROOT / "ndid_tasks").rglob("*.py")) + list((ROOT / "dags").rglob("*.py")):
        assert not pattern.search(path.read_text()), path
