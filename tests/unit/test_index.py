"""The index's own conversions and error paths (no servers): what reaches Milvus must not change
with the form, and a collection another run is creating is waited for."""

import numpy as np
import pytest
from pymilvus import MilvusException
from pymilvus.client.entity_helper import sparse_rows_to_proto

from ndid_tasks.index import ImageIndex, sparse_rows


def test_sparse_rows_send_the_same_bytes_as_dicts():
    """Visual words go to Milvus as one-row CSR matrices (pymilvus checks dicts pair by pair in
    Python); the serialised vectors must be those of the dicts: every weight at its index, indices
    ascending whatever the dict order, float32 weights, an image's vector intact among others."""
    rng = np.random.default_rng(0)
    vectors = [{int(w): float(x) for w, x in zip(rng.permutation(4096)[:n], rng.random(n), strict=True)}
               for n in (1, 37, 270, 2)]
    rows = sparse_rows(vectors)
    assert [r.shape[0] for r in rows] == [1, 1, 1, 1]
    for row, vector in zip(rows, vectors, strict=True):
        assert list(row.indices) == sorted(vector)
        np.testing.assert_array_equal(row.data, np.float32([vector[w] for w in sorted(vector)]))
    assert list(sparse_rows_to_proto(rows).contents) == list(sparse_rows_to_proto(vectors).contents)


class _ServerMidCreate:
    """A Milvus server while another run creates a collection: it is listed after ``listed_after``
    calls, and loads after ``loads_after`` (a server refuses to load a collection with no index;
    Lite loads it, so the real-Lite race test cannot show this path)."""

    def __init__(self, listed_after: int, loads_after: int) -> None:
        self.listed_after, self.loads_after = listed_after, loads_after
        self.has_calls = self.load_calls = 0

    def has_collection(self, name: str) -> bool:
        self.has_calls += 1
        return self.has_calls > self.listed_after

    def load_collection(self, name: str) -> None:
        self.load_calls += 1
        if self.load_calls <= self.loads_after:
            raise MilvusException(message=f"index not found for collection {name}")


def _index_on(client: _ServerMidCreate, wait_s: float) -> ImageIndex:
    index = ImageIndex.__new__(ImageIndex)  # no connection: only _load is exercised
    index.client = client  # type: ignore[assignment]
    index.CREATE_RACE_WAIT_S = wait_s
    return index


def test_a_collection_another_run_is_creating_is_waited_for_until_it_loads(monkeypatch):
    monkeypatch.setattr("ndid_tasks.index.time.sleep", lambda s: None)
    client = _ServerMidCreate(listed_after=2, loads_after=3)
    _index_on(client, 30.0)._load("images", MilvusException(message="already exist"))
    assert client.load_calls == 4  # three refusals, then loaded


def test_a_collection_that_never_loads_gives_the_last_error_after_the_wait():
    client = _ServerMidCreate(listed_after=0, loads_after=10**9)
    with pytest.raises(MilvusException, match="index not found"):
        _index_on(client, 0.3)._load("images")
    assert client.load_calls >= 2
