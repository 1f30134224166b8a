"""Classification losses and the loss registry: golden values by hand and loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vlmkd.losses as L
from vlmkd.errors import ConfigError

LN = math.log
VOCAB = {
    "logits",
    "labels",
    "teacher_logits",
    "proj",
    "text_emb",
    "embedding",
    "teacher_features",
    "class_text",
    "caption_emb",
}
ALL = [
    "balanced_softmax",
    "cap",
    "ce",
    "class_balanced",
    "hard_kd",
    "im_cst",
    "kd",
    "logit_adjusted",
    "mse",
    "text_nce",
    "text_rkd",
    "text_soft",
    "vl_cls",
    "vlprox",
]
COUNTED = {"balanced_softmax", "logit_adjusted", "class_balanced"}


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def labels(*ys):
    return torch.tensor(ys, dtype=torch.int64)


# ---------------------------------------------------------------- registry


def test_list_losses_sorted_and_complete():
    assert L.list_losses() == ALL
    assert L.LOSSES.names() == ALL


@pytest.mark.parametrize("name", ALL)
def test_every_loss_declares_inputs_and_returns_a_scalar(name):
    kwargs = {"class_counts": [5, 3, 1]} if name in COUNTED else {}
    mod = L.build(name, **kwargs)
    assert isinstance(mod, torch.nn.Module)
    assert isinstance(mod.inputs, tuple) and mod.inputs and set(mod.inputs) <= VOCAB
    g = torch.Generator().manual_seed(0)
    B, C, D = 4, 3, 5
    y = labels(0, 1, 2, 0)
    pool = {
        "logits": torch.randn(B, C, generator=g, requires_grad=True),
        "labels": y,
        "teacher_logits": torch.randn(B, C, generator=g),
        "proj": torch.randn(B, D, generator=g, requires_grad=True),
        "text_emb": torch.randn(B, D, generator=g),
        "embedding": torch.randn(B, D, generator=g, requires_grad=True),
        "teacher_features": torch.randn(B, D, generator=g),
        "class_text": torch.randn(C, D, generator=g),
        "caption_emb": torch.randn(B, D, generator=g),
    }
    out = mod(*[pool[n] for n in mod.inputs])
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()


def test_unknown_loss_name_suggests():
    with pytest.raises(ConfigError, match='did you mean "balanced_softmax"'):
        L.build("balanced_softmx", class_counts=[1, 2])


def test_unknown_kwarg_suggests():
    with pytest.raises(ConfigError, match='did you mean "temperature"'):
        L.build("kd", temprature=4.0)
    with pytest.raises(ConfigError, match='did you mean "label_smoothing"'):
        L.build("ce", label_smoothin=0.1)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("ce", {"label_smoothing": 1.0}),
        ("ce", {"label_smoothing": -0.1}),
        ("kd", {"temperature": 0}),
        ("vl_cls", {"temperature": -1}),
        ("text_nce", {"direction": "both"}),
        ("im_cst", {"mode": "sym"}),
        ("vlprox", {"k": 0}),
        ("class_balanced", {"class_counts": [1, 2], "beta": 1.0}),
        ("balanced_softmax", {"class_counts": [1, -2]}),
        ("balanced_softmax", {"class_counts": [0, 0]}),
        ("balanced_softmax", {"class_counts": [[1, 2]]}),
        ("logit_adjusted", {"class_counts": "abc"}),
    ],
)
def test_bad_arguments_raise_config_error(name, kwargs):
    with pytest.raises(ConfigError):
        L.build(name, **kwargs)


# ---------------------------------------------------------------- golden values


def test_ce_golden():
    # logits [0, ln3] -> p = [1/4, 3/4]; label 1: -ln(3/4) = ln(4/3); label 0: -ln(1/4) = ln 4
    logits = t([[0.0, LN(3)], [0.0, LN(3)]])
    got = L.build("ce")(logits, labels(1, 0))
    assert got.item() == pytest.approx((LN(4 / 3) + LN(4)) / 2, rel=1e-6)


def test_ce_label_smoothing_golden():
    # eps = 0.2, label 1: (1 - eps) * -ln p1 + eps * mean_c(-ln p_c) = 0.8 ln(4/3) + 0.2 (ln 4 + ln(4/3)) / 2
    got = L.build("ce", label_smoothing=0.2)(t([[0.0, LN(3)]]), labels(1))
    assert got.item() == pytest.approx(0.8 * LN(4 / 3) + 0.2 * (LN(4) + LN(4 / 3)) / 2, rel=1e-6)


def test_balanced_softmax_golden():
    # counts [3, 1] -> prior [3/4, 1/4]; logits 0 + log prior -> p = prior
    # label 0: -ln(3/4) = ln(4/3); label 1: -ln(1/4) = ln 4
    loss = L.build("balanced_softmax", class_counts=[3, 1])
    got = loss(t([[0.0, 0.0], [0.0, 0.0]]), labels(0, 1))
    assert got.item() == pytest.approx((LN(4 / 3) + LN(4)) / 2, rel=1e-6)


def test_logit_adjusted_golden():
    # tau = 2, counts [3, 1]: adjusted logits [2 ln(3/4), 2 ln(1/4)] -> p proportional to [9/16, 1/16]
    # -> p = [0.9, 0.1]; label 1: -ln 0.1 = ln 10
    loss = L.build("logit_adjusted", class_counts=np.array([3, 1]), tau=2.0)
    assert loss(t([[0.0, 0.0]]), labels(1)).item() == pytest.approx(LN(10), rel=1e-6)
    # tau = 0 is plain CE; tau = 1 is balanced softmax
    x, y = torch.randn(6, 3), labels(0, 1, 2, 2, 1, 0)
    counts = torch.tensor([10, 4, 1])
    assert L.build("logit_adjusted", class_counts=counts, tau=0.0)(x, y).item() == pytest.approx(
        L.build("ce")(x, y).item(), rel=1e-6
    )
    assert L.build("logit_adjusted", class_counts=counts)(x, y).item() == pytest.approx(
        L.build("balanced_softmax", class_counts=counts)(x, y).item(), rel=1e-6
    )


def test_class_balanced_golden():
    # beta = 0.5, counts [1, 2]: raw w = [(1-.5)/(1-.5), (1-.5)/(1-.25)] = [1, 2/3], sum 5/3
    # normalised to sum C = 2: w = [1 * 6/5, 2/3 * 6/5] = [1.2, 0.8]; zero logits -> CE = ln 2 per sample
    loss = L.build("class_balanced", class_counts=[1, 2], beta=0.5)
    assert loss.weights.tolist() == pytest.approx([1.2, 0.8], rel=1e-6)
    zeros = torch.zeros(2, 2)
    assert loss(zeros, labels(0, 1)).item() == pytest.approx((1.2 + 0.8) / 2 * LN(2), rel=1e-6)
    # plain batch mean, not the weighted mean: two class-0 samples give 1.2 ln 2 (a weighted mean would give ln 2)
    assert loss(zeros, labels(0, 0)).item() == pytest.approx(1.2 * LN(2), rel=1e-6)


def _loop_ce(logits, y, offset=None, weights=None):
    total = 0.0
    for row, c in zip(logits.tolist(), y.tolist()):
        z = [v + (offset[j] if offset is not None else 0.0) for j, v in enumerate(row)]
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        total += (weights[c] if weights is not None else 1.0) * (lse - z[c])
    return total / len(y)


def test_long_tail_losses_match_loop_reference():
    g = torch.Generator().manual_seed(1)
    counts = [500, 120, 40, 7, 1]
    x, y = torch.randn(16, 5, generator=g) * 3, torch.randint(0, 5, (16,), generator=g)
    n = sum(counts)
    log_prior = [math.log(c / n) for c in counts]
    assert L.build("balanced_softmax", class_counts=counts)(x, y).item() == pytest.approx(
        _loop_ce(x, y, log_prior), rel=1e-5
    )
    assert L.build("logit_adjusted", class_counts=counts, tau=1.5)(x, y).item() == pytest.approx(
        _loop_ce(x, y, [1.5 * v for v in log_prior]), rel=1e-5
    )
    beta = 0.99
    raw = [(1 - beta) / (1 - beta**c) for c in counts]
    w = [v / sum(raw) * len(counts) for v in raw]
    assert L.build("class_balanced", class_counts=counts, beta=beta)(x, y).item() == pytest.approx(
        _loop_ce(x, y, weights=w), rel=1e-5
    )


def test_zero_count_class_stays_finite():
    loss = L.build("balanced_softmax", class_counts=[10, 0, 5])
    assert torch.isfinite(loss.log_prior).all()
    x = torch.randn(3, 3, requires_grad=True)
    out = loss(x, labels(0, 2, 0))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    assert torch.isfinite(L.build("class_balanced", class_counts=[10, 0, 5]).weights).all()


def test_class_count_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="class_counts"):
        L.build("balanced_softmax", class_counts=[1, 2, 3])(torch.zeros(2, 2), labels(0, 1))


def test_count_buffers_follow_the_module():
    loss = L.build("balanced_softmax", class_counts=[3, 1]).to(torch.float64)
    assert loss.log_prior.dtype == torch.float64
    assert "log_prior" in loss.state_dict()
