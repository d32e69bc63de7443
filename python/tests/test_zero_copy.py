"""Embeddings are a view of the answer chunk in the service's shared memory: no copy."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import shm_runtime


def shared_mapping(service: str) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of the service's segment (/dev/shm/<name>)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].startswith("/dev/shm/") and service in fields[5]:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def test_the_array_views_the_service_shared_memory(client):
    e = client.embed(["a cat sat", "on the mat"], model="echo")
    a = np.asarray(e)
    assert a.shape == (2, 10) and a.dtype == np.float32
    assert a[0, 0] == ord("a") and a[1, 9] == ord("t")
    address = a.__array_interface__["data"][0]
    ranges = shared_mapping(client.service)
    assert ranges, f"no mapping of {client.service} in /proc/self/maps"
    assert any(lo <= address and address + a.nbytes <= hi for lo, hi in ranges), (
        f"the array's data at {address:#x} is not inside the service's mappings {ranges}"
    )
    # Not owned, not writable: the server's answer.
    assert not a.flags.owndata and not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


def test_a_view_holds_its_chunk_until_the_last_view_dies(client):
    free, total = client.pool_free()
    assert free == total, "the pool is not full before the test"
    e = client.embed(["some text to embed"], model="echo")
    assert client.pool_free()[0] == free - 1, "the answer does not hold one chunk"
    a = np.asarray(e)
    b = memoryview(e)
    assert e.exports == 2
    del e
    gc.collect()
    # The Embeddings object is gone from Python's names, but the views keep the chunk.
    assert client.pool_free()[0] == free - 1
    assert a[0, 0] == ord("s")
    del a
    gc.collect()
    assert client.pool_free()[0] == free - 1, "the chunk went back while a memoryview lived"
    b.release()
    del b
    gc.collect()
    assert client.pool_free()[0] == free, "the chunk did not go back after the last view"


def test_release_refuses_while_views_exist_then_returns_the_chunk(client):
    free = client.pool_free()[0]
    e = client.embed("x", model="echo")
    a = np.asarray(e)
    with pytest.raises(BufferError, match="1 view"):
        e.release()
    assert client.pool_free()[0] == free - 1
    del a
    e.release()
    assert e.released and client.pool_free()[0] == free
    with pytest.raises(BufferError, match="released"):
        memoryview(e)
    e.release()  # twice is fine


def test_copy_is_an_array_of_ones_own(client):
    free = client.pool_free()[0]
    e = client.embed(["abc", "de"], model="echo")
    c = e.copy()
    assert c.flags.owndata and c.flags.writeable
    np.testing.assert_array_equal(c, np.asarray(e))
    e.release()
    assert client.pool_free()[0] == free
    assert c.tolist() == [[97.0, 98.0, 99.0], [100.0, 101.0, 0.0]]
    assert shm_runtime.Embeddings is type(e)


def test_rows_and_lists_without_numpy(client):
    e = client.embed(["ab", "c"], model="echo")
    assert len(e) == 2 and e.dim == 2 and e.shape == (2, 2)
    assert e.row(0) == [97.0, 98.0] and e.row(-1) == [99.0, 0.0]
    with pytest.raises(IndexError):
        e.row(2)
    assert e.tolist() == [[97.0, 98.0], [99.0, 0.0]]
    m = memoryview(e)
    assert m.format == "f" and m.shape == (2, 2) and m.readonly
    assert m.tobytes() == np.array([[97, 98], [99, 0]], dtype="<f4").tobytes()
