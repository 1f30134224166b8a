"""M_rel, M_neigh, M_vlalign against dense numpy references; chunked == unchunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmkd.errors import ConfigError
from vlmkd.eval.representation import feature_gap, m_neigh, m_rel, m_vlalign


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def sqdist(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def dense_rel(s, t):
    s, t = unit(s), unit(t)
    d = sqdist(s, t)  # d[i, j] = ||S_i - T_j||^2
    return float(np.mean(np.argmin(d, axis=1) == np.arange(len(s))))


def dense_neigh(s, t, k):
    s, t = unit(s), unit(t)
    n = len(s)
    ds, dt = sqdist(s, s), sqdist(t, t)
    np.fill_diagonal(ds, np.inf)
    np.fill_diagonal(dt, np.inf)
    total = 0
    for i in range(n):
        total += len(set(np.argsort(ds[i])[:k]) & set(np.argsort(dt[i])[:k]))
    return total / (k * n)


def dense_vlalign(s, t, w, k):
    s, t, w = unit(s), unit(t), unit(w)
    dt, ds = sqdist(t, w), sqdist(s, w)
    total = 0
    for i in range(len(s)):
        order = np.argsort(dt[i])[:k]
        arr = ds[i, order]
        total += sum(1 for a in range(k) for b in range(a + 1, k) if arr[a] > arr[b])
    return total / len(s)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    n, d, c = 60, 8, 12
    t = rng.normal(size=(n, d)) * 3
    s = t + 2.5 * rng.normal(size=(n, d))  # related but far from identical: metrics strictly between extremes
    w = rng.normal(size=(c, d))
    return s.astype(np.float32), t.astype(np.float32), w.astype(np.float32)


def test_m_rel_matches_dense(feats):
    s, t, _ = feats
    ref = dense_rel(s, t)
    assert 0 < ref < 1
    assert m_rel(s, t) == pytest.approx(ref)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_m_neigh_matches_dense(feats, k):
    s, t, _ = feats
    ref = dense_neigh(s, t, k)
    assert 0 < ref < 1
    assert m_neigh(s, t, k) == pytest.approx(ref)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_m_vlalign_matches_dense(feats, k):
    s, t, w = feats
    ref = dense_vlalign(s, t, w, k)
    assert 0 < ref < k * (k - 1) / 2
    assert m_vlalign(s, t, w, k) == pytest.approx(ref)


def test_chunked_equals_unchunked(feats):
    s, t, w = feats
    for chunk in (1, 7, 60, 10**6):
        assert m_rel(s, t, chunk_size=chunk) == pytest.approx(m_rel(s, t, chunk_size=10**6))
        assert m_neigh(s, t, 5, chunk_size=chunk) == pytest.approx(m_neigh(s, t, 5, chunk_size=10**6))
        assert m_vlalign(s, t, w, 3, chunk_size=chunk) == pytest.approx(
            m_vlalign(s, t, w, 3, chunk_size=10**6)
        )


def test_torch_and_numpy_inputs_agree_and_raw_scale_is_ignored(feats):
    s, t, w = feats
    ts, tt, tw = torch.tensor(s) * 5, torch.tensor(t) * 0.1, torch.tensor(w, dtype=torch.float64)
    assert m_rel(ts, tt) == pytest.approx(m_rel(s, t))
    assert m_neigh(ts, tt, 3) == pytest.approx(m_neigh(s, t, 3))
    assert m_vlalign(ts, tt, tw, 3) == pytest.approx(m_vlalign(s, t, w, 3))


def test_identical_features_are_perfect(feats):
    _, t, w = feats
    assert m_rel(t, t) == 1.0
    assert m_neigh(t, t, 5) == 1.0
    assert m_vlalign(t, t, w, 5) == 0.0


def test_vlalign_fully_reversed_hits_the_maximum():
    # w = e1, e2, e3. teacher (3,2,1) ranks classes 0,1,2; student (1,2,3) ranks them 2,1,0 -> every pair reversed
    w = np.eye(3)
    t = np.array([[3.0, 2.0, 1.0]])
    s = np.array([[1.0, 2.0, 3.0]])
    assert m_vlalign(s, t, w, 3) == 3.0  # k(k-1)/2
    assert m_vlalign(s, t, w, 2) == 1.0


def test_feature_gap():
    s = np.array([[1.0, 0.0], [1.0, 0.0]])
    t = np.array([[0.0, 2.0], [3.0, 0.0]])
    gap = feature_gap(s, t)
    assert gap["mse"] == pytest.approx(1.0)  # (2 + 0) / 2
    assert gap["angle_deg"] == pytest.approx(45.0)  # (90 + 0) / 2


def test_argument_errors(feats):
    s, t, w = feats
    with pytest.raises(ConfigError):
        m_neigh(s, t, len(s))
    with pytest.raises(ConfigError):
        m_vlalign(s, t, w, len(w) + 1)
    with pytest.raises(ConfigError):
        m_rel(s, t[:-1])
    with pytest.raises(ConfigError):
        m_rel(s, t, chunk_size=0)
