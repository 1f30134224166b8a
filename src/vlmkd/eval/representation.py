"""Representation metrics of the OOD-distillation paper (Li et al., ICCV 2023, Sec. 4 / Tables 3, 14-16).

Inputs are N x D student and teacher image features (and C x D class-text features for M_vlalign), as torch tensors
or numpy arrays, raw: everything is L2-normalised here. For unit vectors ||a - b||^2 = 2 - 2 cos(a, b), so every
"nearest by squared distance" below is computed as "largest cosine". Work is done in row chunks of `chunk_size`,
so at most a few chunk x N (or chunk x C) matrices exist at once, never an N x N one. Computation runs in float32 on
the device of the student tensor (CPU for numpy input).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from vlmkd.errors import ConfigError


def _unit(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.dim() != 2:
        raise ConfigError(f"features must be a 2-D N x D array, got shape {tuple(t.shape)}")
    return F.normalize(t.to(device=device, dtype=torch.float32), dim=-1)


def _pair(student: Any, teacher: Any) -> tuple[torch.Tensor, torch.Tensor]:
    s = _unit(student)
    t = _unit(teacher, s.device)
    if s.shape[0] != t.shape[0]:
        raise ConfigError(
            f"student has {s.shape[0]} rows but teacher has {t.shape[0]}; they must be the same images"
        )
    if s.shape[0] == 0:
        raise ConfigError("no features given")
    return s, t


def _chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def _rank_topk(sims: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries per row, largest first (the order among exactly equal values is
    unspecified; with real features only duplicate images tie)."""
    return sims.topk(k, dim=-1, largest=True, sorted=True).indices


@torch.no_grad()
def m_rel(student: Any, teacher: Any, chunk_size: int = 4096) -> float:
    """M_rel = (1/N) sum_i 1[i = argmin_j ||T(x_j) - S(x_i)||^2]: how often the teacher feature nearest to a
    student feature is that image's own teacher feature (among all N teacher features). Higher is better."""
    s, t = _pair(student, teacher)
    n, step = s.shape[0], _chunk(chunk_size)
    hits = 0
    for a in range(0, n, step):
        nearest = (s[a : a + step] @ t.T).argmax(dim=1)  # argmax returns the first maximal index
        hits += int((nearest == torch.arange(a, a + nearest.numel(), device=s.device)).sum())
    return hits / n


@torch.no_grad()
def m_neigh(student: Any, teacher: Any, k: int, chunk_size: int = 4096) -> float:
    """M_neigh(k) = sum_i |KNN_S(i, k) ∩ KNN_T(i, k)| / (k N).

    KNN_S(i, k): the k images whose student features are nearest to S(x_i) (student-student distances);
    KNN_T(i, k): likewise among the teacher features. The image itself is excluded from both. Higher is better.
    """
    s, t = _pair(student, teacher)
    n, step = s.shape[0], _chunk(chunk_size)
    k = int(k)
    if not 1 <= k < n:
        raise ConfigError(f"k must be in [1, N-1] = [1, {n - 1}], got {k}")
    overlap = 0
    for a in range(0, n, step):
        rows = torch.arange(a, min(a + step, n), device=s.device)
        local = torch.arange(rows.numel(), device=s.device)
        sim_s = s[rows] @ s.T
        sim_s[local, rows] = -math.inf
        knn_s = _rank_topk(sim_s, k)
        del sim_s
        sim_t = t[rows] @ t.T
        sim_t[local, rows] = -math.inf
        knn_t = _rank_topk(sim_t, k)
        del sim_t
        member = torch.zeros(rows.numel(), n, dtype=torch.bool, device=s.device)
        member.scatter_(1, knn_s, True)
        overlap += int(member.gather(1, knn_t).sum())
    return overlap / (k * n)


@torch.no_grad()
def m_vlalign(student: Any, teacher: Any, class_text: Any, k: int, chunk_size: int = 4096) -> float:
    """M_vlalign(k) = (1/N) sum_i #reverse_pairs(arr_S(i, k)). Lower is better; at most k(k-1)/2.

    Reading of the paper's definition: for image i take the k class-text features W_j nearest to the *teacher*
    feature T(x_i) (teacher distance ||T(x_i) - W_j||^2, nearest first). arr_S(i, k) lists the *student* distances
    ||S(x_i) - W_j||^2 to the same k class texts, in that teacher order. A reverse pair is a < b with
    arr[a] > arr[b] (strictly: equal distances are not counted). The class texts are the teacher's text features;
    the student is compared against the same ones.
    """
    s, t = _pair(student, teacher)
    w = _unit(class_text, s.device)
    if w.shape[1] != s.shape[1]:
        raise ConfigError(f"class_text has dimension {w.shape[1]} but features have {s.shape[1]}")
    n, step = s.shape[0], _chunk(chunk_size)
    k = int(k)
    if not 1 <= k <= w.shape[0]:
        raise ConfigError(f"k must be in [1, C] = [1, {w.shape[0]}], got {k}")
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=s.device), diagonal=1)  # pairs a < b
    total = 0
    for a in range(0, n, step):
        order = _rank_topk(t[a : a + step] @ w.T, k)  # teacher's k nearest class texts, nearest first
        dist_s = 2.0 - 2.0 * (s[a : a + step] @ w.T).gather(1, order)  # student distances in that order
        reverse = (dist_s[:, :, None] > dist_s[:, None, :]) & upper
        total += int(reverse.sum())
    return total / n


@torch.no_grad()
def feature_gap(student: Any, teacher: Any) -> dict[str, float]:
    """Paper Table 2: mean ||S - T||^2 of the normalised features and mean angle between them (degrees)."""
    s, t = _pair(student, teacher)
    cos = (s * t).sum(dim=1).clamp(-1.0, 1.0)
    return {
        "mse": float((2.0 - 2.0 * cos).mean()),
        "angle_deg": float(torch.rad2deg(torch.arccos(cos)).mean()),
    }
