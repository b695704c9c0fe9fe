"""The local services are real: authenticated S3 that persists, Milvus Lite served to many processes."""

import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ndid_tasks import services
from ndid_tasks.storage import S3Store

pytestmark = pytest.mark.integration


def raw_client(settings, access, secret):
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1",
                        aws_access_key_id=access, aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))


def test_put_get_with_the_right_keys_and_403_otherwise(s3_settings):
    store = S3Store(s3_settings)
    store.put_bytes("hello.txt", b"hi there")
    assert store.get_bytes("hello.txt") == b"hi there"
    wrong = raw_client(s3_settings, s3_settings.s3_access_key, "not-the-secret")
    with pytest.raises(ClientError) as err:
        wrong.get_object(Bucket=s3_settings.s3_bucket, Key="hello.txt")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = raw_client(s3_settings, "AKIDUNKNOWN", "whatever-secret")
    with pytest.raises(ClientError) as err:
        unknown.put_object(Bucket=s3_settings.s3_bucket, Key="x", Body=b"x")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_anonymous_requests_are_refused(s3_settings):
    import urllib.error
    import urllib.request

    S3Store(s3_settings).put_bytes("secret.txt", b"private")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{s3_settings.s3_endpoint_url}/{s3_settings.s3_bucket}/secret.txt", timeout=10)
    assert err.value.code == 403
    req = urllib.request.Request(f"{s3_settings.s3_endpoint_url}/{s3_settings.s3_bucket}/anon.txt",
                                 data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403


def _http(method: str, url: str, data: bytes | None = None) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_no_unauthenticated_way_around_s3_through_the_filer_or_volume_ports(s3_settings):
    """The SeaweedFS filer (and its UI) used to serve list/GET/PUT/DELETE of the bucket to anyone."""
    import json
    import stat
    from pathlib import Path
    from urllib.parse import urlparse

    store = S3Store(s3_settings)
    store.put_bytes("images/private.jpg", b"private bytes")
    ports = services.weed_ports(urlparse(s3_settings.s3_endpoint_url).port)
    filer = f"http://127.0.0.1:{ports['filer']}/buckets/{s3_settings.s3_bucket}"
    assert _http("GET", f"{filer}/images/private.jpg") == 401
    assert _http("GET", f"{filer}/images/") == 401
    assert _http("GET", f"http://127.0.0.1:{ports['filer']}/") == 401
    assert _http("PUT", f"{filer}/images/evil.jpg", b"evil") == 401
    assert _http("DELETE", f"{filer}/images/private.jpg") == 401
    # a file id from the master does not open the volume server for writes either
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{ports['master']}/dir/assign", timeout=10) as resp:
        fid = json.load(resp)["fid"]
    assert _http("PUT", f"http://127.0.0.1:{ports['volume']}/{fid}", b"evil") == 401
    assert store.get_bytes("images/private.jpg") == b"private bytes"  # S3 itself still works
    root = Path(s3_settings.state_dir) / "s3"
    for folder in (root, root / "data", root / "logs"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_server_listens_on_loopback_only(s3_settings):
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=True).stdout
    pid = services.s3_status(s3_settings).pid
    mine = [line for line in out.splitlines() if f"pid={pid}," in line]
    assert mine, "SeaweedFS ports not found"
    assert all("127.0.0.1:" in line for line in mine), mine


def test_start_twice_is_harmless_and_data_survives_restart(s3_settings):
    store = S3Store(s3_settings)
    store.put_bytes("persist/me.bin", b"\x00\x01keep")
    pid = services.s3_status(s3_settings).pid
    assert services.start_s3(s3_settings).pid == pid  # already running: nothing new
    assert services.stop_s3(s3_settings)
    assert not services.s3_status(s3_settings).running
    services.start_s3(s3_settings)
    assert S3Store(s3_settings).get_bytes("persist/me.bin") == b"\x00\x01keep"


@pytest.fixture
def small_disk(tmp_path):
    """A 256 MB tmpfs: how a machine with little free disk looks to SeaweedFS."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root with mount rights): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_buckets_do_not_run_out_when_the_disk_is_small(small_disk):
    """With SeaweedFS's own slot count (free disk / 128 MB) the fourth bucket's first write failed."""
    from ndid_tasks.config import Settings
    from tests.conftest import _free_port

    settings = Settings(state_dir=str(small_disk / "var"), s3_endpoint_url=f"http://127.0.0.1:{_free_port()}")
    services.start_s3(settings)
    try:
        access, secret = services.ensure_local_credentials(settings)
        settings = settings.replace(s3_access_key=access, s3_secret_key=secret)
        for n in range(8):
            store = S3Store(settings.replace(s3_bucket=f"small-{n}"), retries=0)
            store.ensure_bucket()
            store.put_bytes("x.txt", str(n).encode())
        assert [S3Store(settings.replace(s3_bucket=f"small-{n}")).get_bytes("x.txt") for n in range(8)] == \
            [str(n).encode() for n in range(8)]
    finally:
        services.stop_s3(settings)


def test_taken_port_gives_a_clear_error(tmp_path, s3_settings):
    other = s3_settings.replace(state_dir=str(tmp_path / "other"))  # same port, no PID file of its own
    with pytest.raises(services.ServiceError, match="already taken"):
        services.start_s3(other)


def test_milvus_lite_server_serves_two_processes_at_once(tmp_path):
    from ndid_tasks.config import Settings
    from tests.conftest import _free_port

    port = _free_port()
    settings = Settings(state_dir=str(tmp_path / "var"))
    st = services.start_milvus(settings, port=port)
    try:
        assert st.running and services.milvus_status(settings, port).running
        from ndid_tasks.index import lite_environment

        environ = Path(f"/proc/{st.pid}/environ").read_bytes().split(b"\0")
        # the small memtable (NDID_MILVUS_LITE_MEMTABLE_MB, 8 MB unless set by hand) reaches the server
        assert all(f"{k}={v}".encode() in environ for k, v in lite_environment(settings).items())
        script = textwrap.dedent(f"""
            import sys
            from pymilvus import MilvusClient, DataType
            c = MilvusClient(uri="http://127.0.0.1:{port}")
            name = "proc_" + sys.argv[1]
            s = MilvusClient.create_schema(auto_id=False)
            s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            s.add_field("v", DataType.FLOAT_VECTOR, dim=4)
            ip = c.prepare_index_params(); ip.add_index(field_name="v", index_type="FLAT", metric_type="L2")
            c.create_collection(name, schema=s, index_params=ip)
            c.upsert(name, [{{"id": f"{{i}}", "v": [float(i), 0, 0, 1]}} for i in range(50)])
            print(c.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])
        """)
        procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], stdout=subprocess.PIPE, text=True)
                 for n in range(2)]
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert [p.returncode for p in procs] == [0, 0] and outs == ["50", "50"]
        from pymilvus import MilvusClient

        names = MilvusClient(uri=f"http://127.0.0.1:{port}").list_collections()
        assert {"proc_0", "proc_1"} <= set(names)
    finally:
        services.stop_milvus(settings)
    assert not services.milvus_status(settings, port).running


def test_two_runs_creating_the_same_collections_at_once_both_go_on(tmp_path):
    """Two ingest runs starting together (a manual run beside the scheduled one) both create the
    index's collections. The loser's create fails -- "[Errno 17] File exists" from Lite, for 25 of
    30 such pairs before ImageIndex waited for the winner -- and it must go on with the winner's."""
    import threading

    from ndid_tasks.config import Settings
    from ndid_tasks.index import ImageIndex
    from tests.conftest import _free_port

    port = _free_port()
    settings = Settings(state_dir=str(tmp_path / "var"))
    services.start_milvus(settings, port=port)
    try:
        served = settings.replace(milvus_uri=services.milvus_server_uri(port))

        def start(run: Settings, words: str, indexes: list[ImageIndex], errors: list[str]) -> None:
            try:
                indexes.append(ImageIndex(run, run.images_collection("v1"), 8, raw_dim=16, words=words))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{type(exc).__name__}: {exc}")

        for n in range(8):
            run = served.replace(milvus_collection_prefix=f"race{n}")
            errors: list[str] = []
            indexes: list[ImageIndex] = []
            threads = [threading.Thread(target=start, args=(run, f"race{n}_words", indexes, errors)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == [] and len(indexes) == 2
            # both go on with one set of collections, loaded: one writes, the other finds it
            indexes[0].upsert_words({"a": (1, {3: 1.0})})
            assert [h.id for h in indexes[1].search_many("words", [{3: 1.0}], 1)[0]] == ["a"]
            for index in indexes:
                index.close()
    finally:
        services.stop_milvus(settings)


def test_collections_are_usable_after_a_milvus_server_restart(tmp_path, photos):
    """A restarted Milvus server returns collections released; the index must load them again."""
    from ndid_tasks.config import Settings
    from ndid_tasks.pipeline import Engine, local_items
    from tests.conftest import _free_port, jpeg_bytes

    port = _free_port()
    settings = Settings(state_dir=str(tmp_path / "var"), weights_mode="random", embed_batch_size=4,
                        milvus_uri=services.milvus_server_uri(port))
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(photos["coffee"]))
    services.start_milvus(settings, port=port)
    try:
        engine = Engine(settings)
        engine.ingest(local_items([tmp_path / "a.jpg"]), run_id="r", run_at="t")
        engine.index.upsert_clip({"file://x": [0.1] * 512})
        engine.close()
        services.stop_milvus(settings)
        services.start_milvus(settings, port=port)
        engine = Engine(settings)
        assert engine.index.count() == 1
        assert set(engine.index.get_clip(["file://x"])) == {"file://x"}
        engine.close()
    finally:
        services.stop_milvus(settings)
