"""OOD-paper losses (vl_cls, mse, im_cst, vlprox, cap): hand-computed golden values and loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vlmkd.losses as L

LN = math.log
E = math.e
R = 1 / math.sqrt(2)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def labels(*ys):
    return torch.tensor(ys, dtype=torch.int64)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def lse(v):
    m = max(v)
    return m + math.log(sum(math.exp(a - m) for a in v))


# ---------------------------------------------------------------- vl_cls


def test_vl_cls_golden():
    # s = (2,0) -> (1,0); w0 = (1,0), w1 = (0,3) -> (0,1); cos = [1, 0]; tau = 0.5 -> logits [2, 0]
    # label 0: -ln(e^2/(e^2+1)) = ln(1 + e^-2); label 1: -ln(1/(e^2+1)) = ln(1 + e^2)
    loss = L.build("vl_cls", temperature=0.5)
    w = t([[1.0, 0.0], [0.0, 3.0]])
    assert loss(t([[2.0, 0.0]]), w, labels(0)).item() == pytest.approx(LN(1 + math.exp(-2)), rel=1e-6)
    assert loss(t([[2.0, 0.0]]), w, labels(1)).item() == pytest.approx(LN(1 + math.exp(2)), rel=1e-6)


def test_vl_cls_balanced_golden():
    # as above (logits [2, 0]) plus log prior: counts [3, 1] -> [ln 3/4, ln 1/4]; label 1:
    # -ln(e^{ln 1/4} / (e^{2 + ln 3/4} + e^{ln 1/4})) = ln(1 + 3 e^2)
    loss = L.build("vl_cls", temperature=0.5, balanced=True, class_counts=[3, 1])
    w = t([[1.0, 0.0], [0.0, 3.0]])
    assert loss(t([[2.0, 0.0]]), w, labels(1)).item() == pytest.approx(LN(1 + 3 * math.exp(2)), rel=1e-6)


def test_vl_cls_matches_loop_reference_and_default_tau():
    rng = np.random.default_rng(0)
    s, w, y = rng.normal(size=(6, 5)), rng.normal(size=(4, 5)), np.array([0, 3, 1, 1, 2, 0])
    z = unit(s) @ unit(w).T / 0.07
    ref = np.mean([lse(list(z[i])) - z[i, y[i]] for i in range(6)])
    got = L.build("vl_cls")(torch.tensor(s), torch.tensor(w), torch.tensor(y)).item()
    assert got == pytest.approx(ref, rel=1e-9)


def test_vl_cls_class_text_receives_gradient():
    w = torch.randn(3, 4, requires_grad=True)
    L.build("vl_cls")(torch.randn(2, 4), w, labels(0, 2)).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


# ---------------------------------------------------------------- mse


def test_mse_golden():
    # row 1: s=(1,0), t=(0,2)->(0,1): ||(1,-1)||^2 = 2; row 2: s=(1,0), t=(3,0)->(1,0): 0; batch mean = 1
    got = L.build("mse")(t([[1.0, 0.0], [1.0, 0.0]]), t([[0.0, 2.0], [3.0, 0.0]]))
    assert got.item() == pytest.approx(1.0, rel=1e-6)


def test_mse_equals_two_minus_two_cos():
    rng = np.random.default_rng(1)
    s, x = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    ref = float(np.mean(2 - 2 * (unit(s) * unit(x)).sum(1)))
    assert L.build("mse")(torch.tensor(s), torch.tensor(x)).item() == pytest.approx(ref, rel=1e-9)


# ---------------------------------------------------------------- im_cst


def _pair():
    # s1 = (1,0), s2 = (0,1); t1 = (1,0), t2 = (1,1)/sqrt2 -> M = cos = [[1, r], [0, r]]
    return t([[3.0, 0.0], [0.0, 0.5]]), t([[2.0, 0.0], [4.0, 4.0]])


def test_im_cst_golden_modes():
    s, x = _pair()
    # tau = 1. rows (student -> teacher): -ln(e/(e+e^r)) and -ln(e^r/(1+e^r))
    rows = (-LN(E / (E + math.exp(R))) - LN(math.exp(R) / (1 + math.exp(R)))) / 2
    # columns (teacher -> student): [1, 0] target 0 -> -ln(e/(e+1)); [r, r] target 1 -> ln 2
    cols = (-LN(E / (E + 1)) + LN(2)) / 2
    # paper: logits 2M: rows -ln(e^2/(e^2+e^{2r})) and -ln(e^{2r}/(1+e^{2r}))
    paper = (-LN(E**2 / (E**2 + math.exp(2 * R))) - LN(math.exp(2 * R) / (1 + math.exp(2 * R)))) / 2
    build = lambda m: L.build("im_cst", temperature=1.0, mode=m)  # noqa: E731
    assert build("bidirectional")(s, x).item() == pytest.approx((rows + cols) / 2, rel=1e-6)
    assert build("single")(s, x).item() == pytest.approx(rows, rel=1e-6)
    assert build("paper")(s, x).item() == pytest.approx(paper, rel=1e-6)


def test_im_cst_paper_mode_is_the_squared_distance_formula():
    # paper Eq. 3: p_i = exp(-||s_i - t_i||^2/tau) / sum_j exp(-||s_i - t_j||^2/tau), loss = mean -ln p_i
    rng = np.random.default_rng(2)
    s, x = unit(rng.normal(size=(6, 4))), unit(rng.normal(size=(6, 4)))
    tau = 0.3
    ref = 0.0
    for i in range(6):
        z = [-float(((s[i] - x[j]) ** 2).sum()) / tau for j in range(6)]
        ref += lse(z) - z[i]
    got = L.build("im_cst", temperature=tau, mode="paper")(torch.tensor(s), torch.tensor(x)).item()
    assert got == pytest.approx(ref / 6, rel=1e-9)


def test_im_cst_bidirectional_matches_loop_reference():
    rng = np.random.default_rng(3)
    s, x = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    m = unit(s) @ unit(x).T / 0.07
    rows = np.mean([lse(list(m[i])) - m[i, i] for i in range(5)])
    cols = np.mean([lse(list(m[:, j])) - m[j, j] for j in range(5)])
    got = L.build("im_cst")(torch.tensor(s), torch.tensor(x)).item()
    assert got == pytest.approx((rows + cols) / 2, rel=1e-9)


@pytest.mark.parametrize("mode", ["bidirectional", "single", "paper"])
def test_im_cst_batch_of_one_is_zero(mode):
    assert L.build("im_cst", mode=mode)(torch.randn(1, 4), torch.randn(1, 4)).item() == pytest.approx(
        0, abs=1e-7
    )


# ---------------------------------------------------------------- vlprox


def _vlprox_case():
    # class texts e1, e2, e3. teacher (2,1,0) -> cos [2,1,0]/sqrt5; tau = 1/sqrt5 -> z_T = [2, 1, 0]
    # student (1,1,0) -> cos [1,1,0]/sqrt2 -> z_S = sqrt(5/2) [1, 1, 0]
    w = torch.eye(3)
    return t([[1.0, 1.0, 0.0]]), t([[2.0, 1.0, 0.0]]), w, 1 / math.sqrt(5)


def test_vlprox_golden_top2():
    s, x, w, tau = _vlprox_case()
    # top-2 classes by z_T: {0, 1}; p_T = softmax(2, 1) = [e/(e+1), 1/(e+1)]; p_S = softmax(a, a) = [1/2, 1/2]
    # KL = sum p_T ln(p_T / (1/2))
    p0, p1 = E / (E + 1), 1 / (E + 1)
    expected = p0 * LN(2 * p0) + p1 * LN(2 * p1)
    got = L.build("vlprox", temperature=tau, k=2)(s, x, w, labels(0))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_vlprox_golden_all_classes_and_k_larger_than_c():
    s, x, w, tau = _vlprox_case()
    # k >= C = 3: full softmax. p_T = softmax(2,1,0); z_S = a [1,1,0], a = sqrt(5/2)
    a = math.sqrt(2.5)
    zt, zs = [2.0, 1.0, 0.0], [a, a, 0.0]
    lt, ls = lse(zt), lse(zs)
    expected = sum(math.exp(zt[c] - lt) * ((zt[c] - lt) - (zs[c] - ls)) for c in range(3))
    for k in (3, 256):
        got = L.build("vlprox", temperature=tau, k=k)(s, x, w, labels(0))
        assert got.item() == pytest.approx(expected, rel=1e-5)
    # k = 1: one column, both softmaxes are [1] -> KL 0
    assert L.build("vlprox", temperature=tau, k=1)(s, x, w, labels(0)).item() == pytest.approx(0, abs=1e-7)


def test_vlprox_filters_rows_the_teacher_gets_wrong():
    s, x, w, tau = _vlprox_case()
    one = L.build("vlprox", temperature=tau, k=2)(s, x, w, labels(0)).item()
    s2, x2 = torch.cat([s, t([[1.0, 0.0, 0.0]])]), torch.cat([x, x])
    # the second row's teacher argmax is class 0 but its label is 2: dropped, the mean is over the kept row only
    assert L.build("vlprox", temperature=tau, k=2)(s2, x2, w, labels(0, 2)).item() == pytest.approx(
        one, rel=1e-5
    )
    # unfiltered: row 2 has z_S = [sqrt5, 0, 0] -> top-2 columns p_S = softmax(sqrt5, 0); mean of both rows
    p_t = [E / (E + 1), 1 / (E + 1)]
    p_s = [math.exp(math.sqrt(5)) / (math.exp(math.sqrt(5)) + 1), 1 / (math.exp(math.sqrt(5)) + 1)]
    second = sum(p_t[j] * LN(p_t[j] / p_s[j]) for j in range(2))
    unfiltered = L.build("vlprox", temperature=tau, k=2, filter_wrong=False)(s2, x2, w, labels(0, 2)).item()
    assert unfiltered == pytest.approx((one + second) / 2, rel=1e-5)


def test_vlprox_no_kept_row_returns_connected_zero():
    s, x, w, tau = _vlprox_case()
    s = s.clone().requires_grad_(True)
    out = L.build("vlprox", temperature=tau)(s, x, w, labels(2))  # teacher says class 0, label 2
    assert out.dim() == 0 and out.item() == 0.0
    assert out.requires_grad
    out.backward()
    assert s.grad is not None and torch.all(s.grad == 0)


def _vlprox_reference(s, x, w, y, tau, k, filter_wrong):
    zt = unit(x) @ unit(w).T / tau
    zs = unit(s) @ unit(w).T / tau
    total, kept = 0.0, 0
    for i in range(len(y)):
        if filter_wrong and int(np.argmax(zt[i])) != y[i]:
            continue
        cols = list(np.argsort(-zt[i], kind="stable")[: min(k, w.shape[0])])
        a, b = [zt[i, c] for c in cols], [zs[i, c] for c in cols]
        la, lb = lse(a), lse(b)
        total += sum(math.exp(a[j] - la) * ((a[j] - la) - (b[j] - lb)) for j in range(len(cols)))
        kept += 1
    return total / kept


@pytest.mark.parametrize(("k", "filter_wrong"), [(3, True), (3, False), (256, True), (1, False)])
def test_vlprox_matches_loop_reference(k, filter_wrong):
    rng = np.random.default_rng(5)
    w = rng.normal(size=(6, 4))
    y = rng.integers(0, 6, size=20)
    x = w[y] + 0.8 * rng.normal(size=(20, 4))  # mostly right, some wrong
    s = rng.normal(size=(20, 4))
    ref = _vlprox_reference(s, x, w, y, 0.07, k, filter_wrong)
    got = L.build("vlprox", k=k, filter_wrong=filter_wrong)(
        torch.tensor(s), torch.tensor(x), torch.tensor(w), torch.tensor(y)
    ).item()
    assert got == pytest.approx(ref, rel=1e-7)


# ---------------------------------------------------------------- cap


def test_cap_golden():
    # s_i = c_i = orthonormal, no tau: logits = I; each row -ln(e/(e+1)) = ln(1 + e^-1)
    s = t([[1.0, 0.0], [0.0, 1.0]])
    assert L.build("cap")(s, s * 2, labels(0, 1)).item() == pytest.approx(LN(1 + math.exp(-1)), rel=1e-6)
    # tau = 0.5: logits = 2I -> ln(1 + e^-2)
    got = L.build("cap", temperature=0.5)(s, s, labels(0, 1))
    assert got.item() == pytest.approx(LN(1 + math.exp(-2)), rel=1e-6)
    # same class: the other caption is not a negative -> log(1) = 0
    assert L.build("cap")(s, s, labels(4, 4)).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("tau", [None, 0.07])
def test_cap_matches_loop_reference(tau):
    rng = np.random.default_rng(6)
    s, c = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    y = np.array([0, 1, 0, 2, 2, 3, 0, 1])
    z = unit(s) @ unit(c).T / (tau or 1.0)
    ref = 0.0
    for i in range(8):
        cands = [j for j in range(8) if j == i or y[j] != y[i]]
        ref += lse([z[i, j] for j in cands]) - z[i, i]
    got = L.build("cap", temperature=tau)(torch.tensor(s), torch.tensor(c), torch.tensor(y)).item()
    assert got == pytest.approx(ref / 8, rel=1e-9)


def test_teacher_features_are_constants():
    x = torch.randn(3, 4, requires_grad=True)
    s = torch.randn(3, 4, requires_grad=True)
    (L.build("mse")(s, x) + L.build("im_cst")(s, x)).backward()
    assert x.grad is None and s.grad is not None
