"""Row stores read by offset (vlmkd.utils.rowread): exactly np.load's rows, picklable to workers, and only the
rows' bytes are asked of the kernel."""

import multiprocessing
import operator
import os
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vlmkd.errors import ArtifactError
from vlmkd.tasks.rows import StoreRows
from vlmkd.utils import rowread
from vlmkd.utils.rowread import RowReader, open_rows


def _saved(tmp_path: Path, name: str, arr: np.ndarray) -> Path:
    np.save(tmp_path / name, arr)
    return tmp_path / name


@pytest.fixture
def stores(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((23, 3, 5)).astype(np.float16)  # N x K x D teacher views
    index = rng.integers(-1, 23, (23, 2)).astype(np.int32)  # N x n index map
    emb = rng.standard_normal((23, 7)).astype(np.float16)  # N x D embeddings
    return {n: _saved(tmp_path, f"{n}.npy", a) for n, a in (("feats", feats), ("index", index), ("emb", emb))}


KEYS = [
    0,
    22,
    -1,
    np.int64(5),
    slice(None),
    slice(3, 9),
    slice(9, 3),
    slice(1, 20, 4),
    slice(None, None, -3),
    [4, 4, 0, 17, 16, 15, 3],
    np.array([[2, 9], [9, -2]]),
    np.array([], dtype=np.int64),
    np.random.default_rng(1).integers(-23, 23, (10, 10)),  # over 64 rows: the vectorised path
    (6, 1),
    (slice(2, 5), 0),
    (np.array([1, 8]), slice(None), 2),
    (Ellipsis, 0),
]


@pytest.mark.parametrize("name", ["feats", "index", "emb"])
def test_rows_equal_np_load(stores, name):
    want = np.load(stores[name])
    r = open_rows(stores[name])
    assert (r.shape, r.dtype, len(r), r.ndim) == (want.shape, want.dtype, len(want), want.ndim)
    for key in KEYS:
        if isinstance(key, tuple) and len(key) > want.ndim:
            continue
        got, ref = r[key], want[key]
        assert got.dtype == ref.dtype and got.shape == ref.shape, key
        np.testing.assert_array_equal(got, ref, err_msg=str(key))
    mask = np.arange(len(want)) % 3 == 0
    np.testing.assert_array_equal(r[mask], want[mask])
    np.testing.assert_array_equal(np.asarray(r), want)
    np.testing.assert_array_equal(np.asarray(r, dtype=np.float32), want.astype(np.float32))


def test_bad_indices_and_files_are_refused(tmp_path, stores):
    r = open_rows(stores["emb"])
    for key in (23, -24, [0, 23], np.array([0.5])):
        with pytest.raises(IndexError):
            r[key]
    raw = stores["emb"].read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-3])
    fortran = _saved(tmp_path, "f.npy", np.asfortranarray(np.ones((4, 3), np.float32)))
    for bad, why in ((tmp_path / "cut.npy", "truncated"), (fortran, "Fortran")):
        with pytest.raises(ArtifactError, match=why):
            open_rows(bad)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_reader_works_in_a_worker_process(stores, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    r = open_rows(stores["feats"])
    assert len(pickle.dumps(r)) < 1024  # the path and header facts travel, never the rows
    want = np.load(stores["feats"])[[3, 0, 21]]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as pool:
        # operator.getitem: the worker unpickles only the reader (a spawned one imports no test module)
        got = pool.submit(operator.getitem, r, [3, 0, 21]).result(timeout=60)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(r[[3, 0, 21]], want)  # the parent's descriptor still reads


def test_store_rows_read_through_the_reader_after_pickling(stores):
    rows = StoreRows(stores["emb"], stores["index"], "average")
    again = pickle.loads(pickle.dumps(rows))
    assert isinstance(again.array, RowReader) and isinstance(again.index, RowReader)
    emb, index = np.load(stores["emb"]).astype(np.float32), np.load(stores["index"])
    for i in range(len(index)):
        np.testing.assert_array_equal(again.block(i), emb[index[i][index[i] >= 0]])


def test_only_the_rows_bytes_are_read_and_readahead_is_off(stores, monkeypatch):
    calls, advice = [], []
    preadv, fadvise = os.preadv, os.posix_fadvise

    def spy_preadv(fd, buffers, offset):
        calls.append((sum(memoryview(b).nbytes for b in buffers), offset))
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(rowread, "_PREADV", spy_preadv)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, o, n, a: (advice.append(a), fadvise(fd, o, n, a)))
    r = open_rows(stores["feats"])
    assert advice == [os.POSIX_FADV_RANDOM]
    row = 3 * 5 * 2  # K x D float16
    r[7]
    assert calls == [(row, r.offset + 7 * row)]
    calls.clear()
    r[[9, 2, 8, 9, 10]]  # two runs (2; 8-10), each row read once
    assert calls == [(row, r.offset + 2 * row), (3 * row, r.offset + 8 * row)]


def test_pread_fallback_and_short_reads_give_the_same_rows(stores, monkeypatch):
    want = np.load(stores["feats"])
    monkeypatch.setattr(rowread, "_PREADV", None)  # as where os.preadv is missing
    np.testing.assert_array_equal(open_rows(stores["feats"])[[5, 1, 2]], want[[5, 1, 2]])
    preadv = os.preadv

    def short(fd, buffers, offset):  # the kernel may return fewer bytes than asked: at most 7 here
        return preadv(fd, [memoryview(buffers[0]).cast("B")[:7]], offset)

    monkeypatch.setattr(rowread, "_PREADV", short)
    np.testing.assert_array_equal(open_rows(stores["feats"])[[5, 1, 2]], want[[5, 1, 2]])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_random_rows_do_not_map_the_store_into_memory(tmp_path):
    """A memory map of a warm store maps pages (up to a large folio, MBs) around every row it touches; reads by
    offset copy the rows and map nothing, so file-backed RSS stays flat however many rows are read."""
    n, d = 40_000, 384
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, "w+", np.float16, (n, d))
    big[:] = 1.0
    big.flush()
    del big

    def rss_file_kb() -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssFile:"))
        return int(line.split()[1])

    r = open_rows(path)
    rows = np.random.default_rng(0).integers(0, n, 300)
    before = rss_file_kb()
    total = sum(float(r[int(i)][0]) for i in rows)
    assert total == 300.0
    assert rss_file_kb() - before < 1024  # 300 rows over 30 MB: under 1 MB (a map takes 64 KB+ per row)
