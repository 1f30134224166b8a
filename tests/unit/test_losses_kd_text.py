"""kd, hard_kd and text_nce: golden values by hand, loop references, masks, directions, learnable temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vlmkd.losses as L
from vlmkd.errors import ConfigError

LN = math.log
E = math.e


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def labels(*ys):
    return torch.tensor(ys, dtype=torch.int64)


# ---------------------------------------------------------------- kd


def test_kd_golden_t1():
    # teacher [ln3, 0] -> p_t = [3/4, 1/4]; student [0, 0] -> p_s = [1/2, 1/2]
    # KL = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 0.75 ln 1.5 + 0.25 ln 0.5
    got = L.build("kd", temperature=1.0)(t([[0.0, 0.0]]), t([[LN(3), 0.0]]))
    assert got.item() == pytest.approx(0.75 * LN(1.5) + 0.25 * LN(0.5), rel=1e-6)


def test_kd_golden_t2_scales_by_t_squared():
    # teacher [2 ln3, 0] / T=2 -> [ln3, 0], the same distributions as above; loss times T^2 = 4
    got = L.build("kd")(t([[0.0, 0.0]]), t([[2 * LN(3), 0.0]]))
    assert got.item() == pytest.approx(4 * (0.75 * LN(1.5) + 0.25 * LN(0.5)), rel=1e-6)


def test_kd_matches_loop_reference_and_is_batchmean():
    g = torch.Generator().manual_seed(0)
    s, te = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g) * 2
    T = 3.0
    ref = 0.0
    for srow, trow in zip(s.tolist(), te.tolist()):
        ps = np.exp(np.array(srow) / T) / np.exp(np.array(srow) / T).sum()
        pt = np.exp(np.array(trow) / T) / np.exp(np.array(trow) / T).sum()
        ref += float((pt * np.log(pt / ps)).sum())
    ref = ref / 5 * T * T
    assert L.build("kd", temperature=T)(s, te).item() == pytest.approx(ref, rel=1e-5)
    assert L.build("kd")(s, s).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_teacher_gets_no_gradient():
    s, te = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    L.build("kd")(s, te).backward()
    assert s.grad is not None and te.grad is None


def test_hard_kd_golden():
    # teacher argmax = class 1; student [0, ln3, 0] -> p1 = 3/5 -> CE = ln(5/3)
    got = L.build("hard_kd")(t([[0.0, LN(3), 0.0]]), t([[1.0, 5.0, 2.0]]))
    assert got.item() == pytest.approx(LN(5 / 3), rel=1e-6)


# ---------------------------------------------------------------- text_nce

R = 1 / math.sqrt(2)


def _asym():
    # s1 = (1,0), s2 = (0,1); x1 = (1,0), x2 = (1,1)/sqrt2 (given unnormalised, scaled)
    # cos matrix M = [[1, r], [0, r]] with r = 1/sqrt2
    return t([[2.0, 0.0], [0.0, 3.0]]), t([[5.0, 0.0], [1.0, 1.0]])


def test_text_nce_golden_directions():
    s, x = _asym()
    y = labels(0, 1)
    # tau = 1. image_to_text rows: -ln(e^1/(e^1+e^r)) and -ln(e^r/(e^0+e^r))
    i2t = (-LN(E / (E + math.exp(R))) - LN(math.exp(R) / (1 + math.exp(R)))) / 2
    # text_to_image columns: col0 = [1, 0] target 0: -ln(e/(e+1)); col1 = [r, r] target 1: ln 2
    t2i = (-LN(E / (E + 1)) + LN(2)) / 2
    build = lambda d: L.build("text_nce", temperature=1.0, direction=d)  # noqa: E731
    assert build("image_to_text")(s, x, y).item() == pytest.approx(i2t, rel=1e-6)
    assert build("text_to_image")(s, x, y).item() == pytest.approx(t2i, rel=1e-6)
    assert build("symmetric")(s, x, y).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_text_nce_golden_temperature():
    # orthonormal pairs, tau = 0.5: logits = 2 I; each row -ln(e^2/(e^2+1)) = ln(1 + e^-2)
    s = t([[1.0, 0.0], [0.0, 1.0]])
    got = L.build("text_nce", temperature=0.5)(s, s * 7, labels(0, 1))
    assert got.item() == pytest.approx(LN(1 + math.exp(-2)), rel=1e-6)


@pytest.mark.parametrize("direction", ["image_to_text", "text_to_image", "symmetric"])
def test_text_nce_same_class_mask_in_every_direction(direction):
    s, x = _asym()
    same = labels(3, 3)
    masked = L.build("text_nce", temperature=1.0, direction=direction)
    unmasked = L.build("text_nce", temperature=1.0, direction=direction, mask_same_class=False)
    # both samples share a class: every negative is masked, only the positive is left -> log(1) = 0
    assert masked(s, x, same).item() == pytest.approx(0.0, abs=1e-7)
    assert unmasked(s, x, same).item() > 0.1
    # different classes: the mask changes nothing
    assert masked(s, x, labels(0, 1)).item() == pytest.approx(unmasked(s, x, labels(0, 1)).item(), rel=1e-6)


def _nce_reference(s, x, y, tau, direction, mask):
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(y)

    def rowwise(get):  # get(i, j): logit of anchor i against candidate j
        total = 0.0
        for i in range(n):
            cands = [j for j in range(n) if j == i or not (mask and y[i] == y[j])]
            lse = math.log(sum(math.exp(get(i, j)) for j in cands))
            total += lse - get(i, i)
        return total / n

    i2t = rowwise(lambda i, j: float(s[i] @ x[j]) / tau)
    t2i = rowwise(lambda i, j: float(x[i] @ s[j]) / tau)
    return {"image_to_text": i2t, "text_to_image": t2i, "symmetric": (i2t + t2i) / 2}[direction]


@pytest.mark.parametrize("direction", ["image_to_text", "text_to_image", "symmetric"])
@pytest.mark.parametrize("mask", [True, False])
def test_text_nce_matches_loop_reference(direction, mask):
    rng = np.random.default_rng(3)
    s, x = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
    y = np.array([0, 1, 1, 2, 0, 3, 1, 2])
    got = L.build("text_nce", temperature=0.2, direction=direction, mask_same_class=mask)(
        torch.tensor(s, dtype=torch.float64), torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    )
    assert got.item() == pytest.approx(_nce_reference(s, x, y, 0.2, direction, mask), rel=1e-9)


def test_text_nce_multiple_descriptions_are_averaged_then_renormalised():
    rng = np.random.default_rng(4)
    s, x = rng.normal(size=(5, 4)), rng.normal(size=(5, 3, 4))
    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    pooled = unit.mean(axis=1)
    y = np.array([0, 1, 0, 2, 1])
    loss = L.build("text_nce", direction="symmetric")
    got = loss(torch.tensor(s), torch.tensor(x), torch.tensor(y)).item()
    assert got == pytest.approx(_nce_reference(s, pooled, y, 0.07, "symmetric", True), rel=1e-9)


def test_text_nce_batch_of_one_is_zero():
    for d in ("image_to_text", "text_to_image", "symmetric"):
        got = L.build("text_nce", direction=d)(torch.randn(1, 4), torch.randn(1, 4), labels(0))
        assert got.item() == pytest.approx(0.0, abs=1e-7)


def test_text_nce_learnable_temperature_gets_a_gradient():
    loss = L.build("text_nce", temperature=0.1, learnable_temperature=True)
    params = dict(loss.named_parameters())
    assert list(params) == ["logit_scale"]
    assert params["logit_scale"].item() == pytest.approx(LN(10), rel=1e-6)  # log(1/tau)
    assert loss.temperature == pytest.approx(0.1, rel=1e-6)
    p = torch.randn(6, 4, requires_grad=True)
    out = loss(p, torch.randn(6, 4), labels(0, 1, 2, 3, 4, 5))
    out.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.abs().item() > 0
    assert p.grad is not None


def test_text_nce_fixed_temperature_has_no_parameters():
    loss = L.build("text_nce", temperature=0.05)
    assert list(loss.parameters()) == []
    assert isinstance(loss.temperature, float) and loss.temperature == 0.05


def test_text_nce_learnable_scale_is_clamped_to_100():
    loss = L.build("text_nce", temperature=0.001, learnable_temperature=True)  # 1/tau = 1000 > 100
    assert loss.scale().item() == pytest.approx(100.0)
    assert loss.temperature == pytest.approx(0.01)
    s = t([[1.0, 0.0], [0.0, 1.0]])
    # logits = 100 I -> each row ln(1 + e^-100) ~ e^-100, i.e. 0
    assert loss(s, s, labels(0, 1)).item() == pytest.approx(0.0, abs=1e-6)


def test_text_nce_dimension_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="embed_dim"):
        L.build("text_nce")(torch.randn(2, 4), torch.randn(2, 5), labels(0, 1))


def test_kd_logit_adjust_golden():
    """Prior-corrected KD: both sides + log(prior) before the tempered softmax (numbers by hand in numpy)."""
    s = np.array([[1.0, 0.0, -1.0]])
    t = np.array([[0.0, 2.0, 0.0]])
    counts = [80, 15, 5]
    T = 2.0
    lp = np.log(np.array(counts) / 100.0)

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    p_t, p_s = softmax((t[0] + lp) / T), softmax((s[0] + lp) / T)
    expected = T * T * float(np.sum(p_t * (np.log(p_t) - np.log(p_s))))
    loss = L.build("kd", temperature=T, logit_adjust=True, class_counts=counts)
    got = float(loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)))
    assert got == pytest.approx(expected, rel=1e-5)
    plain = float(L.build("kd", temperature=T)(torch.tensor(s).float(), torch.tensor(t).float()))
    assert abs(plain - got) > 1e-3  # the prior changes the target
    with pytest.raises(ConfigError, match="class_counts"):
        L.build("kd", logit_adjust=True)


# ---------------------------------------------------------------- text_soft, text_rkd


def test_text_soft_golden():
    """A description equal to class 0's text, orthogonal class texts, tau_desc = 1: p_t = softmax([1, 0])."""
    class_text = t([[1.0, 0.0], [0.0, 2.0]])  # normalised inside
    desc = t([[3.0, 0.0]])
    p_t = np.array([E, 1.0]) / (E + 1.0)
    expected = float(np.sum(p_t * np.log(p_t / 0.5)))  # student logits [0, 0]: uniform
    loss = L.build("text_soft", desc_temperature=1.0, temperature=1.0)
    assert loss(t([[0.0, 0.0]]), desc, class_text).item() == pytest.approx(expected, rel=1e-6)
    # T = 2 tempers both sides and scales by T^2
    p2 = np.exp(np.array([0.5, 0.0])) / np.exp(np.array([0.5, 0.0])).sum()
    got2 = L.build("text_soft", desc_temperature=1.0, temperature=2.0)(t([[0.0, 0.0]]), desc, class_text)
    assert got2.item() == pytest.approx(4 * float(np.sum(p2 * np.log(p2 / 0.5))), rel=1e-6)


def test_text_soft_averages_descriptions_and_only_the_student_learns():
    class_text = t([[1.0, 0.0], [0.0, 1.0]])
    two = t([[[1.0, 0.0], [0.0, 1.0]]])  # B x K x D: the mean points between the classes -> uniform target
    logits = torch.zeros(1, 2, requires_grad=True)
    loss = L.build("text_soft", desc_temperature=0.1)
    assert loss(logits, two, class_text).item() == pytest.approx(0.0, abs=1e-6)
    loss(logits + t([[1.0, 0.0]]), two, class_text).backward()
    assert logits.grad is not None and logits.grad[0, 0] > 0


def test_text_rkd_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    s, x = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)  # any student dim
    tau, tau_t = 0.3, 0.2
    sn, xn = F_normalize(s.numpy()), F_normalize(x.numpy())
    total = 0.0
    for i in range(5):
        js = [j for j in range(5) if j != i]
        ls = np.array([sn[i] @ sn[j] / tau for j in js])
        lt = np.array([xn[i] @ xn[j] / tau_t for j in js])
        ps, pt = np.exp(ls) / np.exp(ls).sum(), np.exp(lt) / np.exp(lt).sum()
        total += float(np.sum(pt * np.log(pt / ps)))
    got = L.build("text_rkd", temperature=tau, text_temperature=tau_t)(s, x)
    assert got.item() == pytest.approx(total / 5, rel=1e-5)
    # the same relations give zero, and fewer than three samples have no relation to distill
    assert L.build("text_rkd", temperature=0.2, text_temperature=0.2)(x, x).item() == pytest.approx(
        0, abs=1e-6
    )
    assert L.build("text_rkd")(s[:2], x[:2]).item() == 0.0


def F_normalize(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)
