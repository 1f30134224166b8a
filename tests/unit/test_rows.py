"""Row sources: per-sample rows of memory-mapped stores, chosen per (seed, epoch, sample), never a dense copy."""

import pickle

import numpy as np
import torch

from vlmkd.tasks.rows import StoreRows


def store(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((7, 4)).astype(np.float16)
    np.save(tmp_path / "emb.npy", emb)
    index = np.array([[0, 1, 2], [3, -1, 4], [-1, -1, -1], [5, 6, -1]], dtype=np.int32)
    np.save(tmp_path / "index.npy", index)
    return emb.astype(np.float32), index


def test_pick_is_a_function_of_seed_epoch_and_sample_only(tmp_path):
    emb, index = store(tmp_path)
    rows = StoreRows(tmp_path / "emb.npy", tmp_path / "index.npy", "pick", seed=3, salt=1)
    first = [rows.row(i, epoch=0) for i in range(4)]
    torch.manual_seed(123)  # the global RNGs play no part
    np.random.seed(123)
    again = pickle.loads(pickle.dumps(rows))  # as a loader worker receives it
    assert again._array is None  # the memory map is reopened in the worker, never pickled as a copy
    for i in range(4):
        np.testing.assert_array_equal(again.row(i, epoch=0), first[i])
    assert not np.any(first[2])  # no description: zeros
    chosen = {tuple(rows.row(0, epoch=e)) for e in range(20)}
    assert (
        chosen <= {tuple(emb[j]) for j in index[0]} and len(chosen) > 1
    )  # redrawn per epoch, valid rows only
    assert {tuple(rows.row(1, epoch=e)) for e in range(20)} <= {tuple(emb[3]), tuple(emb[4])}


def test_average_is_the_renormalised_mean_of_valid_rows(tmp_path):
    emb, _ = store(tmp_path)
    rows = StoreRows(tmp_path / "emb.npy", tmp_path / "index.npy", "average")
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = unit[[3, 4]].mean(0)
    np.testing.assert_allclose(rows.row(1), want / np.linalg.norm(want), rtol=1e-6)
    assert rows.missing() == 1 and len(rows) == 4


def test_per_sample_views_pick_skips_all_zero_views(tmp_path):
    feats = np.zeros((3, 2, 4), np.float16)
    feats[:, 0] = 1.0
    feats[2, 1] = 2.0
    np.save(tmp_path / "f.npy", feats)
    rows = StoreRows(tmp_path / "f.npy", None, "pick", seed=0, salt=3)
    assert all(np.all(rows.row(0, e) == 1.0) for e in range(10))  # view 1 of sample 0 is missing (zeros)
    assert {float(rows.row(2, e)[0]) for e in range(20)} == {1.0, 2.0}
    np.testing.assert_allclose(StoreRows(tmp_path / "f.npy", None, "mean").row(2), np.full(4, 1.5))
