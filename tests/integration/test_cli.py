"""The `ndid` command line: exit codes scripts rely on, on real Milvus Lite and real S3."""

import json

import pytest

from ndid_tasks import cli, services
from ndid_tasks.storage import S3Store
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("NDID_STATE_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("NDID_WEIGHTS_MODE", "random")
    monkeypatch.setenv("NDID_EMBED_BATCH_SIZE", "8")
    for name in ("NDID_S3_ACCESS_KEY", "NDID_S3_SECRET_KEY"):  # as on a machine without local services
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_missing_weights_exit_3_with_both_commands(env, tmp_path, photos, monkeypatch, capsys):
    monkeypatch.setenv("NDID_WEIGHTS_MODE", "pretrained")
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(photos["astronaut"]))
    assert cli.main(["index", str(tmp_path / "a.jpg")]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "ndid models fetch" in err and "ndid models import" in err


def test_index_then_query_exit_codes(env, tmp_path, photos, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(photos[name]))
    out = tmp_path / "records.jsonl"
    assert cli.main(["index", str(folder), "--output", str(out)]) == cli.EXIT_OK
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3 and all(r["untrained"] for r in records)
    capsys.readouterr()
    (tmp_path / "q.jpg").write_bytes(jpeg_bytes(photos["coffee"], 30))
    assert cli.main(["query", str(tmp_path / "q.jpg"), "--json"]) == cli.EXIT_OK
    answer = json.loads(capsys.readouterr().out)
    assert answer["matches"][0]["id"].endswith("coffee.jpg") and answer["untrained"] is True
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert cli.main(["query", str(tmp_path / "bad.jpg")]) == cli.EXIT_INPUT
    assert cli.main(["query", str(tmp_path / "missing.jpg")]) == cli.EXIT_INPUT
    capsys.readouterr()
    assert cli.main(["whitening", "status"]) == cli.EXIT_OK
    status = json.loads(capsys.readouterr().out)
    assert status["rows"] == 3 and status["collection"].endswith(status["whitening"].replace("-", "_"))
    # activating needs S3 (where calibrations live); without credentials: a clear config error
    assert cli.main(["whitening", "fit"]) == cli.EXIT_CONFIG
    assert "--no-activate" in capsys.readouterr().err
    assert cli.main(["whitening", "fit", "--no-activate", "--sample-images", "150"]) == cli.EXIT_NO_MATCH


def test_index_an_s3_prefix_through_the_milvus_lite_server(s3_settings, monkeypatch, photos, tmp_path, capsys):
    """Same client code against `milvus-lite server` (multi-process mode) as against the file."""
    from tests.conftest import _free_port

    port = _free_port()
    state = s3_settings.replace(state_dir=str(tmp_path / "svc"))
    services.start_milvus(state, port=port)
    try:
        for k, v in {"NDID_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url, "NDID_S3_ACCESS_KEY": s3_settings.s3_access_key,
                     "NDID_S3_SECRET_KEY": s3_settings.s3_secret_key, "NDID_WEIGHTS_MODE": "random",
                     "NDID_MILVUS_URI": services.milvus_server_uri(port), "NDID_STATE_DIR": str(tmp_path / "v")}.items():
            monkeypatch.setenv(k, v)
        store = S3Store(s3_settings)
        store.put_bytes("in/a.jpg", jpeg_bytes(photos["rocket"]))
        store.put_bytes("in/b.jpg", jpeg_bytes(photos["rocket"], 20))
        store.put_bytes("in/c.txt", b"not an image")
        assert cli.main(["index", f"s3://{s3_settings.s3_bucket}/in/", "--json"]) == cli.EXIT_OK
        result = json.loads(capsys.readouterr().out)
        by_key = {r["id"].rsplit("/", 1)[1]: r for r in result["records"]}
        assert by_key["c.txt"]["decision"] == "error" and by_key["c.txt"]["error_reason"] == "not_an_image"
        assert {by_key["a.jpg"]["decision"], by_key["b.jpg"]["decision"]} == {"unique", "duplicate"}
        # indexed with their words already: the backfill (feature store in S3) has nothing to add
        assert cli.main(["words", "backfill"]) == cli.EXIT_OK
        counts = json.loads(capsys.readouterr().out)
        assert counts == {**counts, "rows": 2, "had_words": 2, "added": 0}  # (c.txt: a record, no row)
    finally:
        services.stop_milvus(state)


def test_every_failure_is_one_line_with_its_documented_exit_code(env, tmp_path, photos, monkeypatch, capsys):
    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg_bytes(photos["coffee"]))
    cases = [
        (["query", str(tmp_path)], {}, cli.EXIT_INPUT, "is a folder"),
        (["query", str(tmp_path / "missing.jpg")], {}, cli.EXIT_INPUT, "cannot read"),
        (["query", str(image)], {"NDID_MILVUS_URI": "notaurl://x"}, cli.EXIT_CONFIG, "NDID_MILVUS_URI"),
        (["query", str(image)], {"NDID_CALIBRATION_FILE": str(tmp_path / "none.json")}, cli.EXIT_CONFIG,
         "calibration file"),
        (["query", str(image)], {"NDID_WEIGHTS_MODE": "pretrained"}, cli.EXIT_CONFIG, "ndid models import"),
        (["index", "s3://no-such-bucket/"], {"NDID_S3_ACCESS_KEY": "x", "NDID_S3_SECRET_KEY": "y",
                                             "NDID_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, cli.EXIT_SERVICE,
         "service unavailable"),
    ]
    for argv, environ, code, words in cases:
        with monkeypatch.context() as m:
            for k, v in environ.items():
                m.setenv(k, v)
            assert cli.main(argv) == code, (argv, environ)
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ndid")]
        assert len(err) == 1 and words in err[0], (argv, err)
    with pytest.raises(SystemExit) as usage:
        cli.main(["query", str(image), "--limit", "-1"])
    assert usage.value.code == cli.EXIT_USAGE


def test_query_uses_the_running_local_milvus_server(env, tmp_path, photos, capsys):
    """After `make demo` the local server holds the embedded file: `ndid query` must talk to it
    (it used to open the locked file: DataDirLockedError tracebacks, exit 1)."""
    from ndid_tasks.config import Settings
    from tests.conftest import _free_port

    settings = Settings(state_dir=str(tmp_path / "var"), weights_mode="random")
    port = _free_port()
    services.start_milvus(settings, port=port)
    try:
        folder = tmp_path / "imgs"
        folder.mkdir()
        (folder / "rocket.jpg").write_bytes(jpeg_bytes(photos["rocket"]))
        assert cli.load_settings().milvus_uri == services.milvus_server_uri(port)
        assert cli.main(["index", str(folder)]) == cli.EXIT_OK
        (tmp_path / "q.jpg").write_bytes(jpeg_bytes(photos["rocket"], 25))
        capsys.readouterr()
        assert cli.main(["query", str(tmp_path / "q.jpg"), "--json"]) == cli.EXIT_OK
        assert json.loads(capsys.readouterr().out)["matches"][0]["id"].endswith("rocket.jpg")
    finally:
        services.stop_milvus(settings)


def test_words_backfill_after_indexing_with_the_words_off(env, tmp_path, photos, monkeypatch, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(photos[name]))
    monkeypatch.setenv("NDID_VISUAL_WORDS", "0")
    assert cli.main(["index", str(folder)]) == cli.EXIT_OK
    assert cli.main(["words", "backfill"]) == cli.EXIT_CONFIG
    assert "NDID_VISUAL_WORDS=0" in capsys.readouterr().err
    monkeypatch.setenv("NDID_VISUAL_WORDS", "1")
    assert cli.main(["words", "backfill", "--batch-size", "2"]) == cli.EXIT_OK
    first = json.loads(capsys.readouterr().out)
    assert first["rows"] == 3 and first["added"] == 3 and first["collection"].startswith("ndid_words_")
    assert cli.main(["words", "backfill"]) == cli.EXIT_OK
    again = json.loads(capsys.readouterr().out)
    assert again["added"] == 0 and again["had_words"] == 3
