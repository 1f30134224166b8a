"""Losses of the OOD-distillation paper (Li et al., ICCV 2023): student embedding vs. a CLIP teacher.

All inputs are L2-normalised here; tau defaults to 0.07 as in the paper. Teacher image features are constants
(detached); class-text embeddings are not detached, so a learned prompt can receive gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmkd.errors import ConfigError
from vlmkd.losses import LOSSES
from vlmkd.losses.batch import in_batch_ce
from vlmkd.losses.classification import require_positive
from vlmkd.losses.text import same_class_negatives

IM_CST_MODES = ("bidirectional", "single", "paper")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ConfigError(
            f"{what}: student embedding is {tuple(a.shape)} but the teacher input is {tuple(b.shape)}; "
            "set the student's embed_dim to the teacher dimension"
        )


@LOSSES.register("vl_cls")
class VLClassification(nn.Module):
    """L_cls (paper Eq. 1): cross-entropy over cos(embedding, class_text_c) / tau."""

    inputs = ("embedding", "class_text", "labels")

    def __init__(
        self, temperature: float = 0.07, balanced: bool = False, class_counts: list[int] | None = None
    ):
        super().__init__()
        self.temperature = require_positive("temperature", temperature)
        self.log_prior = None
        if balanced:  # balanced softmax on the cosine logits: an unbiased zero-shot head on long-tailed data
            if class_counts is None:
                raise ConfigError("vl_cls with balanced=true needs class_counts (the training class counts)")
            counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
            self.log_prior = torch.log(counts / counts.sum())

    def forward(
        self, embedding: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits = _unit(embedding) @ _unit(class_text).to(embedding.dtype).T / self.temperature
        if self.log_prior is not None:
            logits = logits + self.log_prior.to(logits.device, logits.dtype)
        return F.cross_entropy(logits, labels)


@LOSSES.register("mse")
class FeatureMSE(nn.Module):
    """L_mse (paper Eq. 2): ||s_hat - t_hat||^2 summed over dimensions (= 2 - 2 cos), mean over the batch."""

    inputs = ("embedding", "teacher_features")

    def forward(self, embedding: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        _check_pair(embedding, teacher_features, "mse")
        diff = _unit(embedding) - _unit(teacher_features.detach()).to(embedding.dtype)
        return diff.pow(2).sum(dim=-1).mean()


@LOSSES.register("im_cst")
class ImageContrastive(nn.Module):
    """L_im-cst (paper Eq. 3): in-batch contrast of student features against the teacher image features.

    M_ij = cos(s_i, t_j) / tau. `bidirectional` (released code, default): (CE(M, diag) + CE(M^T, diag)) / 2;
    `single`: CE(M, diag) only; `paper`: CE(2M, diag), i.e. the paper's exp(-||s_i - t_j||^2 / tau) (equal to
    2 cos / tau up to a constant per row).
    """

    inputs = ("embedding", "teacher_features")
    batch_coupled = ("embedding", "teacher_features")  # the other samples' teacher features are the negatives
    local_rows = True

    def __init__(self, temperature: float = 0.07, mode: str = "bidirectional"):
        super().__init__()
        self.temperature = require_positive("temperature", temperature)
        if mode not in IM_CST_MODES:
            raise ConfigError(f"mode must be one of {', '.join(IM_CST_MODES)}, got {mode!r}")
        self.mode = mode

    def forward(
        self, embedding: torch.Tensor, teacher_features: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        _check_pair(embedding, teacher_features, "im_cst")
        s, t = _unit(embedding), _unit(teacher_features.detach()).to(embedding.dtype)
        if self.mode == "paper":
            return in_batch_ce(s, t, 2.0 / self.temperature, rows)
        row = in_batch_ce(s, t, 1.0 / self.temperature, rows)
        if self.mode == "single":
            return row
        return 0.5 * (row + in_batch_ce(t, s, 1.0 / self.temperature, rows))


@LOSSES.register("vlprox")
class VLProximal(nn.Module):
    """L_vlprox (paper Eq. 6, code `L-vlalign`): KL(P_T,topk || P_S,topk) over the teacher's top-k classes.

    z_T = cos(t_hat, w_hat) / tau, z_S = cos(s_hat, w_hat) / tau over all C classes. Rows whose teacher argmax is not
    the label are dropped (`filter_wrong`). The top-min(k, C) columns by z_T are gathered from both, each side gets a
    softmax over those columns, and the loss is sum p_T (log p_T - log p_S), averaged over the kept rows. When no
    row is kept the result is a zero that is still connected to the student's graph.
    """

    inputs = ("embedding", "teacher_features", "class_text", "labels")
    # the mean runs over the kept rows of the whole batch: a per-rank mean would weigh ranks unequally
    batch_coupled = ("embedding", "teacher_features", "labels")

    def __init__(self, temperature: float = 0.07, k: int = 256, filter_wrong: bool = True):
        super().__init__()
        self.temperature = require_positive("temperature", temperature)
        if int(k) != k or int(k) < 1:
            raise ConfigError(f"k must be an integer >= 1, got {k!r}")
        self.k = int(k)
        self.filter_wrong = bool(filter_wrong)

    def forward(
        self,
        embedding: torch.Tensor,
        teacher_features: torch.Tensor,
        class_text: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        _check_pair(embedding, teacher_features, "vlprox")
        w = _unit(class_text).to(embedding.dtype)
        z_t = _unit(teacher_features.detach()).to(embedding.dtype) @ w.T / self.temperature
        z_s = _unit(embedding) @ w.T / self.temperature
        if self.filter_wrong:
            keep = z_t.argmax(dim=-1) == labels.reshape(-1)
            z_t, z_s = z_t[keep], z_s[keep]
        if z_t.shape[0] == 0:
            return embedding.sum() * 0.0
        top_t, idx = z_t.topk(min(self.k, z_t.shape[-1]), dim=-1)
        log_p_t = F.log_softmax(top_t, dim=-1)
        log_p_s = F.log_softmax(z_s.gather(-1, idx), dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()


@LOSSES.register("cap")
class CaptionContrastive(nn.Module):
    """L_cap (paper Eq. 8): each image against the captions in the batch, its own caption as the positive.

    logits_ij = cos(s_i, c_j) (divided by tau when `temperature` is given; None reproduces the released code, which
    has no temperature). Captions of other images of the same class are removed from the negatives.
    """

    inputs = ("embedding", "caption_emb", "labels")
    batch_coupled = ("embedding", "caption_emb", "labels")
    local_rows = True

    def __init__(self, temperature: float | None = None):
        super().__init__()
        self.temperature = None if temperature is None else require_positive("temperature", temperature)

    def forward(
        self,
        embedding: torch.Tensor,
        caption_emb: torch.Tensor,
        labels: torch.Tensor,
        rows: slice | None = None,
    ) -> torch.Tensor:
        _check_pair(embedding, caption_emb, "cap")
        scale = 1.0 if self.temperature is None else 1.0 / self.temperature
        s, c = _unit(embedding), _unit(caption_emb).to(embedding.dtype)
        return in_batch_ce(s, c, scale, rows, same_class_negatives(labels))
