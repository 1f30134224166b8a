import numpy as np
import pytest

from vlmkd.data.manifest import Manifest
from vlmkd.errors import ConfigError
from vlmkd.eval.fewshot import BalancedFewShotSampler, sample_support, tip_adapter_logits


def test_tip_adapter_matches_loop_reference():
    rng = np.random.default_rng(0)
    q, w, k = rng.normal(size=(4, 6)), rng.normal(size=(3, 6)), rng.normal(size=(5, 6))
    kl = np.array([0, 1, 2, 2, 0])
    got = tip_adapter_logits(q, w, k, kl, alpha=0.7, beta=5.5)
    n = lambda v: v / np.linalg.norm(v)  # noqa: E731
    for i in range(4):
        for c in range(3):
            ref = n(q[i]) @ n(w[c]) + 0.7 * sum(
                np.exp(-5.5 * (1 - n(q[i]) @ n(k[m]))) for m in range(5) if kl[m] == c
            )
            assert got[i, c] == pytest.approx(ref, rel=1e-9)


def test_alpha_zero_is_plain_zero_shot():
    rng = np.random.default_rng(1)
    q, w, k = rng.normal(size=(3, 4)), rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    z = tip_adapter_logits(q, w, k, np.array([0, 1]), alpha=0.0)
    qn, wn = q / np.linalg.norm(q, axis=1, keepdims=True), w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(z, qn @ wn.T)


def test_support_sampling_and_balanced_batches():
    m = Manifest(
        ids=[str(i) for i in range(30)],
        labels=[i % 3 for i in range(30)],
        class_names=list("abc"),
        indices=np.arange(30),
    )
    sup = sample_support(m, 5, seed=0)
    assert np.bincount(m.labels[sup]).tolist() == [5, 5, 5]
    assert sample_support(m, 5, seed=0).tolist() == sup.tolist()
    with pytest.raises(ConfigError, match="fewer than 11 shots"):
        sample_support(m, 11)
    batches = list(BalancedFewShotSampler(n_base=100, n_support=15, batch_size=16, steps=3, seed=0))
    assert len(batches) == 3
    for b in batches:
        assert len(b) == 16 and sum(i >= 100 for i in b) == 8  # at most half few-shot
