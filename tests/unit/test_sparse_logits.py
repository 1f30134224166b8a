"""Sparse top-k teacher logits: sparsify, densify (golden), and KD over densified rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlmkd.losses import build
from vlmkd.losses.kd import densify_topk
from vlmkd.tasks.providers import SparseLogits
from vlmkd.teachers.replay import sparsify_topk


def test_densify_golden():
    """C=5, top-2 {class 3: 0.6, class 0: 0.3}: the other 3 classes share 0.1 evenly (ml-dr's smooth densify)."""
    got = densify_topk(torch.tensor([[0.6, 0.3]]), torch.tensor([[3, 0]]), 5).exp()
    want = torch.tensor([[0.3, 0.1 / 3, 0.1 / 3, 0.6, 0.1 / 3]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_densify_renormalises_a_float16_total_above_one():
    """float16 rounding can make the stored top-k sum past 1: no negative rest, the floor, and a total of 1."""
    p = densify_topk(torch.tensor([[0.7, 0.3005]], dtype=torch.float16), torch.tensor([[1, 2]]), 4).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(p[0, 0]) == pytest.approx(1e-8, rel=1e-3) and float(p[0, 1]) == pytest.approx(
        0.7 / 1.0005, rel=1e-3
    )


def test_sparsify_keeps_the_top_k_probabilities_largest_first():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    values, indices = sparsify_topk(logits, 2)
    probs = torch.softmax(logits, -1)[0]
    assert values.dtype == np.float16 and indices.dtype == np.int32
    np.testing.assert_array_equal(indices, [[1, 2]])
    np.testing.assert_allclose(values[0], probs[[1, 2]].numpy(), rtol=1e-3)


def test_kd_over_all_classes_densified_equals_dense_kd():
    """k = C: the densified log-probabilities are the teacher's logits up to a per-row shift, which softmax (at
    any temperature, with or without the logit-adjusting prior) does not see."""
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 7), torch.randn(6, 7) * 3
    values, indices = sparsify_topk(teacher, 7)
    dense = densify_topk(torch.from_numpy(values.astype(np.float32)), torch.from_numpy(indices), 7)
    for kwargs in (
        {"temperature": 2.0},
        {"temperature": 4.0, "logit_adjust": True, "class_counts": list(range(1, 8))},
    ):
        kd = build("kd", **kwargs)
        assert float(kd(student, dense)) == pytest.approx(float(kd(student, teacher)), rel=2e-3)


def test_kd_from_top_k_is_close_to_dense_kd_when_the_teacher_is_peaked():
    torch.manual_seed(1)
    teacher = torch.randn(32, 100) * 0.5
    teacher[torch.arange(32), torch.randint(0, 100, (32,))] += 12.0  # a confident teacher
    student = torch.randn(32, 100)
    values, indices = sparsify_topk(teacher, 10)
    dense = densify_topk(torch.from_numpy(values.astype(np.float32)), torch.from_numpy(indices), 100)
    kd = build("kd", temperature=1.0)
    assert float(kd(student, dense)) == pytest.approx(float(kd(student, teacher)), rel=0.02)


def test_the_provider_splits_and_densifies_the_batch_rows():
    """Rows arrive as [values, indices] (float32, `SparseRows`); the provider gives B x C log-probabilities."""
    rows = torch.tensor([[0.6, 0.3, 3.0, 0.0], [0.5, 0.5, 1.0, 4.0]])
    out = SparseLogits(None, 5)({"teacher_logits": rows}, {})
    assert out.shape == (2, 5)
    assert math.isclose(float(out[0, 3].exp()), 0.6, rel_tol=1e-6)
    assert math.isclose(float(out[1, 4].exp()), 0.5, rel_tol=1e-6) and float(
        out[1, 0].exp()
    ) == pytest.approx(1e-8)
