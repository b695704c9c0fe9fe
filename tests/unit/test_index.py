"""The index's own conversions (no servers): what reaches Milvus must not change with the form."""

import numpy as np
from pymilvus.client.entity_helper import sparse_rows_to_proto

from ndid_tasks.index import sparse_rows


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
